"""The CLIP tokenizer class: byte-level BPE token-for-token equal to OpenAI's.

Vocabulary layout (OpenAI's, also what ``Tokenizer.train`` produces): the 256 byte
symbols, their 256 ``</w>`` variants, one entry per merge in rank order, then
``<|startoftext|>`` and ``<|endoftext|>``. Any other id order is accepted (a vocabulary
read from a Hugging Face tokenizer keeps its ids). ``Tokenizer.save`` writes the Hugging
Face format (vocab.json + merges.txt) that ``from_path`` and transformers read.

Batch call: ``tok(texts, context_length=77) -> int32 (N, L)`` = SOT, ids, EOT,
zero padding; a text that does not fit is cut and its last slot set to EOT.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import regex

from gmm_jax import paths
from gmm_jax.tokenizer import bpe, files
from gmm_jax.tokenizer.bpe import EOT_TOKEN, NUM_BYTE_SYMBOLS, SOT_TOKEN

_CACHE_LIMIT = 500_000


class Tokenizer:
    """CLIP BPE tokenizer.

    Attributes: ``encoder`` (token string -> id), ``merges`` (list of pairs in rank
    order), ``sot_token_id``, ``eot_token_id``, ``pad_token_id`` (0, OpenAI's zero
    padding), ``vocab_size`` (largest id + 1), ``context_length`` (default for
    ``__call__``).
    """

    pad_token_id = 0

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]],
                 context_length: int = 77, source: str = "<memory>"):
        for name in (SOT_TOKEN, EOT_TOKEN):
            if name not in encoder:
                raise ValueError(f"{source}: vocabulary has no {name!r} token")
        missing = [b for b in bpe.byte_symbols() if b not in encoder]
        if missing:
            raise ValueError(f"{source}: vocabulary lacks byte symbols {missing[:8]} "
                             f"({len(missing)} in all); not a byte-level CLIP vocabulary")
        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        bad = [f"{a} {b}" for a, b in self.merges if a + b not in self.encoder]
        if bad:
            raise ValueError(f"{source}: {len(bad)} merges produce tokens missing from the "
                             f"vocabulary, e.g. {bad[:5]}")
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = max(self.encoder.values()) + 1  # rows the embedding table needs
        self.context_length = int(context_length)
        self.source = source
        self._cache: dict[str, list[int]] = {}
        self._reset_cache()

    def _reset_cache(self):
        # Raw pre-tokenised piece -> ids. Special-token strings encode to themselves,
        # as in OpenAI's tokenizer.
        self._cache.clear()
        self._cache[SOT_TOKEN] = [self.sot_token_id]
        self._cache[EOT_TOKEN] = [self.eot_token_id]

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_path(cls, path: str | os.PathLike, context_length: int = 77) -> "Tokenizer":
        """Load from a Hugging Face tokenizer directory (vocab.json + merges.txt, or
        tokenizer.json) or an OpenAI ``bpe_simple_vocab_16e6.txt.gz`` (or plain text)."""
        path = os.fspath(path)
        if not paths.exists(path):
            raise FileNotFoundError(f"tokenizer path does not exist: {path}")
        if paths.isfile(path) and paths.basename(path) in files.HF_FILES:
            path = paths.dirname(path)
        if paths.isdir(path):
            if context_length == 77:  # the default: the directory's own length wins
                context_length = files.read_context_length(path) or context_length
            encoder, merges, source = files.read_hf_dir(path)
            return cls(encoder, merges, context_length, source=source)
        return cls.from_openai_file(path, context_length)

    @classmethod
    def from_openai_file(cls, path: str, context_length: int = 77) -> "Tokenizer":
        """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` format (merges only; ids laid out
        as OpenAI does)."""
        merges = files.read_openai_merges(path)
        return cls(bpe.layout_vocab(merges), merges, context_length, source=path)

    @classmethod
    def default(cls, context_length: int = 77) -> "Tokenizer":
        """OpenAI's vocabulary, from the copy shipped in this package."""
        return cls.from_openai_file(files.find_openai_vocab(), context_length)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write vocab.json, merges.txt and tokenizer_config.json (Hugging Face format)."""
        files.write_vocab_merges(os.fspath(out_dir), self.encoder, self.merges,
                                 self.context_length)

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, context_length: int = 77) -> "Tokenizer":
        """Learn a byte-level BPE vocabulary of ``vocab_size`` entries (>= 514: 512 byte
        symbols + SOT + EOT) from ``texts``, cleaned and pre-tokenised as in encoding.
        Each step merges the most frequent adjacent pair (ties: smallest pair)."""
        if vocab_size < NUM_BYTE_SYMBOLS + 2:
            raise ValueError(f"vocab_size={vocab_size}: must be >= 514 "
                             "(512 byte symbols + 2 specials)")
        merges = bpe.learn_merges(texts, vocab_size - NUM_BYTE_SYMBOLS - 2)
        return cls(bpe.layout_vocab(merges), merges, context_length, source="<trained>")

    # ---------------------------------------------------------------- encoding
    def _piece_ids(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            ids = [self.encoder[s] for s in bpe.bpe(bpe.to_symbols(piece), self.ranks)]
            if len(self._cache) >= _CACHE_LIMIT:
                self._reset_cache()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without SOT/EOT."""
        out: list[int] = []
        cache = self._cache
        for piece in bpe.pre_tokenize(text):
            ids = cache.get(piece)
            out.extend(ids if ids is not None else self._piece_ids(piece))
        return out

    def __call__(self, texts: str | bytes | Sequence[str | bytes],
                 context_length: int | None = None) -> np.ndarray:
        """texts (N,) -> int32 (N, L): SOT, ids, EOT, then zeros; overlong rows are cut
        to L with EOT as their last token. A single string gives (1, L)."""
        L = self.context_length if context_length is None else int(context_length)
        if L < 2:
            raise ValueError(f"context_length={L}: must be >= 2 (room for SOT and EOT)")
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        out = np.zeros((len(texts), L), dtype=np.int32)
        sot, eot = self.sot_token_id, self.eot_token_id
        for i, text in enumerate(texts):
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            elif not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
            ids = self.encode(text)
            if len(ids) > L - 2:
                ids = ids[:L - 2]
            out[i, 0] = sot
            out[i, 1:len(ids) + 1] = ids
            out[i, len(ids) + 1] = eot
        return out

    # ---------------------------------------------------------------- decoding
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """ids -> text; word ends become spaces, the result is stripped. Invalid UTF-8
        (a cut multi-byte character) decodes to U+FFFD."""
        special = {self.sot_token_id, self.eot_token_id}
        parts = []
        for i in ids:
            i = int(i)
            if i not in self.decoder:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            if skip_special_tokens and i in special:
                continue
            parts.append(self.decoder[i])
        text = "".join(parts)
        chunks, buf = [], bytearray()
        # Special tokens are not byte symbols: pass them through verbatim.
        for piece in regex.split(r"(<\|startoftext\|>|<\|endoftext\|>)", text):
            if piece in (SOT_TOKEN, EOT_TOKEN):
                chunks.append(buf.decode("utf-8", errors="replace") + piece)
                buf = bytearray()
            else:
                buf.extend(bpe.decode_symbols(piece))
        chunks.append(buf.decode("utf-8", errors="replace"))
        return "".join(chunks).strip()

    def decode_batch(self, tokens: np.ndarray) -> list[str]:
        """int (N, L) rows from ``__call__`` -> texts (drops SOT, stops at EOT)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"decode_batch expects (N, L) tokens, got shape {tokens.shape}")
        texts = []
        for row in tokens.tolist():
            if row and row[0] == self.sot_token_id:
                row = row[1:]
            if self.eot_token_id in row:
                row = row[:row.index(self.eot_token_id)]
            texts.append(self.decode(row))
        return texts

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"context_length={self.context_length}, source={self.source!r})")
