"""Image embeddings computed once per (model, split) and kept as ``.npz`` files.

The key is a fingerprint of the model's parameters (a hash of every leaf's path,
dtype, shape and bytes) plus the split's name, so a retrained or different model
never reads another's embeddings, and the captioner's training (many epochs over the
same images) never runs the image tower again.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re
from typing import Callable, Iterable

import jax
import numpy as np

from gmm_jax import paths
from gmm_jax.metrics import unit_rows

log = logging.getLogger(__name__)


def params_fingerprint(params) -> str:
    """A 20-hex-digit digest of a parameter tree (paths, dtypes, shapes, values)."""
    h = hashlib.blake2b(digest_size=10)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _image_apply(model):
    """One jitted image tower per architecture, shared by every parameter set."""
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))


def clip_image_encoder(model, params, batch_size: int = 256) -> Callable:
    """``fn(images (b, H, W, 3) float32) -> (b, D)`` float32 image features of a Flax
    CLIP. Batches are zero-padded to ``batch_size`` so the tower compiles once."""
    apply = _image_apply(model)
    bs = int(batch_size)

    def fn(images):
        images = np.asarray(images, np.float32)
        out = []
        for start in range(0, len(images), bs):
            chunk = images[start:start + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.zeros((bs - n,) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(apply(params, chunk))[:n])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return fn


def embed_images(encode_image_fn: Callable, batches: Iterable[np.ndarray]) -> np.ndarray:
    """L2-normalised float32 (N, D) embeddings of a stream of image batches."""
    out = []
    for i, batch in enumerate(batches):
        f = np.asarray(encode_image_fn(batch), np.float32)
        if f.ndim != 2 or len(f) != len(batch):
            raise ValueError(f"encode_image_fn returned shape {f.shape} for image batch {i} "
                             f"of shape {np.shape(batch)}; expected ({len(batch)}, D)")
        out.append(f)
    if not out:
        raise ValueError("embed_images: no image batches")
    return unit_rows(np.concatenate(out))


def cache_file(cache_dir: str, fingerprint: str, split: str) -> str:
    """``<cache_dir>/<fingerprint>/<split slug>-<hash of split>.npz``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_")[:60] or "split"
    digest = hashlib.blake2b(split.encode(), digest_size=4).hexdigest()
    return paths.join(cache_dir, fingerprint, f"{slug}-{digest}.npz")


def cached_image_embeddings(encode_image_fn: Callable, images, *, cache_dir: str | None,
                            fingerprint: str | None, split: str) -> np.ndarray:
    """Embeddings of ``images`` (an iterable of batches, or a zero-argument callable
    returning one, so cached splits are not even read), from the cache when present.

    Without ``cache_dir`` or ``fingerprint`` the embeddings are computed every time.
    Files are written to a temporary name and renamed, so a crash leaves no half file.
    """
    def compute():
        return embed_images(encode_image_fn, images() if callable(images) else images)

    if not cache_dir or not fingerprint:
        return compute()
    path = cache_file(cache_dir, fingerprint, split)
    if paths.exists(path):
        z = paths.load_npz(path)
        if str(z["split"]) == split and str(z["fingerprint"]) == fingerprint:
            log.info("captioning: image embeddings of %s from %s", split, path)
            return np.asarray(z["embeddings"], np.float32)
        log.warning("captioning: %s holds another split or model; recomputing", path)
    emb = compute()
    paths.save_npz(path, atomic=True, embeddings=emb, split=np.asarray(split),
                   fingerprint=np.asarray(fingerprint))
    return emb
