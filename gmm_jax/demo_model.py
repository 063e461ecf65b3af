"""The shipped pre-trained demo CLIP (``gmm_jax/assets/demo_clip``) and a quick check of it.

``experiments/make_demo_model.py`` makes the model directory and records, in
``demo_clip/metrics.json``, full evaluations and ``quick_metrics`` on the first
``QUICK_EXAMPLES`` scenes of a few splits; tests/test_demo_model.py recomputes the latter.
"""
from __future__ import annotations

import numpy as np

from gmm_jax import paths

SHIPPED_DIR = paths.join(paths.dirname(paths.absolute(__file__)), "assets", "demo_clip")
METRICS_FILE = "metrics.json"
QUICK_EXAMPLES = 200
QUICK_SPLITS = ("source_test", "target_test")


def shipped_dir() -> str:
    """The shipped model directory; FileNotFoundError naming it when it is missing."""
    if not paths.isfile(paths.join(SHIPPED_DIR, "model_config.json")):
        raise FileNotFoundError(f"{SHIPPED_DIR}: the shipped demo model is missing (make it "
                                "with python experiments/make_demo_model.py, or set "
                                "--config.demo.pretrain.rebuild=True)")
    return SHIPPED_DIR


def quick_metrics(model, params, tokenizer, split: str, n: int = QUICK_EXAMPLES,
                  seed: int = 0) -> dict:
    """Retrieval R@1 (five captions per image) and zero-shot shape top-1, in percent, on
    the first ``n`` scenes of ``split`` rendered directly (no TFDS): ``{"i2t_r1",
    "t2i_r1", "zeroshot_top1"}``."""
    import tensorflow as tf

    from gmm_jax import eval_lib, eval_suites, metrics
    from gmm_jax.data import demo, demo_render, preprocess
    size, length = eval_lib.model_dims(model)
    exs = [demo_render.make_example(split, i, seed) for i in range(n)]
    images = np.stack([preprocess.clip_transform(tf.constant(e["image"]), size).numpy()
                       for e in exs])
    caps = [c for e in exs for c in e["captions"]]
    owner = np.repeat(np.arange(n), [len(e["captions"]) for e in exs])
    prompts = [t.format(c) for c in demo.CLASS_NAMES for t in demo.TEMPLATES]
    tokens = np.asarray(tokenizer(caps + prompts, context_length=length), np.int32)
    img, txt = eval_lib.extract_embeddings(model, params, [images], tokens, progress=False)
    cap_emb, prompt_emb = txt[:len(caps)], txt[len(caps):]
    rec = metrics.retrieval_recall(img, cap_emb, owner, ks=(1,),
                                   text_groups=metrics.caption_groups(caps))
    weights = eval_suites.class_weights(prompt_emb, len(demo.CLASS_NAMES))
    labels = np.array([e["scene"]["shape"] for e in exs])
    zs, _ = eval_suites.zeroshot_suite(img, labels, weights, eval_lib.model_scale(params),
                                       prefix="z")
    return {"i2t_r1": rec["i2t"][1], "t2i_r1": rec["t2i"][1],
            "zeroshot_top1": float(zs["z/top1"])}
