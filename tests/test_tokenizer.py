"""CLIP tokenizer: parity with Hugging Face's CLIPTokenizer and OpenAI's reference code
on >= 1000 varied captions, truncation/padding, training, save/load, errors.

References (independent of gmm_jax.tokenizer):
  - transformers.CLIPTokenizer built from the vocab.json + merges.txt we write. It
    normalises with NFC only (no ftfy, no html unescape), so it is fed either text that
    those leave alone, or text cleaned by OpenAI's own clean-up functions.
  - OpenAI's SimpleTokenizer as shipped in the open_clip_torch wheel, loaded from its
    file path (importing the open_clip package needs torchvision).
"""
import importlib.util
import json
import os
import random
import unicodedata
from collections import Counter

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gmm_jax import tokenizer as tokmod
from gmm_jax.tokenizer import Tokenizer

N_CAPTIONS = 1200
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)

WORDS = ("a man woman child dog cat bus train pizza table street kitchen bathroom sink giraffe "
         "zebra elephant surfboard skateboard tennis racket frisbee umbrella laptop phone red "
         "blue green white black small large old young sitting standing riding holding eating "
         "next to on top of in front with near under several two three people group parked "
         "crowded snowy grassy wooden plate sandwich broccoli donut motorcycle airplane").split()
EXTRAS = ["café", "naïve", "jalapeño", "Zürich", "Straße", "crème brûlée", "São Paulo",
          "e\u0301te\u0301",  # decomposed accents: NFC composes them
          "東京タワー", "서울", "Москва", "Αθήνα ΣΟΦΙΑ", "القاهرة", "İstanbul", "ﬁsh ﬂag",
          "Ｆｕｌｌｗｉｄｔｈ", "🍕", "🐶🐱", "👨‍👩‍👧", "🇫🇷", "❤️", "✨✨✨", "—", "…", "“quoted”",
          "‘single’", "it's", "they've", "I'LL", "we'd", "don't", "O'Brien", "3.14", "1,000,000",
          "#42", "$5.99", "50%", "x2", "2nd", "1990s", "!!!", "???", "(parens)", "[brackets]",
          "a/b", "e-mail", "snake_case", "@user", "C++", ":-)", "<tag>", "a<b>c", "\\slash",
          "&amp;", "&quot;hi&quot;", "&#39;", "&lt;b&gt;", "&amp;amp;", "&eacute;", "&nbsp;",
          "cafÃ©", "â€œmojibakeâ€\x9d", "\u00a0nbsp\u00a0", "tab\there", "new\nline",
          "  many   spaces  ", "\u200bzero-width", "ǅ title", "ẞ", "Ⅻ", "½", "²", "٣", "𝔘𝔫𝔦"]


def make_captions(n, seed=0):
    """Varied captions: COCO-like phrases with unicode, punctuation, numbers, html
    entities, odd whitespace, case, and some very long ones."""
    rng = random.Random(seed)
    caps = []
    for i in range(n):
        k = rng.choice([3, 6, 10, 14]) if i % 25 else rng.randint(60, 200)  # very long
        parts = [rng.choice(WORDS) for _ in range(k)]
        for _ in range(rng.choice([0, 0, 1, 2, 4])):
            parts.insert(rng.randint(0, len(parts)), rng.choice(EXTRAS))
        sep = rng.choice([" ", " ", " ", "  ", "\t", " \n "])
        text = sep.join(parts)
        text = rng.choice([str.capitalize, str.upper, str.lower, str.title, lambda s: s])(text)
        caps.append(text + rng.choice(["", ".", ".", " .", "!", "...", " "]))
    return caps


@pytest.fixture(scope="module")
def openai_ref():
    """OpenAI's SimpleTokenizer, from the open_clip wheel's tokenizer.py, by path."""
    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    mod_spec = importlib.util.spec_from_file_location("_openai_clip_tokenizer_ref", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    from transformers import CLIPTokenizer
    d = tmp_path_factory.mktemp("openai_vocab")
    tok.save(d)
    return CLIPTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def captions():
    return make_captions(N_CAPTIONS)


def pad_truncate(ids, sot, eot, L):
    """Reference row layout: SOT ids EOT, cut to L with EOT last, zero padded."""
    row = [sot] + list(ids) + [eot]
    if len(row) > L:
        row = row[:L]
        row[-1] = eot
    return row + [0] * (L - len(row))


def test_openai_vocabulary_layout(tok, openai_ref):
    ref = openai_ref.SimpleTokenizer()
    assert tok.vocab_size == 49408 == ref.vocab_size
    assert (tok.sot_token_id, tok.eot_token_id, tok.pad_token_id) == (49406, 49407, 0)
    # Same ids for every non-special token string as OpenAI's encoder.
    ours = {t: i for t, i in tok.encoder.items() if i < 49406}
    theirs = {t: i for t, i in ref.encoder.items() if i < 49406}
    assert ours == theirs
    b2u = tokmod.bytes_to_unicode()
    assert sorted(b2u) == list(range(256)) and len(set(b2u.values())) == 256
    assert all(not c.isspace() and c.isprintable() for c in b2u.values())


def test_parity_with_hf_on_cleaned_text(tok, hf_tok, captions, openai_ref):
    """BPE, regex, vocabulary, SOT/EOT/truncation vs transformers, on >= 1000 captions
    pre-cleaned with OpenAI's clean-up (which HF lacks)."""
    cleaned = [openai_ref.whitespace_clean(openai_ref.basic_clean(c)) for c in captions]
    hf_ids = hf_tok(cleaned, add_special_tokens=False)["input_ids"]
    for cap, ids in zip(captions, hf_ids):
        assert tok.encode(cap) == ids, cap
    lengths = [len(i) for i in hf_ids]
    assert max(lengths) > 77 and min(lengths) < 10  # both truncated and padded rows
    for L in (77, 16):
        want = np.array([pad_truncate(i, hf_tok.bos_token_id, hf_tok.eos_token_id, L)
                         for i in hf_ids], np.int32)
        got = tok(captions, context_length=L)
        assert got.dtype == np.int32 and got.shape == (len(captions), L)
        np.testing.assert_array_equal(got, want)
    # HF's own SOT/EOT insertion agrees with ours for rows that fit.
    for cap, ids in zip(captions[:50], hf_tok(cleaned[:50])["input_ids"]):
        if len(ids) <= 77:
            assert tok(cap)[0, :len(ids)].tolist() == ids


def test_parity_with_hf_on_raw_text(tok, hf_tok, captions, openai_ref):
    """Where OpenAI's clean-up does nothing beyond NFC, HF sees the raw text."""
    raw = [c for c in captions
           if openai_ref.basic_clean(c) == unicodedata.normalize("NFC", c).strip()]
    assert len(raw) >= 600
    raw += ["<|startoftext|>a photo<|endoftext|>", "A <|endoftext|> inside"]
    hf_ids = hf_tok(raw, add_special_tokens=False)["input_ids"]
    for cap, ids in zip(raw, hf_ids):
        assert tok.encode(cap) == ids, cap


def test_parity_with_openai_reference(tok, captions, openai_ref):
    """Full pipeline (ftfy, html entities, whitespace, lower case) vs OpenAI's code."""
    ref = openai_ref.SimpleTokenizer()
    for cap in captions:
        assert tok.encode(cap) == ref.encode(cap), cap
    for L in (77, 12):
        np.testing.assert_array_equal(tok(captions, context_length=L),
                                      ref(captions, context_length=L).numpy())


_ascii_text = st.lists(st.sampled_from(list("aZ &;#<>'\"\t\n\r\x0b\x0c\x1b\x7f\x00x1[m") +
                                       ["&amp;", "&lt;", "&#39;", "&quot;", "\x1b[31m"]),
                       max_size=20).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(_ascii_text, st.text(max_size=20)))
def test_clean_text_matches_openai(text, openai_ref):
    """The ASCII fast path (skipping ftfy) must not change the clean-up's result."""
    want = openai_ref.whitespace_clean(openai_ref.basic_clean(text)).lower()
    assert tokmod.clean_text(text) == want


def test_decode_matches_hf(tok, hf_tok, captions):
    texts = captions[:300]
    rows = tok(texts)
    hf_text = hf_tok.batch_decode([r[:list(r).index(tok.eot_token_id) + 1] for r in rows.tolist()],
                                  skip_special_tokens=True)
    assert tok.decode_batch(rows) == hf_text
    assert tok.decode(tok.encode("A Dog's café 🍕")) == "a dog 's café 🍕"


def test_train_save_load_roundtrip(tmp_path, captions):
    corpus = captions[:400]
    t = Tokenizer.train(corpus, vocab_size=900, context_length=32)
    assert t.vocab_size == 900 and (t.sot_token_id, t.eot_token_id) == (898, 899)
    t.save(tmp_path)
    t2 = Tokenizer.from_path(tmp_path)
    assert t2.encoder == t.encoder and t2.merges == t.merges and t2.context_length == 32
    from transformers import CLIPTokenizer
    hf = CLIPTokenizer.from_pretrained(str(tmp_path))
    n_tokens = n_bytes = 0
    for cap in corpus:
        ids = t2.encode(cap)
        assert ids == t.encode(cap)
        assert all(0 <= i < 898 for i in ids)
        # Decoding gives back the cleaned pre-tokenised pieces, space separated.
        clean = " ".join(regex.sub(r"\s+", " ", unicodedata.normalize("NFC", cap)).split()).lower()
        if "&" not in cap and not regex.search(r"[^\x00-\x7f]", cap):
            assert t2.decode(ids) == " ".join(CLIP_PATTERN.findall(clean))
            assert hf(clean, add_special_tokens=False)["input_ids"] == ids
        n_tokens += len(ids)
        n_bytes += sum(len(p.encode()) for p in CLIP_PATTERN.findall(clean))
    assert n_tokens < 0.5 * n_bytes  # the merges compress the corpus they were learned on
    np.testing.assert_array_equal(t2(corpus), t(corpus, context_length=32))


def _naive_bpe_train(texts, vocab_size):
    """Brute force: recount all pairs every step, take the most frequent (ties:
    smallest pair), merge everywhere."""
    words = Counter()
    for text in texts:
        for piece in CLIP_PATTERN.findall(" ".join(text.split()).lower()):
            words[piece] += 1  # ASCII corpus: symbols are the characters themselves
    segs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges, vocab = [], set()
    while len(vocab) < vocab_size - 514:
        pairs = Counter()
        for w, s in segs.items():
            for p in zip(s, s[1:]):
                pairs[p] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.add(best[0] + best[1])
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return merges


def test_train_matches_brute_force():
    rng = random.Random(1)
    corpus = [" ".join(rng.choice(WORDS[:30]) for _ in range(rng.randint(2, 9)))
              for _ in range(150)]
    corpus += ["".join(rng.choice("abcde") for _ in range(rng.randint(1, 7))) for _ in range(40)]
    want = _naive_bpe_train(corpus, 514 + 120)
    assert len(want) == 120 and Tokenizer.train(corpus, vocab_size=514 + 120).merges == want
    # Large budget: runs until every word is one symbol (count-1 pairs, ties, exhaustion).
    want = _naive_bpe_train(corpus, 514 + 400)
    assert len(want) < 400 and Tokenizer.train(corpus, vocab_size=514 + 400).merges == want


def test_tokenizer_json_dir(tmp_path, hf_tok, tok):
    hf_tok.save_pretrained(str(tmp_path))
    for name in ("vocab.json", "merges.txt"):
        if (tmp_path / name).exists():
            os.remove(tmp_path / name)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    t = Tokenizer.from_path(tmp_path)
    assert t.encoder == tok.encoder and t.merges == tok.merges


def test_errors(tmp_path, monkeypatch, tok):
    missing = tmp_path / "nope" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Tokenizer.from_path(missing)
    with pytest.raises(FileNotFoundError, match="vocab.json and merges.txt"):
        Tokenizer.from_path(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("#version\nfoo bar baz\n")
    with pytest.raises(ValueError, match="line 2"):
        Tokenizer.from_path(bad)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["a b"], vocab_size=100)
    with pytest.raises(ValueError, match="context_length"):
        tok(["a"], context_length=1)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["a", 3])
    d = tmp_path / "hf"
    tok.save(d)
    vocab = json.loads((d / "vocab.json").read_text())
    del vocab["<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="endoftext"):
        Tokenizer.from_path(d)
    # OpenAI's vocabulary ships with the package: found without open_clip installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    t = Tokenizer.default()
    assert t.encoder == tok.encoder and t.merges == tok.merges
    assert os.path.dirname(t.source) == os.path.dirname(tokmod.__file__)


def test_single_string_and_bytes(tok):
    a = tok("a photo of a dog")
    assert a.shape == (1, 77)
    np.testing.assert_array_equal(tok([b"a photo of a dog"]), a)
    np.testing.assert_array_equal(tok([""]), [[tok.sot_token_id, tok.eot_token_id] + [0] * 75])


@pytest.mark.slow
def test_wheel_ships_the_openai_vocabulary(tmp_path, tok):
    """`pip install .` alone can tokenise for OpenAI checkpoints: the built wheel holds
    the vocabulary (byte-identical to open_clip's copy) and its licence notice."""
    import shutil
    import subprocess
    import sys
    import zipfile
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(tokmod.__file__))))
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "MANIFEST.in", "README.md", "requirements.txt"):
        shutil.copy(os.path.join(root, name), src / name)
    shutil.copytree(os.path.join(root, "gmm_jax"), src / "gmm_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path / "out")],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "out").glob("gmm_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "gmm_jax/tokenizer/LICENSE-bpe" in names
        assert "MIT License" in z.read("gmm_jax/tokenizer/LICENSE-bpe").decode()
        packed = z.read("gmm_jax/tokenizer/bpe_simple_vocab_16e6.txt.gz")
    spec = importlib.util.find_spec("open_clip")
    with open(os.path.join(spec.submodule_search_locations[0],
                           "bpe_simple_vocab_16e6.txt.gz"), "rb") as f:
        assert packed == f.read()
    (tmp_path / "v.txt.gz").write_bytes(packed)
    assert Tokenizer.from_path(tmp_path / "v.txt.gz").merges == tok.merges
