"""Training input pipeline: deterministic, host-sharded, resumable.

Order of an epoch e (the same on every host): TFDS files shuffled with seed f(seed, e),
examples enumerated (position i), one caption picked (the first, or a random one drawn
from (seed, e, i)), shuffled in a buffer seeded with f(seed, e), grouped into global
batches (the last partial batch dropped). Each host keeps its rows of every global batch
(``process_index * B_local`` onwards) and only then decodes and preprocesses them.
Resuming at (e, s) rebuilds epoch e and skips its first s global batches before any
decoding, so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import collections
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from gmm_jax.config_access import config_get
from gmm_jax.data import preprocess
from gmm_jax.data.sources import Source, get_source

_SEED_MOD = 2**31 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A per-epoch seed for TF ops (fits int32; distinct epochs give distinct seeds)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(epoch)]).generate_state(1)[0]
               % _SEED_MOD)


def tokenize_batch(tokenizer, captions: np.ndarray, context_length: int) -> np.ndarray:
    """bytes (B,) -> int32 (B, L) with the project's tokenizer call convention."""
    texts = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions]
    tokens = np.asarray(tokenizer(texts, context_length=context_length), dtype=np.int32)
    if tokens.shape != (len(texts), context_length):
        raise ValueError(f"tokenizer returned shape {tokens.shape}, expected "
                         f"({len(texts)}, {context_length})")
    return tokens


class TrainIterator:
    """Iterator of training batches ``{"image": f32 (B, S, S, 3), "tokens": i32 (B, L),
    "epoch": int}``; B is this host's share of the global batch (numpy), or the global
    batch as ``jax.Array``s when ``sharding`` is given.

    ``get_state()`` -> ``{"epoch", "step_in_epoch"}`` of the next batch to be yielded;
    passing it back as ``state=`` resumes exactly there.
    """

    def __init__(self, source: Source, split: str, tokenizer, image_size: int,
                 global_batch_size: int, seed: int, *, sharding=None, state=None,
                 caption_mode: str = "first", augment: bool = False,
                 shuffle_buffer: int = 10_000, context_length: int = 77,
                 augment_scale_min: float = 0.9, random_flip: bool = True,
                 process_index: int | None = None, process_count: int | None = None,
                 prefetch: int = 2):
        if caption_mode not in ("first", "random"):
            raise ValueError(f"caption_mode={caption_mode!r}; expected 'first' or 'random'")
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                             f"{self.process_count} processes")
        self.source, self.split, self.tokenizer = source, split, tokenizer
        self.image_size, self.seed = int(image_size), int(seed)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.sharding, self.caption_mode, self.augment = sharding, caption_mode, augment
        self.shuffle_buffer, self.context_length = int(shuffle_buffer), int(context_length)
        self.augment_scale_min, self.random_flip = augment_scale_min, random_flip
        self.num_examples = source.num_examples(split)
        self.steps_per_epoch = self.num_examples // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{source.name}:{split} has {self.num_examples} examples, fewer "
                             f"than one global batch of {self.global_batch_size}")
        state = state or {"epoch": 0, "step_in_epoch": 0}
        try:
            epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad iterator state {state!r}: needs int 'epoch' and "
                             "'step_in_epoch'") from e
        if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"bad iterator state {state!r} (steps_per_epoch="
                             f"{self.steps_per_epoch})")
        self._epoch, self._step = epoch, step
        self._normalize()
        self._prefetch = max(0, int(prefetch))
        self._queue: collections.deque = collections.deque()
        self._tf_iter = None
        self._tf_pos = (self._epoch, self._step)  # position of the next tf batch

    def _normalize(self):
        if self._step >= self.steps_per_epoch:
            self._epoch, self._step = self._epoch + 1, 0

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "step_in_epoch": self._step}

    def __iter__(self):
        return self

    # -- tf.data -----------------------------------------------------------------------
    def epoch_dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """This host's batches of ``epoch`` from global batch ``start_step`` on."""
        es = epoch_seed(self.seed, epoch)
        ds = self.source.raw(self.split, shuffle_files=True, shuffle_seed=es)
        mode, size = self.caption_mode, self.image_size

        def pick_caption(i, ex):
            caps = ex["captions"]
            n = tf.shape(caps)[0]
            tf.debugging.assert_positive(n, message="example without captions")
            if mode == "first":
                j = 0
            else:
                j = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(es, tf.int64), i]),
                                                maxval=n, dtype=tf.int32)
            return {"index": i, "image": ex["image"], "caption": caps[j]}

        ds = ds.enumerate().map(pick_caption, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.shuffle(self.shuffle_buffer, seed=es, reshuffle_each_iteration=False)
        ds = ds.batch(self.global_batch_size, drop_remainder=True).skip(start_step)
        lo = self.process_index * self.local_batch_size
        hi = lo + self.local_batch_size
        ds = ds.map(lambda b: {k: v[lo:hi] for k, v in b.items()}).unbatch()

        augment, scale_min, flip = self.augment, self.augment_scale_min, self.random_flip

        def decode(ex):
            img = preprocess.decode_image(ex["image"])
            if augment:
                seed = tf.stack([tf.cast(es, tf.int64) + 1, ex["index"]])
                img = preprocess.augment_transform(img, size, seed, scale_min, flip)
            else:
                img = preprocess.clip_transform(img, size)
            return {"image": img, "caption": ex["caption"]}

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(self.local_batch_size, drop_remainder=True)
        tok, L, B = self.tokenizer, self.context_length, self.local_batch_size

        def tokenize(b):
            tokens = tf.numpy_function(lambda c: tokenize_batch(tok, c, L), [b["caption"]],
                                       tf.int32, stateful=False)
            tokens.set_shape([B, L])
            return {"image": b["image"], "tokens": tokens}

        ds = ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = True
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)

    # -- batches -----------------------------------------------------------------------
    def _next_host_batch(self) -> dict:
        epoch, step = self._tf_pos
        if self._tf_iter is None:
            self._tf_iter = iter(self.epoch_dataset(epoch, step).as_numpy_iterator())
        try:
            batch = next(self._tf_iter)
        except StopIteration:
            raise RuntimeError(f"epoch {epoch} ended before step {step} of "
                               f"{self.steps_per_epoch}") from None
        batch["epoch"] = epoch
        step += 1
        if step >= self.steps_per_epoch:
            epoch, step, self._tf_iter = epoch + 1, 0, None
        self._tf_pos = (epoch, step)
        return batch

    def _globalize(self, batch: dict) -> dict:
        if self.sharding is None:
            return batch
        out = {"epoch": batch["epoch"]}
        for k in ("image", "tokens"):
            sh = self.sharding[k] if isinstance(self.sharding, dict) else self.sharding
            local = batch[k]
            global_shape = (self.global_batch_size,) + local.shape[1:]
            out[k] = jax.make_array_from_process_local_data(sh, local, global_shape)
        return out

    def __next__(self) -> dict[str, Any]:
        # Keep `prefetch` global batches in flight (host->device copies overlap compute).
        while len(self._queue) <= self._prefetch:
            self._queue.append(self._globalize(self._next_host_batch()))
        batch = self._queue.popleft()
        self._step += 1
        self._normalize()
        return batch


def make_train_iterator(data_cfg, tokenizer, image_size: int, global_batch_size: int,
                        seed: int, sharding=None, state=None, *,
                        context_length: int | None = None, source: Source | None = None,
                        process_index: int | None = None,
                        process_count: int | None = None) -> TrainIterator:
    """The training iterator for ``config.data`` (see docs/data.md).

    Reads ``name, data_dir, manual_dir, files_path, images_dir, train_split,
    caption_mode, augment, shuffle_buffer`` (+ optional ``augment_scale_min``,
    ``random_flip``, ``context_length``, ``demo_config``, ``fail_on_bad_image``).
    ``sharding``: a ``jax.sharding.Sharding`` (or dict "image"/"tokens" -> Sharding) of
    the global batch; ``state``: a dict from ``get_state()`` to resume from.
    """
    source = source or get_source(data_cfg)
    split = source.check_split(config_get(data_cfg, "train_split", source.default_splits[0]),
                               "config.data.train_split")
    return TrainIterator(
        source, split, tokenizer, image_size, global_batch_size, seed,
        sharding=sharding, state=state,
        caption_mode=config_get(data_cfg, "caption_mode", "first"),
        augment=bool(config_get(data_cfg, "augment", False)),
        shuffle_buffer=int(config_get(data_cfg, "shuffle_buffer", 10_000)),
        context_length=int(context_length or config_get(data_cfg, "context_length", 77)),
        augment_scale_min=float(config_get(data_cfg, "augment_scale_min", 0.9)),
        random_flip=bool(config_get(data_cfg, "random_flip", True)),
        process_index=process_index, process_count=process_count)
