"""CLIP byte-level BPE tokenizer, token-for-token equal to OpenAI's.

Pipeline for one text (OpenAI's order):
  ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> lower case
  -> CLIP pre-tokenisation regex -> each piece's UTF-8 bytes mapped to printable
  characters -> BPE with merge ranks, the last symbol of a word carrying ``</w>``.

Vocabulary layout (OpenAI's, also what ``Tokenizer.train`` produces): the 256 byte
symbols, their 256 ``</w>`` variants, one entry per merge in rank order, then
``<|startoftext|>`` and ``<|endoftext|>``. ``Tokenizer.save`` writes the Hugging
Face format (vocab.json + merges.txt) that ``from_path`` and transformers read.

Batch call: ``tok(texts, context_length=77) -> int32 (N, L)`` = SOT, ids, EOT,
zero padding; a text that does not fit is cut and its last slot set to EOT.
"""
from __future__ import annotations

import gzip
import heapq
import html
import importlib.util
import json
import os
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
EOW = "</w>"
# OpenAI uses the first 49152 - 256 - 2 lines after the header of the .gz file.
OPENAI_NUM_MERGES = 49152 - 256 - 2
_OPENAI_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"

# The CLIP pre-tokenisation regex (contractions, letter runs, single digits,
# punctuation runs); the special-token alternatives come first so they stay whole.
_PIECE_RE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
_WS_RE = regex.compile(r"\s+")
# Pure-ASCII text without these characters is left unchanged by ftfy.fix_text and
# html.unescape (no entities, control characters or terminal escapes), up to
# whitespace, which is collapsed afterwards anyway: skip both (ftfy costs ~20 us).
_NEEDS_FTFY_RE = regex.compile(r"[&\x00-\x08\x0b-\x1f\x7f]")
_CACHE_LIMIT = 500_000


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> printable character. Printable Latin-1 bytes map to themselves;
    the other 68 bytes map to U+0100 onwards, in byte order. Dict order (printable
    bytes first) is the order of the first 256 vocabulary entries."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return {b: mapping[b] for b in keep + [b for b in range(256) if b not in keep]}


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}
# str.translate table: a latin-1 decoded byte string -> the printable symbols.
_BYTE_TRANSLATE = {b: c for b, c in _BYTE_ENCODER.items()}


def clean_text(text: str) -> str:
    """OpenAI's text normalisation: ftfy + double html unescape, whitespace collapsed
    to single spaces, stripped, lower-cased."""
    if not text.isascii() or _NEEDS_FTFY_RE.search(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WS_RE.sub(" ", text).strip().lower()


def _to_symbols(piece: str) -> str:
    """A pre-tokenised piece -> its byte-level symbol string."""
    if piece.isascii():  # printable ASCII maps to itself (pieces hold no whitespace)
        return piece
    return piece.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATE)


def _bpe(symbols: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE of one word: repeatedly merge every occurrence (left to right)
    of the adjacent pair with the lowest merge rank. Returns the final symbols."""
    word = list(symbols[:-1]) + [symbols[-1] + EOW]
    while len(word) > 1:
        best, best_rank = None, None
        for pair in zip(word, word[1:]):
            r = ranks.get(pair)
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = pair, r
        if best is None:
            break
        first, second = best
        merged, i, n = [], 0, len(word)
        while i < n:
            if i < n - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


class Tokenizer:
    """CLIP BPE tokenizer.

    Attributes: ``encoder`` (token string -> id), ``merges`` (list of pairs in rank
    order), ``sot_token_id``, ``eot_token_id``, ``pad_token_id`` (0, OpenAI's zero
    padding), ``vocab_size``, ``context_length`` (default for ``__call__``).
    """

    pad_token_id = 0

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]],
                 context_length: int = 77, source: str = "<memory>"):
        for name in (SOT_TOKEN, EOT_TOKEN):
            if name not in encoder:
                raise ValueError(f"{source}: vocabulary has no {name!r} token")
        missing = [b for b in _BYTE_ENCODER.values() if b not in encoder or b + EOW not in encoder]
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
        self.vocab_size = len(self.encoder)
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
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer path does not exist: {path}")
        if os.path.isdir(path):
            return cls._from_hf_dir(path, context_length)
        if os.path.basename(path) in ("vocab.json", "merges.txt", "tokenizer.json"):
            return cls._from_hf_dir(os.path.dirname(path) or ".", context_length)
        return cls._from_openai_file(path, context_length)

    @classmethod
    def default(cls, context_length: int = 77) -> "Tokenizer":
        """OpenAI's vocabulary, read from the file the ``open_clip_torch`` wheel ships
        (found without importing open_clip, whose import needs torchvision)."""
        spec = importlib.util.find_spec("open_clip")
        locations = list(spec.submodule_search_locations or []) if spec else []
        for loc in locations:
            candidate = os.path.join(loc, _OPENAI_VOCAB_NAME)
            if os.path.isfile(candidate):
                return cls._from_openai_file(candidate, context_length)
        raise FileNotFoundError(
            f"OpenAI CLIP vocabulary {_OPENAI_VOCAB_NAME} not found: install it with "
            "`pip install --no-deps open_clip_torch`, or pass its path to Tokenizer.from_path")

    @classmethod
    def _from_openai_file(cls, path: str, context_length: int) -> "Tokenizer":
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = raw.decode("utf-8").split("\n")
        merges = []
        for lineno, line in enumerate(lines[1:OPENAI_NUM_MERGES + 1], start=2):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}: line {lineno} is not a merge 'a b': {line!r}")
            merges.append((parts[0], parts[1]))
        if len(merges) != OPENAI_NUM_MERGES:
            raise ValueError(f"{path}: has {len(merges)} merges, OpenAI's file has "
                             f"{OPENAI_NUM_MERGES}")
        return cls(_layout_vocab(merges), merges, context_length, source=path)

    @classmethod
    def _from_hf_dir(cls, path: str, context_length: int) -> "Tokenizer":
        vocab_file = os.path.join(path, "vocab.json")
        merges_file = os.path.join(path, "merges.txt")
        tok_file = os.path.join(path, "tokenizer.json")
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file) as f:
                cfg = json.load(f)
            max_len = cfg.get("model_max_length")
            if context_length == 77 and isinstance(max_len, int) and 2 <= max_len <= 4096:
                context_length = max_len
        if os.path.isfile(vocab_file) and os.path.isfile(merges_file):
            with open(vocab_file, encoding="utf-8") as f:
                encoder = json.load(f)
            with open(merges_file, encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = []
            for lineno, line in enumerate(lines, start=1):
                if not line.strip() or (lineno == 1 and line.startswith("#version")):
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{merges_file}: line {lineno} is not a merge 'a b': {line!r}")
                merges.append((parts[0], parts[1]))
            return cls(encoder, merges, context_length, source=path)
        if os.path.isfile(tok_file):
            with open(tok_file, encoding="utf-8") as f:
                model = json.load(f).get("model", {})
            if model.get("type") != "BPE" or "vocab" not in model:
                raise ValueError(f"{tok_file}: not a BPE tokenizer.json")
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                      for m in model.get("merges", [])]
            return cls(model["vocab"], merges, context_length, source=tok_file)
        raise FileNotFoundError(f"{path}: expected vocab.json and merges.txt (or "
                                "tokenizer.json) in this tokenizer directory")

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write vocab.json, merges.txt and tokenizer_config.json (Hugging Face format)."""
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{a} {b}\n" for a, b in self.merges)
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length,
                  "bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN,
                  "pad_token": EOT_TOKEN}
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=1)

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, context_length: int = 77) -> "Tokenizer":
        """Learn a byte-level BPE vocabulary of ``vocab_size`` entries (>= 514: 512 byte
        symbols + SOT + EOT) from ``texts``, cleaned and pre-tokenised as in encoding.
        Each step merges the most frequent adjacent pair (ties: smallest pair)."""
        if vocab_size < 514:
            raise ValueError(f"vocab_size={vocab_size}: must be >= 514 (512 byte symbols + 2 specials)")
        counts = Counter()
        for text in texts:
            for piece in _PIECE_RE.findall(clean_text(text)):
                if piece not in (SOT_TOKEN, EOT_TOKEN):
                    counts[_to_symbols(piece)] += 1
        words = [list(w[:-1]) + [w[-1] + EOW] for w in counts]
        freqs = list(counts.values())
        pair_count: dict[tuple[str, str], int] = defaultdict(int)
        where: dict[tuple[str, str], set[int]] = defaultdict(set)
        for wi, word in enumerate(words):
            for pair in zip(word, word[1:]):
                pair_count[pair] += freqs[wi]
                where[pair].add(wi)
        heap = [(-c, p) for p, c in pair_count.items()]
        heapq.heapify(heap)

        known = set(_BYTE_ENCODER.values()) | {c + EOW for c in _BYTE_ENCODER.values()}
        new_tokens, merges = [], []
        budget = vocab_size - 514
        while len(new_tokens) < budget and heap:
            neg, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -neg or neg == 0:
                continue  # stale heap entry
            first, second = pair
            joined = first + second
            merges.append(pair)
            if joined not in known:
                known.add(joined)
                new_tokens.append(joined)
            touched = set()
            for wi in list(where.pop(pair, ())):
                word, f = words[wi], freqs[wi]
                for p in zip(word, word[1:]):
                    pair_count[p] -= f
                    touched.add(p)
                merged, i = [], 0
                while i < len(word):
                    if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                        merged.append(joined)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                words[wi] = merged
                for p in zip(merged, merged[1:]):
                    pair_count[p] += f
                    where[p].add(wi)
                    touched.add(p)
            pair_count.pop(pair, None)
            for p in touched:
                c = pair_count.get(p, 0)
                if c > 0 and p != pair:
                    heapq.heappush(heap, (-c, p))
                elif c <= 0:
                    pair_count.pop(p, None)
                    where.pop(p, None)
        return cls(_layout_vocab(merges), merges, context_length, source="<trained>")

    # ---------------------------------------------------------------- encoding
    def _piece_ids(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            ids = [self.encoder[s] for s in _bpe(_to_symbols(piece), self.ranks)]
            if len(self._cache) >= _CACHE_LIMIT:
                self._reset_cache()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without SOT/EOT."""
        out: list[int] = []
        cache = self._cache
        for piece in _PIECE_RE.findall(clean_text(text)):
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
                buf.extend(_decode_symbols(piece))
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


def _decode_symbols(symbols: str) -> bytes:
    """Byte-level symbols (with ``</w>`` markers) -> raw bytes, ``</w>`` -> space."""
    out = bytearray()
    for word in symbols.split(EOW):
        out.extend(_BYTE_DECODER[c] for c in word)
        out.append(0x20)
    out.pop()  # split() yields one more chunk than there are markers
    return bytes(out)


def _layout_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's id order: bytes, bytes + </w>, merge results (first occurrence), SOT, EOT."""
    tokens = list(_BYTE_ENCODER.values())
    tokens += [t + EOW for t in tokens]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [SOT_TOKEN, EOT_TOKEN]
    return {t: i for i, t in enumerate(tokens)}
