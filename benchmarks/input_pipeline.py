"""Input-pipeline throughput: images/s per CPU core for JPEG decode + CLIP preprocess
(224 px) + tokenisation, through the real training iterator (``make_train_iterator``).

Writes synthetic JPEGs (COCO-like 640x480, quality 90) and a JSONL of captions to a temp
dir, builds the ``image_text_files`` TFDS dataset from them (not timed), pins the process
to ``--cores`` CPU cores, and times ``--steps`` batches after a warm-up.

    python benchmarks/input_pipeline.py --cores 1
    python benchmarks/input_pipeline.py --cores 2 --augment

The tokenizer is the project's CLIP BPE (``gmm_jax.tokenizer.Tokenizer``) with the
vocabulary open_clip ships; ``--tokenizer chars`` uses a trivial stand-in instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=1, help="CPU cores to pin the process to")
    p.add_argument("--images", type=int, default=512, help="distinct synthetic JPEGs")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--tokenizer", choices=("clip", "chars"), default="clip")
    return p.parse_args()


def _write_fixture(d: str, n: int, w: int, h: int) -> str:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(d, "images"), exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with open(os.path.join(d, "pairs.jsonl"), "w") as f:
        for i in range(n):
            # smooth colour fields + noise: JPEG sizes close to natural photos
            a, b, c = rng.uniform(0.005, 0.05, 3)
            img = np.stack([128 + 100 * np.sin(a * xx + b * yy + k + i) for k in range(3)], -1)
            img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, "images", f"{i}.jpg"), quality=90)
            caps = [f"a photo number {i} of a person riding a bicycle down a busy street "
                    f"next to a red bus, take {k}" for k in range(5)]
            f.write(json.dumps({"image": f"{i}.jpg", "captions": caps}) + "\n")
    return os.path.join(d, "pairs.jsonl")


def _tokenizer(kind: str):
    if kind == "chars":
        import numpy as np

        def tok(texts, context_length=77):
            out = np.zeros((len(texts), context_length), np.int32)
            for i, t in enumerate(texts):
                ids = [1] + [ord(c) % 1000 for c in t][:context_length - 2] + [2]
                out[i, :len(ids)] = ids
            return out
        return tok
    import importlib.util

    from gmm_jax.tokenizer import Tokenizer
    loc = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    return Tokenizer.from_path(os.path.join(loc, "bpe_simple_vocab_16e6.txt.gz"))


def main():
    args = _args()
    cores = sorted(os.sched_getaffinity(0))[:args.cores]
    os.sched_setaffinity(0, cores)  # before TF starts its thread pools
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow_datasets as tfds

    from gmm_jax.data import make_train_iterator
    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory() as d:
        files = _write_fixture(d, args.images, args.width, args.height)
        cfg = {"name": "image_text_files", "files_path": files,
               "images_dir": os.path.join(d, "images"), "data_dir": os.path.join(d, "tfds"),
               "caption_mode": "random", "augment": args.augment, "shuffle_buffer": 256}
        it = make_train_iterator(cfg, _tokenizer(args.tokenizer), args.image_size,
                                 args.batch, seed=0)
        for _ in range(args.warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            next(it)
        dt = time.perf_counter() - t0
    n = args.steps * args.batch
    print(json.dumps({
        "cores": len(cores), "images_per_s": round(n / dt, 1),
        "images_per_s_per_core": round(n / dt / len(cores), 1),
        "image": f"{args.width}x{args.height} JPEG -> {args.image_size}",
        "augment": args.augment, "tokenizer": args.tokenizer, "batch": args.batch,
        "steps": args.steps}))


if __name__ == "__main__":
    main()
