"""CLIP byte-level BPE tokenizer, token-for-token equal to OpenAI's.

    from gmm_jax.tokenizer import Tokenizer
    tok = Tokenizer.default()            # OpenAI's vocabulary (shipped in this package)
    tok = Tokenizer.from_path(hf_dir)    # vocab.json + merges.txt, or tokenizer.json
    tok(["a photo of a dog"])            # int32 (1, 77): SOT, ids, EOT, zeros

Modules: ``bpe`` (pure functions: clean-up, pre-tokenisation, merges, training),
``files`` (the file formats), ``encoder`` (the ``Tokenizer`` class).
"""
from gmm_jax.tokenizer.bpe import EOT_TOKEN, EOW, SOT_TOKEN, bytes_to_unicode, clean_text
from gmm_jax.tokenizer.encoder import Tokenizer
from gmm_jax.tokenizer.files import OPENAI_NUM_MERGES

__all__ = ["EOT_TOKEN", "EOW", "OPENAI_NUM_MERGES", "SOT_TOKEN", "Tokenizer",
           "bytes_to_unicode", "clean_text"]
