"""OpenAI CLIP image preprocessing and training augmentation in TensorFlow (docs/method.md, the authors' set-up).

All functions take one image ``uint8 (H, W, 3)`` (or its encoded bytes) and return
``float32 (S, S, 3)`` normalised with CLIP's mean/std. They run inside ``tf.data`` maps,
so they use TF ops only; random ops are *stateless* (explicit seeds) so that a parallel
map gives the same result for the same (seed, epoch, index) whatever the thread order.
"""  # noqa: E501 (the docstring summary is kept on one line)
from __future__ import annotations

import tensorflow as tf

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes (scalar string) -> uint8 (H, W, 3).

    JPEGs use the accurate integer IDCT: pixel-identical to PIL (the reference's
    loader); TF's default fast IDCT is off by ~2 levels on average.
    """
    img = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    img.set_shape([None, None, 3])
    return img


def _resize_uint8(img: tf.Tensor, height, width) -> tf.Tensor:
    """Bicubic, antialiased resize; rounded and clipped to the uint8 range as PIL's
    ``Image.resize(BICUBIC)`` on an 8-bit image does (returns float32 in [0, 255])."""
    out = tf.image.resize(tf.cast(img, tf.float32), tf.stack([height, width]),
                          method="bicubic", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def normalize(img255: tf.Tensor) -> tf.Tensor:
    """float [0, 255] (..., 3) -> (x/255 - mean) / std."""
    mean = tf.constant(CLIP_MEAN, tf.float32)
    std = tf.constant(CLIP_STD, tf.float32)
    return (tf.cast(img255, tf.float32) / 255.0 - mean) / std


def resize_short_side_size(height, width, size: int):
    """torchvision ``Resize(size)`` output size: the short side becomes ``size``, the long
    side ``int(size * long / short)`` (truncated, computed in float64 as Python does)."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    s = tf.constant(float(size), tf.float64)
    new_h = tf.where(h <= w, s, tf.floor(s * h / w))
    new_w = tf.where(h <= w, tf.floor(s * w / h), s)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def clip_transform(img: tf.Tensor, image_size: int) -> tf.Tensor:
    """OpenAI CLIP eval transform: uint8 (H, W, 3) -> float32 (S, S, 3).

    Bicubic resize of the short side to S, centre crop S x S (torchvision's offsets:
    ``round((new - S) / 2)`` with round-half-to-even), then mean/std normalisation.
    """
    shape = tf.shape(img)
    new_h, new_w = resize_short_side_size(shape[0], shape[1], image_size)
    resized = _resize_uint8(img, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    crop = resized[top:top + image_size, left:left + image_size, :]
    crop = tf.ensure_shape(crop, [image_size, image_size, 3])
    return normalize(crop)


def augment_transform(img: tf.Tensor, image_size: int, seed: tf.Tensor,
                      scale_min: float = 0.9, random_flip: bool = True) -> tf.Tensor:
    """Training transform: random resized crop (area in [scale_min, 1], aspect ratio in
    [3/4, 4/3], as OpenCLIP's default) to S x S, optional horizontal flip, normalise.

    Args:
      img: uint8 (H, W, 3).
      seed: int32/int64 (2,) stateless seed (derive it from (seed, epoch, index)).
    Returns:
      float32 (S, S, 3).
    """
    seed = tf.cast(seed, tf.int64)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(img), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(scale_min, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(img, begin, size)
    out = _resize_uint8(crop, image_size, image_size)
    if random_flip:
        flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        out = tf.image.stateless_random_flip_left_right(out, flip_seed)
    out = tf.ensure_shape(out, [image_size, image_size, 3])
    return normalize(out)
