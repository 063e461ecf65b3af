"""The SIMAT database (Couairon et al. 2022) read from a manual directory.

Expected layout (as the SIMAT repository ships it under ``simat_db/``)::

    DIR/transfos.csv     index, region_id, value, target, is_test, norm2, target_ids, ...
    DIR/triplets.csv     index = region id, column dataset_id
    DIR/images/**/<region_id>.<jpg|png>
    DIR/oscar_similarity_matrix.pt   (or .npy) scores (num_images, num_target_captions)

Images are ordered by ``dataset_id``; ``source`` (Q,) holds each transformation's
dataset id. Reading ``.pt`` needs torch (otherwise convert it once to ``.npy``).
"""
from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np

from gmm_jax import paths

REQUIRED = {"transfos.csv": ("region_id", "value", "target", "is_test", "norm2", "target_ids"),
            "triplets.csv": ("dataset_id",)}


def _read_csv(path: str, columns) -> tuple[list[str], list[dict]]:
    with io.StringIO(paths.read_text(path), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: empty")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {list(rows[0])}")
    index_col = next(iter(rows[0]))  # pandas' index_col=0
    return index_col, rows


def _truthy(s: str) -> bool:
    return str(s).strip().lower() in ("true", "1", "yes")


@dataclasses.dataclass
class SimatDB:
    image_paths: list[str]   # (N,) by dataset id
    source: np.ndarray       # (Q,) dataset id of the transformed image
    value_words: list[str]   # (Q,) word replaced
    target_words: list[str]  # (Q,) its replacement
    target_ids: np.ndarray   # (Q,) column of `similarity`
    norm2: np.ndarray        # (Q,)
    similarity: np.ndarray   # (N, C)
    image_size: int = 224

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    def iter_images(self, batch_size: int):
        """Yields float32 (b, S, S, 3) CLIP-preprocessed images in dataset-id order."""
        import tensorflow as tf

        from gmm_jax.data import preprocess
        size = self.image_size
        ds = tf.data.Dataset.from_tensor_slices(self.image_paths).map(
            lambda p: preprocess.clip_transform(preprocess.decode_image(tf.io.read_file(p)), size),
            num_parallel_calls=tf.data.AUTOTUNE)
        opts = tf.data.Options()
        opts.deterministic = True
        yield from ds.batch(batch_size).prefetch(2).with_options(opts).as_numpy_iterator()


def _load_similarity(directory: str) -> np.ndarray:
    npy = paths.join(directory, "oscar_similarity_matrix.npy")
    pt = paths.join(directory, "oscar_similarity_matrix.pt")
    if paths.exists(npy):
        return np.load(io.BytesIO(paths.read_bytes(npy)), allow_pickle=False)
    if paths.exists(pt):
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"{pt} needs torch to read; or save it as "
                             "oscar_similarity_matrix.npy") from e
        sim = torch.load(io.BytesIO(paths.read_bytes(pt)), map_location="cpu")
        return np.asarray(sim.float().numpy())
    raise FileNotFoundError(f"SIMAT: neither {npy} nor {pt} exists")


def load_simat(directory: str, domain: str = "test", image_size: int = 224) -> SimatDB:
    """Read the SIMAT files of ``directory`` (``domain``: "test" or "dev")."""
    if not directory or not paths.isdir(directory):
        raise FileNotFoundError(f"SIMAT directory {directory!r} not found: set "
                                "config.eval.arithmetic.simat_dir to the simat_db folder")
    if domain not in ("test", "dev"):
        raise ValueError(f"SIMAT domain {domain!r}; expected 'test' or 'dev'")
    for name in REQUIRED:
        if not paths.exists(paths.join(directory, name)):
            raise FileNotFoundError(f"SIMAT: {paths.join(directory, name)} not found")
    _, transfos = _read_csv(paths.join(directory, "transfos.csv"), REQUIRED["transfos.csv"])
    rid_col, triplets = _read_csv(paths.join(directory, "triplets.csv"), REQUIRED["triplets.csv"])
    did2rid = {int(r["dataset_id"]): str(r[rid_col]) for r in triplets}
    rid2did = {v: k for k, v in did2rid.items()}
    n = len(did2rid)
    if sorted(did2rid) != list(range(n)):
        raise ValueError(f"SIMAT triplets.csv: dataset_id must be 0..{n - 1}")

    files = {}
    for root, _, names in paths.path(directory, "images").walk():
        for f in names:
            files[paths.path(f).stem] = paths.join(root, f)
    missing = [did2rid[d] for d in range(n) if did2rid[d] not in files]
    if missing:
        raise FileNotFoundError(f"SIMAT: {len(missing)} image(s) missing under "
                                f"{paths.join(directory, 'images')}, e.g. {missing[:3]}")

    rows = [r for r in transfos if _truthy(r["is_test"]) == (domain == "test")]
    if not rows:
        raise ValueError(f"SIMAT transfos.csv has no {domain!r} transformations")
    unknown = [r["region_id"] for r in rows if str(r["region_id"]) not in rid2did]
    if unknown:
        raise ValueError(f"SIMAT transfos.csv: region ids {unknown[:3]} not in triplets.csv")
    sim = _load_similarity(directory)
    tid = np.array([int(float(r["target_ids"])) for r in rows], np.int64)
    if sim.ndim != 2 or sim.shape[0] != n or tid.max() >= sim.shape[1]:
        raise ValueError(f"SIMAT similarity matrix has shape {sim.shape}; "
                         f"need ({n}, > {tid.max()})")
    return SimatDB(
        image_paths=[files[did2rid[d]] for d in range(n)],
        source=np.array([rid2did[str(r["region_id"])] for r in rows], np.int64),
        value_words=[r["value"] for r in rows], target_words=[r["target"] for r in rows],
        target_ids=tid, norm2=np.array([float(r["norm2"]) for r in rows]),
        similarity=np.asarray(sim, np.float32), image_size=int(image_size))
