"""Teacher-forced training of a ``Captioner`` on cached image embeddings.

Every (image, reference caption) pair is one training example, so an image with five
captions is seen with each of them. Batches are drawn epoch by epoch from a seeded
permutation of the pairs; the image tower never runs here.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import jax
import numpy as np
import optax

from gmm_jax.captioning.config import check_config
from gmm_jax.captioning.model import Captioner, build_captioner, caption_loss, init_captioner
from gmm_jax.optim import decay_mask

log = logging.getLogger(__name__)


def caption_pairs(captions: Sequence[Sequence[str]], tokenizer, max_length: int):
    """Per-image caption lists -> ``(image_index (M,) int32, tokens (M, T) int32)``."""
    index, texts = [], []
    for i, caps in enumerate(captions):
        if isinstance(caps, (str, bytes)):
            raise TypeError(f"captions[{i}] is a single string; expected a list of the "
                            "image's reference captions")
        for c in caps:
            index.append(i)
            texts.append(c.decode("utf-8") if isinstance(c, bytes) else c)
    if not texts:
        raise ValueError("caption_pairs: no captions given")
    return np.asarray(index, np.int32), tokenizer(texts, context_length=int(max_length))


@functools.lru_cache(maxsize=8)
def train_step_fn(model: Captioner, eot_id: int, weight_decay: float):
    """Jitted ``step(params, opt_state, emb, tokens, lr) -> (params, opt_state, loss)``.

    AdamW written as Adam + decoupled decay with the learning rate as an argument
    (``optax.adamw`` is the same chain with the schedule baked in): the compiled step
    then depends only on the model and is reused across runs (seeds, step budgets,
    schedules), which matters when several captioners are trained in one process.
    """
    tx = optimizer(weight_decay)

    def step(params, opt_state, emb, tokens, lr):
        loss, grads = jax.value_and_grad(
            lambda p: caption_loss(model.apply({"params": p}, emb, tokens), tokens, eot_id))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return params, opt_state, loss
    return jax.jit(step, donate_argnums=(0, 1))


def optimizer(weight_decay: float) -> optax.GradientTransformation:
    """AdamW's direction (without the learning rate); decay masked as for CLIP."""
    return optax.chain(optax.scale_by_adam(),
                       optax.add_decayed_weights(float(weight_decay), mask=decay_mask))


def train_captioner(embeddings: np.ndarray, captions: Sequence[Sequence[str]], tokenizer,
                    cfg, log_every: int = 0):
    """Fit a captioner to ``embeddings`` (N, D) and their reference captions (N lists).

    Returns ``(model, params, losses)`` with ``losses`` the (steps,) training losses.
    """
    check_config(cfg)
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or len(emb) != len(captions):
        raise ValueError(f"train_captioner: embeddings {emb.shape} must be (N, D) with N = "
                         f"len(captions) = {len(captions)}")
    index, tokens = caption_pairs(captions, tokenizer, cfg.max_length)
    model = build_captioner(cfg, tokenizer.vocab_size)
    params = init_captioner(model, emb.shape[1], jax.random.key(int(cfg.seed)))
    steps = int(cfg.steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, float(cfg.lr), int(round(float(cfg.warmup_frac) * steps)), max(steps, 1), 0.0)
    lrs = np.asarray(jax.vmap(schedule)(np.arange(steps)), np.float32)
    opt_state = optimizer(cfg.weight_decay).init(params)
    step = train_step_fn(model, tokenizer.eot_token_id, float(cfg.weight_decay))

    rng = np.random.default_rng(int(cfg.seed))
    bs = min(int(cfg.batch_size), len(index))  # fixed batch shape: one compilation
    order, pos, losses = rng.permutation(len(index)), 0, []
    for s in range(steps):
        if pos + bs > len(order):
            order, pos = rng.permutation(len(index)), 0
        pick = order[pos:pos + bs]
        pos += bs
        params, opt_state, loss = step(params, opt_state, emb[index[pick]], tokens[pick],
                                       lrs[s])
        losses.append(loss)
        if log_every and (s + 1) % log_every == 0:
            log.info("captioner step %d/%d: loss %.4f", s + 1, steps, float(loss))
    return model, params, np.asarray(jax.device_get(losses), np.float32)
