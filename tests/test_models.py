"""Flax CLIP towers against a float64 NumPy restatement of OpenAI's forward pass,
plus presets, configs, masking, pooling rules, bf16 and remat."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmm_jax.models import CLIP, CLIPConfig, get_config, init_params, presets

# ------------------------------------------------------------------ float64 reference


def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _act(x, name):
    if name == "quick_gelu":
        return x / (1 + np.exp(-1.702 * x))
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def _block(x, p, heads, causal, act, eps):
    n, L, w = x.shape
    hd = w // heads
    h = _ln(x, p["ln_1"], eps)
    qkv = h @ p["attn"]["in_proj"]["kernel"] + p["attn"]["in_proj"]["bias"]
    q, k, v = qkv[..., :w], qkv[..., w:2 * w], qkv[..., 2 * w:]
    out = np.zeros_like(h)
    for b in range(n):
        for hh in range(heads):
            s = slice(hh * hd, (hh + 1) * hd)
            a = q[b, :, s] @ k[b, :, s].T / math.sqrt(hd)
            if causal:
                a = np.where(np.tril(np.ones((L, L))) > 0, a, -np.inf)
            a = np.exp(a - a.max(-1, keepdims=True))
            out[b, :, s] = (a / a.sum(-1, keepdims=True)) @ v[b, :, s]
    x = x + out @ p["attn"]["out_proj"]["kernel"] + p["attn"]["out_proj"]["bias"]
    h = _ln(x, p["ln_2"], eps)
    h = _act(h @ p["mlp"]["c_fc"]["kernel"] + p["mlp"]["c_fc"]["bias"], act)
    return x + h @ p["mlp"]["c_proj"]["kernel"] + p["mlp"]["c_proj"]["bias"]


def ref_image(p, images, cfg):
    v = p["visual"]
    n, P = images.shape[0], cfg.patch_size
    g = cfg.image_size // P
    # explicit patch extraction: row-major patches, each flattened (row, col, channel)
    patches = images.reshape(n, g, P, g, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, -1)
    x = patches @ v["conv1"]["kernel"].reshape(-1, cfg.vision_width)
    x = np.concatenate([np.broadcast_to(v["class_embedding"], (n, 1, cfg.vision_width)), x], 1)
    x = _ln(x + v["positional_embedding"], v["ln_pre"], cfg.layer_norm_eps)
    for i in range(cfg.vision_layers):
        x = _block(x, v["transformer"][f"resblocks_{i}"], cfg.vision_heads, False, cfg.act,
                   cfg.layer_norm_eps)
    return _ln(x[:, 0], v["ln_post"], cfg.layer_norm_eps) @ v["proj"]


def ref_text(p, tokens, cfg):
    L = tokens.shape[1]
    x = p["token_embedding"]["embedding"][tokens] + p["positional_embedding"][:L]
    for i in range(cfg.text_layers):
        x = _block(x, p["transformer"][f"resblocks_{i}"], cfg.text_heads, True, cfg.act,
                   cfg.layer_norm_eps)
    x = _ln(x, p["ln_final"], cfg.layer_norm_eps)
    if cfg.eos_token_id is None:
        pos = [int(np.argmax(t)) for t in tokens]
    else:
        pos = [int(np.nonzero(t == cfg.eos_token_id)[0][0]) for t in tokens]
    return x[np.arange(len(tokens)), pos] @ p["text_projection"]


# ------------------------------------------------------------------ fixtures

def _random_params(cfg, seed=0):
    """Random float32 params of ``cfg``'s shapes (NumPy, no init compile): kernels with
    std 1/sqrt(fan_in), layer-norm scales around 1, everything else N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: CLIP(cfg).init(
        jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)),
        jnp.zeros((1, cfg.context_length), jnp.int32))["params"])

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['logit_scale']"):
            return np.float32(math.log(1 / 0.07))
        if name.endswith("['scale']"):
            return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) >= 2 else 100
        return (rng.standard_normal(s.shape) / math.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def _init_tree(cfg):
    return init_params(CLIP(cfg), jax.random.key(0))


def _tokens(rng, cfg, n=4, eot=None):
    """Random ids below the EOT id, an EOT at a random position, zero padding after it."""
    eot = cfg.vocab_size - 1 if eot is None else eot
    t = rng.integers(1, eot, (n, cfg.context_length))
    for i in range(n):
        j = rng.integers(1, cfg.context_length)
        t[i, j], t[i, j + 1:] = eot, 0
    return t.astype(np.int32)


ARCHS = {
    "tiny": get_config("tiny"),
    "other": get_config("tiny", act="gelu", patch_size=4, vision_width=48, vision_heads=2,
                        vision_layers=1, vision_mlp_dim=80, text_width=32, text_heads=2,
                        text_layers=3, text_mlp_dim=64, embed_dim=24, context_length=10,
                        vocab_size=120, eos_token_id=119),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_forward_matches_float64_reference(name):
    cfg = ARCHS[name]
    rng = np.random.default_rng(0)
    p = _random_params(cfg)
    model = CLIP(cfg)
    images = rng.standard_normal((3, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tokens = _tokens(rng, cfg)
    img, txt, scale = jax.jit(model.apply)({"params": p}, images, tokens)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    np.testing.assert_allclose(img, ref_image(p64, images.astype(np.float64), cfg), atol=2e-5)
    np.testing.assert_allclose(txt, ref_text(p64, tokens, cfg), atol=2e-5)
    assert float(scale) == float(p["logit_scale"])
    # the methods the rest of the library calls give what __call__ gives
    enc_i = jax.jit(lambda x: model.apply({"params": p}, x, method=model.encode_image))
    enc_t = jax.jit(lambda x: model.apply({"params": p}, x, method=model.encode_text))
    np.testing.assert_allclose(enc_i(images), img, atol=1e-6)
    np.testing.assert_allclose(enc_t(tokens), txt, atol=1e-6)


def test_text_is_causal_and_pooled_at_eot():
    cfg = ARCHS["other"]          # eos_token_id = 119: first occurrence
    rng = np.random.default_rng(1)
    p, model = _random_params(cfg), CLIP(cfg)
    enc = jax.jit(lambda t: model.apply({"params": p}, t, method=model.encode_text))
    t = _tokens(rng, cfg, n=2)
    t[:, 4], t[:, 5:] = 119, rng.integers(1, 119, (2, cfg.context_length - 5))
    base = np.asarray(enc(t))
    after = t.copy()
    after[:, 6:] = rng.integers(1, 119, (2, cfg.context_length - 6))
    after[:, 7] = 119                                   # a second EOT: ignored
    np.testing.assert_allclose(enc(after), base, atol=1e-6)
    before = t.copy()
    before[:, 2] = (before[:, 2] % 100) + 1
    assert np.abs(np.asarray(enc(before)) - base).max() > 1e-3
    # eos_token_id=None: the argmax position (OpenAI's rule), here the position of the max id
    cfg_arg = dataclasses.replace(cfg, eos_token_id=None)
    m2 = CLIP(cfg_arg)
    t2 = t.copy()
    t2[:, 7] = 119
    t2[:, 4] = 5
    got = jax.jit(lambda x: m2.apply({"params": p}, x, method=m2.encode_text))(t2)
    want = ref_text(jax.tree.map(lambda a: np.asarray(a, np.float64), p), t2, cfg_arg)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_bf16_compute_close_to_fp32_and_params_stay_fp32():
    cfg = get_config("tiny")
    p = _random_params(cfg)
    rng = np.random.default_rng(2)
    images = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    tokens = _tokens(rng, cfg)
    f32 = jax.jit(CLIP(cfg).apply)({"params": p}, images, tokens)
    bcfg = cfg.replace(dtype="bfloat16")
    pb = _init_tree(bcfg)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(pb))
    b16 = jax.jit(CLIP(bcfg).apply)({"params": p}, images, tokens)
    for a, b in zip(f32[:2], b16[:2]):
        assert b.dtype == jnp.float32
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        assert rel.max() < 3e-2, rel                      # bf16 has an 8-bit mantissa
        assert rel.max() > 0                              # the bf16 path really ran
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.999


def test_remat_same_values_and_gradients():
    cfg = get_config("tiny")
    p = _random_params(cfg)
    rng = np.random.default_rng(3)
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    tokens = _tokens(rng, cfg, n=2)

    def loss(params, c):
        i, t, s = CLIP(c).apply({"params": params}, images, tokens)
        return jnp.exp(s) * jnp.sum(i * t) + jnp.sum(i ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g0 = grad(p, cfg)
    g1 = grad(p, cfg.replace(remat=True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)
    remat_shapes = jax.eval_shape(lambda: init_params(CLIP(cfg.replace(remat=True)),
                                                      jax.random.key(0)))
    assert jax.tree.structure(remat_shapes) == jax.tree.structure(p)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_dot_product_attention_kernel_matches_reference_and_einsum(name):
    """model.attention="xla" (jax.nn.dot_product_attention) computes the float64
    reference's forward (causal text, full image attention) and einsum's gradients."""
    cfg = ARCHS[name]
    rng = np.random.default_rng(4)
    p = _random_params(cfg)
    images = rng.standard_normal((2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tokens = _tokens(rng, cfg, n=2)
    xcfg = cfg.replace(attention="xla")
    img, txt, _ = jax.jit(CLIP(xcfg).apply)({"params": p}, images, tokens)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    np.testing.assert_allclose(img, ref_image(p64, images.astype(np.float64), cfg), atol=2e-5)
    np.testing.assert_allclose(txt, ref_text(p64, tokens, cfg), atol=2e-5)

    def loss(params, c):
        i, t, s = CLIP(c).apply({"params": params}, images, tokens)
        return jnp.exp(s) * jnp.sum(i * t) + jnp.sum(i ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    for a, b in zip(jax.tree.leaves(grad(p, cfg)), jax.tree.leaves(grad(p, xcfg))):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a) + 1e-7  # fp32 rounding
    with pytest.raises(ValueError, match="attention='flash'"):
        cfg.replace(attention="flash")


def test_param_names_mirror_openai_layout():
    p = _init_tree(get_config("tiny"))
    assert set(p) == {"visual", "token_embedding", "positional_embedding", "transformer",
                      "ln_final", "text_projection", "logit_scale"}
    assert set(p["visual"]) == {"conv1", "class_embedding", "positional_embedding", "ln_pre",
                                "transformer", "ln_post", "proj"}
    blk = p["visual"]["transformer"]["resblocks_1"]
    assert set(blk) == {"ln_1", "attn", "ln_2", "mlp"}
    assert set(blk["mlp"]) == {"c_fc", "c_proj"}
    assert p["logit_scale"].shape == ()
    np.testing.assert_allclose(p["logit_scale"], math.log(1 / 0.07), rtol=1e-6)


# Published parameter counts of OpenAI's models (OpenCLIP's model-profile table).
@pytest.mark.parametrize("name,count", [("ViT-B/32", 151_277_313), ("ViT-B/16", 149_620_737),
                                        ("ViT-L/14", 427_616_513),
                                        ("ViT-L/14@336", 427_944_193)])
def test_presets_have_openai_sizes(name, count):
    cfg = get_config(name)
    shapes = jax.eval_shape(lambda: init_params(CLIP(cfg), jax.random.key(0)))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == count
    assert cfg.act == "quick_gelu" and cfg.context_length == 77 and cfg.vocab_size == 49408


def test_config_round_trip_overrides_and_errors():
    for name in presets.PRESETS:
        cfg = get_config(name)
        assert CLIPConfig.from_dict(cfg.to_dict()) == cfg
    assert get_config("demo", vocab_size=777).vocab_size == 777
    with pytest.raises(ValueError, match="unknown CLIP preset 'ViT-H'"):
        get_config("ViT-H")
    with pytest.raises(ValueError, match="vision_heads"):
        get_config("tiny", vision_heads=5)
    with pytest.raises(ValueError, match="act"):
        get_config("tiny", act="relu")
    with pytest.raises(ValueError, match="patch_size"):
        get_config("tiny", patch_size=5)
    with pytest.raises(ValueError, match="unknown keys.*'bogus'"):
        CLIPConfig.from_dict({**get_config("tiny").to_dict(), "bogus": 1})


def test_bad_input_shapes_are_named():
    cfg = get_config("tiny")
    model = CLIP(cfg)
    p = _random_params(cfg)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\).*\(2, 64, 64, 3\)"):
        model.apply({"params": p}, np.zeros((2, 64, 64, 3), np.float32), method=model.encode_image)
    with pytest.raises(ValueError, match=r"context_length=16.*\(2, 17\)"):
        model.apply({"params": p}, np.zeros((2, 17), np.int32), method=model.encode_text)
