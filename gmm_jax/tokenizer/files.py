"""Tokenizer file formats: OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, Hugging Face's
``vocab.json`` + ``merges.txt`` (+ ``tokenizer_config.json``) and ``tokenizer.json``
(the only file transformers 5 writes). Readers return ``(encoder, merges)``; they check
the file's structure and name the file (and line or field) on error.

OpenAI's vocabulary ships inside this package (``bpe_simple_vocab_16e6.txt.gz``, MIT
licence, see ``LICENSE-bpe`` beside it).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
from typing import Sequence

from gmm_jax import paths
from gmm_jax.tokenizer.bpe import EOT_TOKEN, EOW, PIECE_PATTERN, SOT_TOKEN

OPENAI_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI uses the first 49152 - 256 - 2 lines after the header of the .gz file.
OPENAI_NUM_MERGES = 49152 - 256 - 2
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
TOKENIZER_JSON, CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
HF_FILES = (VOCAB_FILE, MERGES_FILE, TOKENIZER_JSON)

Merges = list[tuple[str, str]]


# ------------------------------------------------------------------ OpenAI .txt(.gz)

def packaged_openai_vocab() -> str:
    """Path of the vocabulary file shipped with gmm_jax."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), OPENAI_VOCAB_NAME)


def find_openai_vocab() -> str:
    """The packaged vocabulary, else the copy in an installed ``open_clip_torch`` (found
    without importing open_clip, whose import needs torchvision)."""
    candidates = [packaged_openai_vocab()]
    spec = importlib.util.find_spec("open_clip")
    for loc in (list(spec.submodule_search_locations or []) if spec else []):
        candidates.append(os.path.join(loc, OPENAI_VOCAB_NAME))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"OpenAI CLIP vocabulary {OPENAI_VOCAB_NAME} not found (looked in {candidates}): "
        "reinstall gmm_jax, which ships it, or pass its path to Tokenizer.from_path")


def read_openai_merges(path: str) -> Merges:
    """The merges of OpenAI's file (gzip or plain text; a header line, then 'a b')."""
    raw = paths.read_bytes(path)
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
    return merges


# ------------------------------------------------------------------ vocab.json + merges.txt

def read_vocab_merges(directory: str) -> tuple[dict[str, int], Merges]:
    vocab_file = paths.join(directory, VOCAB_FILE)
    merges_file = paths.join(directory, MERGES_FILE)
    encoder = paths.read_json(vocab_file)
    if not isinstance(encoder, dict):
        raise ValueError(f"{vocab_file}: expected a JSON object token -> id")
    lines = paths.read_text(merges_file).split("\n")
    merges = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{merges_file}: line {lineno} is not a merge 'a b': {line!r}")
        merges.append((parts[0], parts[1]))
    return encoder, merges


def write_vocab_merges(out_dir: str, encoder: dict[str, int], merges: Sequence[tuple[str, str]],
                       context_length: int) -> None:
    """vocab.json, merges.txt and a tokenizer_config.json that transformers reads."""
    paths.write_json(paths.join(out_dir, VOCAB_FILE), encoder, ensure_ascii=False, indent=None)
    paths.write_text(paths.join(out_dir, MERGES_FILE),
                     "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
              "bos_token": SOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN,
              "pad_token": EOT_TOKEN}
    paths.write_json(paths.join(out_dir, CONFIG_FILE), config, indent=1)


def read_context_length(directory: str) -> int | None:
    """``model_max_length`` of a tokenizer_config.json, when it is a plausible length."""
    path = paths.join(directory, CONFIG_FILE)
    if not paths.isfile(path):
        return None
    max_len = paths.read_json(path).get("model_max_length")
    return max_len if isinstance(max_len, int) and 2 <= max_len <= 4096 else None


# ------------------------------------------------------------------ tokenizer.json

def _walk(node) -> list[dict]:
    """A normalizer / pre_tokenizer entry and the members of its Sequences, flattened."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        members = node.get("normalizers") or node.get("pretokenizers") or []
        return [m for child in members for m in _walk(child)]
    return [node]


def check_clip_pipeline(tj: dict, path: str) -> None:
    """Raise unless ``tokenizer.json`` describes CLIP's pipeline (byte-level BPE with
    ``</w>`` word ends, CLIP's split regex, lower case), which is what this tokenizer
    implements: a different pipeline would silently give other ids."""
    model = tj.get("model") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model.type={model.get('type')!r} (need 'BPE')")
    if model.get("end_of_word_suffix") != EOW:
        problems.append(f"model.end_of_word_suffix={model.get('end_of_word_suffix')!r} "
                        f"(need {EOW!r})")
    if model.get("continuing_subword_prefix") not in (None, ""):
        problems.append(f"model.continuing_subword_prefix="
                        f"{model.get('continuing_subword_prefix')!r} (need none)")
    if model.get("byte_fallback"):
        problems.append("model.byte_fallback=true (need false)")
    pre = _walk(tj.get("pre_tokenizer"))
    splits = [p for p in pre if p.get("type") == "Split"]
    pattern = (splits[0].get("pattern") or {}).get("Regex") if len(splits) == 1 else None
    if pattern != PIECE_PATTERN or not splits[0].get("invert"):
        problems.append(f"pre_tokenizer: need one inverted Split on CLIP's regex, got "
                        f"{[p.get('pattern') for p in splits] or 'none'}")
    if not any(p.get("type") == "ByteLevel" for p in pre):
        problems.append("pre_tokenizer: no ByteLevel step")
    if not any(n.get("type") == "Lowercase" for n in _walk(tj.get("normalizer"))):
        problems.append("normalizer: no Lowercase step (CLIP lower-cases text)")
    if problems:
        raise ValueError(f"{path}: not a CLIP byte-level BPE tokenizer: " + "; ".join(problems))


def read_tokenizer_json(path: str) -> tuple[dict[str, int], Merges]:
    """``(encoder, merges)`` of a Hugging Face ``tokenizer.json`` with CLIP's pipeline;
    special tokens listed only under ``added_tokens`` join the vocabulary."""
    try:
        tj = paths.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    check_clip_pipeline(tj, path)
    model = tj["model"]
    encoder = dict(model.get("vocab") or {})
    for tok in tj.get("added_tokens") or []:
        content, idx = tok.get("content"), tok.get("id")
        if content in (SOT_TOKEN, EOT_TOKEN) and content not in encoder:
            encoder[content] = idx
    merges = []
    for i, m in enumerate(model.get("merges") or []):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        if len(parts) != 2:
            raise ValueError(f"{path}: model.merges[{i}] is not a pair: {m!r}")
        merges.append((parts[0], parts[1]))
    return encoder, merges


def has_hf_tokenizer(directory: str) -> bool:
    """Whether ``directory`` holds a tokenizer this package reads."""
    return (paths.isfile(paths.join(directory, TOKENIZER_JSON))
            or all(paths.isfile(paths.join(directory, f)) for f in (VOCAB_FILE, MERGES_FILE)))


def read_hf_dir(directory: str) -> tuple[dict[str, int], Merges, str]:
    """``(encoder, merges, source file)`` of a Hugging Face tokenizer directory:
    vocab.json + merges.txt when both exist, else tokenizer.json."""
    if all(paths.isfile(paths.join(directory, f)) for f in (VOCAB_FILE, MERGES_FILE)):
        return (*read_vocab_merges(directory), directory)
    tok_file = paths.join(directory, TOKENIZER_JSON)
    if paths.isfile(tok_file):
        return (*read_tokenizer_json(tok_file), tok_file)
    raise FileNotFoundError(f"{directory}: expected vocab.json and merges.txt (or "
                            "tokenizer.json) in this tokenizer directory")
