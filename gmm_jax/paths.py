"""One path layer for every path a user gives (workdirs, model directories, data files,
eval outputs): all file access goes through ``etils.epath``, the layer Orbax and TFDS use,
so local paths and ``gs://`` (and any other filesystem epath supports) behave the same.

Paths are kept as strings where they are stored or printed (``os.fspath`` of an epath
path is its URI, e.g. ``gs://bucket/run``); these helpers take either.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import numpy as np
from etils import epath

PathLike = epath.PathLike


def is_uri(p: PathLike) -> bool:
    """``gs://...`` and other ``scheme://`` paths (not made absolute, not local)."""
    return "://" in os.fspath(p)


def path(p: PathLike, *parts: str) -> epath.Path:
    return epath.Path(p, *parts)


def absolute(p: PathLike) -> str:
    """``p`` as an absolute path string; URIs are absolute already (``os.path.abspath``
    would turn ``gs://b/x`` into ``$PWD/gs:/b/x``)."""
    s = os.fspath(p)
    return s if is_uri(s) else os.path.abspath(os.path.expanduser(s))


def join(p: PathLike, *parts: str) -> str:
    return os.fspath(epath.Path(p).joinpath(*parts))


def isdir(p: PathLike) -> bool:
    return epath.Path(p).is_dir()


def isfile(p: PathLike) -> bool:
    return epath.Path(p).is_file()


def exists(p: PathLike) -> bool:
    return epath.Path(p).exists()


def makedirs(p: PathLike) -> None:
    epath.Path(p).mkdir(parents=True, exist_ok=True)


def basename(p: PathLike) -> str:
    return epath.Path(os.fspath(p).rstrip("/")).name


def dirname(p: PathLike) -> str:
    return os.fspath(epath.Path(absolute(p)).parent)


def read_text(p: PathLike) -> str:
    return epath.Path(p).read_text(encoding="utf-8")


def read_bytes(p: PathLike) -> bytes:
    return epath.Path(p).read_bytes()


def read_json(p: PathLike) -> Any:
    return json.loads(read_text(p))


def read_json_or_none(p: PathLike) -> Any:
    """The JSON value in ``p``; None when ``p`` is missing or not valid JSON (a file
    cut short by a killed writer: markers are read this way)."""
    if not exists(p):
        return None
    try:
        return read_json(p)
    except json.JSONDecodeError:
        return None


def write_bytes(p: PathLike, data: bytes, atomic: bool = False) -> None:
    """Write ``data`` to ``p``, creating its directory. ``atomic``: write a temporary
    sibling then rename it over ``p`` (a reader never sees a half-written file; on
    object stores the rename is a copy, still all-or-nothing for the reader)."""
    dst = epath.Path(p)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not atomic:
        dst.write_bytes(data)
        return
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    tmp.replace(dst)


def write_text(p: PathLike, text: str, atomic: bool = False) -> None:
    write_bytes(p, text.encode("utf-8"), atomic=atomic)


def write_json(p: PathLike, obj: Any, atomic: bool = False, **dump_kw) -> None:
    dump_kw.setdefault("indent", 2)
    write_text(p, json.dumps(obj, **dump_kw), atomic=atomic)


def save_figure(fig, p: PathLike, **savefig_kw) -> None:
    """Matplotlib writes to a local file or a buffer only: render to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    write_bytes(p, buf.getvalue())


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_npz(p: PathLike, compressed: bool = False, atomic: bool = False, **arrays) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    write_bytes(p, buf.getvalue(), atomic=atomic)
