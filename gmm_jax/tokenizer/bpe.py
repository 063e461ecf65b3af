"""Byte-level BPE as pure functions: text clean-up, pre-tokenisation, byte symbols, the
pair merge, encoding one word, learning merges, and OpenAI's vocabulary layout.

Pipeline for one text (OpenAI's order):
  ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> lower case
  -> CLIP pre-tokenisation regex -> each piece's UTF-8 bytes mapped to printable
  characters -> BPE with merge ranks, the last symbol of a word carrying ``</w>``.
"""
from __future__ import annotations

import heapq
import html
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import ftfy
import regex

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
EOW = "</w>"
NUM_BYTE_SYMBOLS = 512  # 256 byte symbols and their </w> variants

# The CLIP pre-tokenisation regex (contractions, letter runs, single digits,
# punctuation runs); the special-token alternatives come first so they stay whole.
PIECE_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                 r"""[\p{N}]|[^\s\p{L}\p{N}]+""")
PIECE_RE = regex.compile(PIECE_PATTERN, regex.IGNORECASE)
_WS_RE = regex.compile(r"\s+")
# Pure-ASCII text without these characters is left unchanged by ftfy.fix_text and
# html.unescape (no entities, control characters or terminal escapes), up to
# whitespace, which is collapsed afterwards anyway: skip both (ftfy costs ~20 us).
_NEEDS_FTFY_RE = regex.compile(r"[&\x00-\x08\x0b-\x1f\x7f]")


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


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}
# str.translate table: a latin-1 decoded byte string -> the printable symbols.
_BYTE_TRANSLATE = dict(BYTE_ENCODER)


def byte_symbols() -> list[str]:
    """The 512 symbols every byte-level CLIP vocabulary holds: bytes, then bytes + </w>."""
    base = list(BYTE_ENCODER.values())
    return base + [s + EOW for s in base]


def clean_text(text: str) -> str:
    """OpenAI's text normalisation: ftfy + double html unescape, whitespace collapsed
    to single spaces, stripped, lower-cased."""
    if not text.isascii() or _NEEDS_FTFY_RE.search(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WS_RE.sub(" ", text).strip().lower()


def pre_tokenize(text: str) -> list[str]:
    """Cleaned text -> CLIP pieces (special-token strings kept whole)."""
    return PIECE_RE.findall(clean_text(text))


def to_symbols(piece: str) -> str:
    """A pre-tokenised piece -> its byte-level symbol string."""
    if piece.isascii():  # printable ASCII maps to itself (pieces hold no whitespace)
        return piece
    return piece.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATE)


def word_symbols(symbols: str) -> list[str]:
    """A word's symbol string -> one symbol per character, the last carrying ``</w>``."""
    return list(symbols[:-1]) + [symbols[-1] + EOW]


def merge_pair(word: Sequence[str], pair: tuple[str, str]) -> list[str]:
    """Every non-overlapping occurrence of ``pair`` in ``word``, left to right, joined
    into one symbol (the single merge step of both encoding and training)."""
    first, second = pair
    merged, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def bpe(symbols: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE of one word: repeatedly merge the adjacent pair with the lowest
    merge rank. Returns the final symbols."""
    word = word_symbols(symbols)
    while len(word) > 1:
        best, best_rank = None, None
        for pair in zip(word, word[1:]):
            r = ranks.get(pair)
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = pair, r
        if best is None:
            break
        word = merge_pair(word, best)
    return word


def learn_merges(texts: Iterable[str], num_new_tokens: int) -> list[tuple[str, str]]:
    """Merges that add ``num_new_tokens`` tokens beyond the byte symbols, learned from
    ``texts`` cleaned and pre-tokenised as in encoding. Each step merges the most
    frequent adjacent pair (ties: smallest pair); pair counts are updated incrementally
    (only the words holding the merged pair are touched)."""
    counts: Counter = Counter()
    for text in texts:
        for piece in pre_tokenize(text):
            if piece not in (SOT_TOKEN, EOT_TOKEN):
                counts[to_symbols(piece)] += 1
    words = [word_symbols(w) for w in counts]
    freqs = list(counts.values())
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_count[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    known = set(byte_symbols())
    merges: list[tuple[str, str]] = []
    added = 0
    while added < num_new_tokens and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry
        joined = pair[0] + pair[1]
        merges.append(pair)
        if joined not in known:
            known.add(joined)
            added += 1
        touched = set()
        for wi in list(where.pop(pair, ())):
            word, f = words[wi], freqs[wi]
            for p in zip(word, word[1:]):
                pair_count[p] -= f
                touched.add(p)
            words[wi] = merged = merge_pair(word, pair)
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
    return merges


def layout_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's id order: bytes, bytes + </w>, merge results (first occurrence), SOT, EOT."""
    tokens = byte_symbols()
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [SOT_TOKEN, EOT_TOKEN]
    return {t: i for i, t in enumerate(tokens)}


def decode_symbols(symbols: str) -> bytes:
    """Byte-level symbols (with ``</w>`` markers) -> raw bytes, ``</w>`` -> space."""
    out = bytearray()
    for word in symbols.split(EOW):
        out.extend(BYTE_DECODER[c] for c in word)
        out.append(0x20)
    out.pop()  # split() yields one more chunk than there are markers
    return bytes(out)
