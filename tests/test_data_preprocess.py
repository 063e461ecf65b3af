"""CLIP preprocessing vs a NumPy/PIL restatement of OpenAI's torchvision transform."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gmm_jax.data import preprocess as pp

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def reference_clip_transform(img: np.ndarray, size: int) -> np.ndarray:
    """OpenAI CLIP's Resize(size, BICUBIC) -> CenterCrop(size) -> ToTensor -> Normalize,
    restated with PIL and float64 NumPy (torchvision's size and offset rules)."""
    im = Image.fromarray(img)
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nh, nw = size, int(size * w / h)
    im = im.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    a = np.asarray(im, np.float64)[top:top + size, left:left + size] / 255.0
    return (a - MEAN) / STD


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(x / (5.0 + c) + c) * np.cos(y / 4.0) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _levels(a, b):
    """|a - b| of normalised images in uint8 levels."""
    return np.abs(a - b) * STD * 255


@pytest.mark.parametrize("h,w,size", [(64, 64, 32), (100, 151, 32), (301, 217, 224),
                                      (20, 33, 32), (225, 301, 224), (32, 32, 32), (40, 90, 48)])
def test_clip_transform_matches_pil_reference(h, w, size):
    img = _image(h, w, h * w)
    got = pp.clip_transform(tf.constant(img), size).numpy()
    want = reference_clip_transform(img, size)
    assert got.shape == want.shape == (size, size, 3) and got.dtype == np.float32
    # PIL resamples in two 8-bit passes with fixed-point weights, TF in one float pass:
    # a few pixels differ by up to 3 uint8 levels, on average far below one level.
    diff_levels = _levels(got, want)
    assert diff_levels.max() <= 3.01
    assert diff_levels.mean() < 0.3


def test_clip_transform_from_encoded_jpeg_and_grey_png():
    import io
    img = _image(50, 70, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    pil = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float64)
    dec = pp.decode_image(tf.constant(buf.getvalue())).numpy()
    assert dec.shape == (50, 70, 3) and dec.dtype == np.uint8
    assert np.array_equal(dec, pil)  # accurate IDCT: the same pixels as PIL
    got = pp.clip_transform(tf.constant(dec), 32).numpy()
    assert _levels(got, reference_clip_transform(dec, 32)).max() <= 3.01
    buf = io.BytesIO()
    Image.fromarray(img[..., 0]).save(buf, format="PNG")  # greyscale -> 3 channels
    grey = pp.decode_image(tf.constant(buf.getvalue())).numpy()
    assert grey.shape == (50, 70, 3) and (grey[..., 0] == img[..., 0]).all()
    assert (grey[..., 1] == grey[..., 2]).all()


def test_augment_is_deterministic_and_seeded():
    img = tf.constant(_image(80, 100, 7))
    a = pp.augment_transform(img, 32, tf.constant([1, 2])).numpy()
    b = pp.augment_transform(img, 32, tf.constant([1, 2])).numpy()
    c = pp.augment_transform(img, 32, tf.constant([1, 3])).numpy()
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_augment_full_crop_without_flip_is_plain_resize():
    # area range [1, 1] on a square image: the crop is the whole image.
    img = _image(64, 64, 9)
    got = pp.augment_transform(tf.constant(img), 32, tf.constant([4, 5]), scale_min=1.0,
                               random_flip=False).numpy()
    want = reference_clip_transform(img, 32)
    assert _levels(got, want).max() <= 3.01 and _levels(got, want).mean() < 0.3


def test_augment_flip_mirrors():
    img = _image(64, 64, 11)
    seen = set()
    for s in range(12):
        out = pp.augment_transform(tf.constant(img), 32, tf.constant([s, 0]), scale_min=1.0,
                                   random_flip=True).numpy()
        plain = reference_clip_transform(img, 32)
        if np.abs(out - plain).max() < 0.02:
            seen.add("same")
        elif np.abs(out - plain[:, ::-1]).max() < 0.02:
            seen.add("flipped")
        else:
            raise AssertionError("output is neither the image nor its mirror")
    assert seen == {"same", "flipped"}
