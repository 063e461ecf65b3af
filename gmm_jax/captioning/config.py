"""The captioning section of a config (``config.eval.captioning``) and its checks."""
from __future__ import annotations

import ml_collections


def captioning_config() -> ml_collections.ConfigDict:
    """Every knob of the captioning evaluation, with defaults sized for COCO-like data.

    Model: ``prefix_length`` k token embeddings made from the image embedding by a
    two-layer tanh MLP (hidden ``mapping_hidden``; 0 = k * width / 2, ClipCap's choice),
    then a pre-norm causal transformer (``width``, ``layers``, ``heads``, ``mlp_dim``,
    0 = 4 * width) over the CLIP tokenizer's vocabulary. ``max_length`` counts every
    caption token including SOT and EOT (longer captions are cut, EOT kept last).
    Training: AdamW, ``steps`` updates of ``batch_size`` (image, caption) pairs, linear
    warm-up over ``warmup_frac`` then cosine to 0. Decoding: ``beam_size`` (1 = greedy),
    ``length_alpha`` the GNMT length-penalty exponent (0 = raw log-probability).
    """
    c = ml_collections.ConfigDict()
    c.prefix_length = 10
    c.mapping_hidden = 0
    c.width = 256
    c.layers = 4
    c.heads = 4
    c.mlp_dim = 0
    c.max_length = 32
    c.steps = 3000
    c.batch_size = 64
    c.lr = 1e-3
    c.warmup_frac = 0.05
    c.weight_decay = 0.01
    c.beam_size = 3
    c.length_alpha = 0.6
    c.decode_batch_size = 64     # images decoded per jitted call (padded to this size)
    c.encode_batch_size = 256    # images per image-tower call when embeddings are computed
    c.max_train_images = 0       # >0: cap the captioner's training images; 0 = all
    c.max_test_images = 0        # >0: cap the scored images; 0 = all
    c.num_samples = 8            # rows of the Markdown sample table
    c.java_metrics = "meteor"    # with `java` on PATH: "meteor", "meteor,spice" or ""
    c.cache_dir = ""             # "" = no embedding cache
    c.seed = 0
    return c


_POSITIVE = ("prefix_length", "width", "layers", "heads", "steps", "batch_size",
             "beam_size", "decode_batch_size", "encode_batch_size")
_NON_NEGATIVE = ("mapping_hidden", "mlp_dim", "max_train_images", "max_test_images",
                 "num_samples", "weight_decay", "length_alpha")
JAVA_METRICS = ("meteor", "spice")


def check_config(cfg, where: str = "config.eval.captioning") -> None:
    """Raise ValueError naming the first bad key of a ``captioning_config`` section."""
    missing = sorted(set(captioning_config().keys()) - set(cfg.keys()))
    if missing:
        raise ValueError(f"{where} lacks keys {missing}; start from captioning_config()")
    for k in _POSITIVE:
        if not cfg[k] > 0:
            raise ValueError(f"{where}.{k}={cfg[k]!r}: must be > 0")
    for k in _NON_NEGATIVE:
        if not cfg[k] >= 0:
            raise ValueError(f"{where}.{k}={cfg[k]!r}: must be >= 0")
    if cfg.width % cfg.heads:
        raise ValueError(f"{where}.width={cfg.width} is not divisible by heads={cfg.heads}")
    if cfg.max_length < 3:
        raise ValueError(f"{where}.max_length={cfg.max_length}: must be >= 3 "
                         "(SOT, one word, EOT)")
    if not 0 < cfg.lr < 1:
        raise ValueError(f"{where}.lr={cfg.lr!r}: expected a learning rate in (0, 1)")
    if not 0 <= cfg.warmup_frac < 1:
        raise ValueError(f"{where}.warmup_frac={cfg.warmup_frac!r}: must be in [0, 1)")
    bad = [m for m in java_metric_names(cfg) if m not in JAVA_METRICS]
    if bad:
        raise ValueError(f"{where}.java_metrics={cfg.java_metrics!r}: unknown {bad}; "
                         f"known: {list(JAVA_METRICS)}")


def java_metric_names(cfg) -> list[str]:
    value = cfg.java_metrics
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip().lower() for v in items if v.strip()]
