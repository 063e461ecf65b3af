"""Own image-caption files: parsing one captions file, and finding the split files of a
directory.

A captions file is JSONL (one object per line: ``{"image": "rel/path.jpg", "captions":
[...]}`` or ``{"image": ..., "caption": "..."}``) or CSV/TSV with a header naming the
columns ``image`` and ``caption`` (any order, extra columns ignored; several rows per
image are grouped in first-seen order).

``config.data.files_path`` is either one such file (its only split is ``train``) or a
directory of ``<split>.jsonl`` / ``<split>.csv`` files, one per split (``train.jsonl``,
``test.jsonl``, ``shifted.csv``, ...). Every error names the culprit as ``file:line``
and, where it applies, the field.
"""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Iterable

from gmm_jax import paths

CAPTION_EXTS = (".jsonl", ".ndjson", ".csv", ".tsv")
_JSON_EXTS = (".jsonl", ".json", ".ndjson")
_CSV_EXTS = (".csv", ".tsv")
# TFDS split names: letters, digits and underscores.
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
SINGLE_FILE_SPLIT = "train"


def _check_caption(cap, where: str, field: str) -> str:
    if not isinstance(cap, str):
        raise ValueError(f"{where}: caption must be a string, got {type(cap).__name__} "
                         f"(field {field!r})")
    if not cap.strip():
        raise ValueError(f"{where}: empty caption (field {field!r})")
    return cap.strip()


def _read_jsonl(f, path: str, add) -> None:
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "captions" in obj:
            caps = obj["captions"]
            if not isinstance(caps, list):
                raise ValueError(f"{where}: 'captions' must be a list of strings "
                                 f"(field 'captions')")
            fields = [f"captions[{i}]" for i in range(len(caps))]
        elif "caption" in obj:
            caps, fields = [obj["caption"]], ["caption"]
        else:
            raise ValueError(f"{where}: needs 'caption' or 'captions' (keys: {sorted(obj)})")
        add(obj.get("image"), caps, fields, where)


def _read_csv(f, path: str, delimiter: str, add) -> None:
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, None)
    names = [h.strip().lower() for h in header] if header else []
    missing = [c for c in ("image", "caption") if c not in names]
    if missing:
        raise ValueError(f"{path}:1: expected header with columns 'image' and 'caption', "
                         f"got {header} (missing column {', '.join(map(repr, missing))})")
    i_img, i_cap = names.index("image"), names.index("caption")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) > len(names):
            raise ValueError(f"{where}: {len(row)} columns but the header has {len(names)} "
                             "(quote captions that contain the delimiter)")
        for col, idx in (("image", i_img), ("caption", i_cap)):
            if idx >= len(row):
                raise ValueError(f"{where}: missing field {col!r} (row has {len(row)} "
                                 f"column(s), header {header})")
        add(row[i_img], [row[i_cap]], ["caption"], where)


def parse_captions_file(path: str) -> list[tuple[str, list[str]]]:
    """``[(image relative path, [captions...]), ...]`` in first-seen order.

    Raises ``FileNotFoundError`` if ``path`` is missing and ``ValueError`` with
    ``path:line`` (and the field) for malformed lines, missing keys or columns, and
    empty captions.
    """
    if not paths.isfile(path):
        raise FileNotFoundError(f"captions file not found: {path}")
    grouped: dict[str, list[str]] = {}

    def add(image, caps: Iterable, fields: list[str], where: str):
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: missing or empty 'image' path (field 'image')")
        caps = [_check_caption(c, where, fld) for c, fld in zip(caps, fields)]
        if not caps:
            raise ValueError(f"{where}: no captions (field 'captions')")
        grouped.setdefault(image.strip(), []).extend(caps)

    ext = paths.path(path).suffix.lower()
    # newline="": the csv module sees line ends as they are (quoted fields may hold them)
    with io.StringIO(paths.read_text(path), newline="") as f:
        if ext in _JSON_EXTS:
            _read_jsonl(f, path, add)
        elif ext in _CSV_EXTS:
            _read_csv(f, path, "\t" if ext == ".tsv" else ",", add)
        else:
            raise ValueError(f"{path}: unsupported captions file type {ext!r} "
                             "(use .jsonl or .csv)")
    if not grouped:
        raise ValueError(f"{path}: no image-caption pairs")
    return list(grouped.items())


def split_files(files_path: str) -> dict[str, str]:
    """Split name -> captions file (absolute path) for ``config.data.files_path``.

    A file is the single split ``train``. A directory contributes one split per
    ``<split>.jsonl`` / ``.csv`` (/ ``.ndjson`` / ``.tsv``) file, named by its stem.
    """
    if paths.isfile(files_path):
        return {SINGLE_FILE_SPLIT: paths.absolute(files_path)}
    if not paths.isdir(files_path):
        raise FileNotFoundError(f"captions file or directory not found: {files_path} "
                                "(config.data.files_path)")
    found: dict[str, str] = {}
    for entry in sorted(paths.path(files_path).iterdir(), key=lambda p: p.name):
        stem, ext = entry.stem, entry.suffix
        if ext.lower() not in CAPTION_EXTS or not entry.is_file():
            continue
        path = paths.absolute(entry)
        if not _SPLIT_NAME.match(stem):
            raise ValueError(f"{path}: split file names must be <split>{ext} with letters, "
                             "digits and '_' only (the name becomes the split name)")
        if stem in found:
            raise ValueError(f"split {stem!r} is given twice: {found[stem]} and {path}")
        found[stem] = path
    if not found:
        raise FileNotFoundError(
            f"{files_path} (config.data.files_path) holds no split files: expected "
            f"<split>.jsonl or <split>.csv files, e.g. train.jsonl and test.jsonl")
    return found
