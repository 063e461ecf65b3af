"""One train step of the project against Hugging Face's PyTorch ``CLIPModel``.

A tiny random ``transformers.CLIPModel`` is saved and converted (``convert.from_hf``).
The project's jitted step (SGD, lr = 1, so ``params - new_params`` is the gradient)
runs on a fixed batch; the same batch goes through the PyTorch model, with the loss
restated in PyTorch from docs/method.md, and ``torch.autograd`` gives the reference
gradient. The PyTorch gradients are mapped to the project's layout by the converter's
own (linear) tensor maps and compared leaf by leaf, logit scale included.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gmm_jax import convert, train_lib, train_state  # noqa: E402
from gmm_jax.models import layouts  # noqa: E402
from tests.train_step_setup import (  # noqa: E402
    assert_grads_close,
    build_step,
    flat_leaves,
    sgd_step_grads,
)

pytestmark = pytest.mark.slow  # PyTorch reference, two compiled steps
N, SIZE, CTX, VOCAB = 8, 16, 12, 300
M2_SCALE = 1 / 0.07


def _hf_model(seed=0):
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=CTX,
                         eos_token_id=2, bos_token_id=1, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=SIZE, patch_size=4,
                           hidden_act="quick_gelu"),
        projection_dim=24)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg)
    with torch.no_grad():  # every weight perturbed: no zero biases or unit norms
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(2.7)
            else:
                p.add_(0.05 * torch.randn_like(p))
    return model.float().eval()


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((N, SIZE, SIZE, 3)).astype(np.float32)
    tokens = np.zeros((N, CTX), np.int32)
    for i in range(N):  # eos 2: features at the argmax id (OpenAI's EOT is the largest)
        length = int(rng.integers(3, CTX - 1))
        tokens[i, 0] = VOCAB - 2
        tokens[i, 1:length] = rng.integers(3, VOCAB - 2, size=length - 1)
        tokens[i, length] = VOCAB - 1
    return images, tokens


def _torch_slerp(a, b, lam):
    theta = torch.arccos(torch.clamp((a * b).sum(1, keepdim=True), -1.0, 1.0))
    return (torch.sin(lam * theta) * a + torch.sin((1 - lam) * theta) * b) / torch.sin(theta)


def _torch_loss(v, t, scale, method, lam, c_m2):
    """docs/method.md's clip_loss (+ c_m2 * m2mix_loss at M2_SCALE, epoch 0)."""
    labels = torch.arange(N)
    ce = torch.nn.functional.cross_entropy
    logits = scale * v @ t.T
    total = (ce(logits, labels) + ce(logits.T, labels)) / 2
    if method == "m2mix":
        m = _torch_slerp(v, t, lam)
        eye = torch.eye(N, dtype=torch.bool)
        pos = (v * t).sum(1)
        a = torch.where(eye, torch.diag(pos), v @ m.T)
        b = torch.where(eye, torch.diag(pos), t @ m.T)
        total = total + c_m2 * (ce(M2_SCALE * a, labels) + ce(M2_SCALE * b, labels))
    return total


def _project_step(model_dir, method, c_m2, images, tokens):
    model, params = convert.from_hf(str(model_dir))
    cfg = train_lib.default_config().loss
    cfg.method, cfg.temperature, cfg.c_m2, cfg.m2_scale = method, "learned", c_m2, M2_SCALE
    mesh = train_state.make_mesh(("data",), (1,), jax.devices()[:1])
    step, state = build_step(model, params, cfg, mesh, seed=0)
    grads, metrics = sgd_step_grads(step, state, {"image": images, "tokens": tokens},
                                    np.float64)
    return model.config, float(metrics["loss/total"]), grads, metrics


@pytest.mark.parametrize("method,c_m2", [("clip", 0.0), ("m2mix", 0.5)])
def test_train_step_gradients_equal_hf_clipmodel(tmp_path, method, c_m2):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    images, tokens = _batch()
    cfg, loss, grads, metrics = _project_step(tmp_path / "hf", method, c_m2, images, tokens)
    lam = float(metrics["lam_m2"]) if method == "m2mix" else 0.0  # the step's own draw

    hf.zero_grad()
    px = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ids = torch.from_numpy(tokens.astype(np.int64))
    v = hf.get_image_features(pixel_values=px)
    t = hf.get_text_features(input_ids=ids)
    v, t = getattr(v, "pooler_output", v), getattr(t, "pooler_output", t)
    v = v / v.norm(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    want_loss = _torch_loss(v, t, hf.logit_scale.exp(), method, lam, c_m2)
    want_loss.backward()
    want_value = float(want_loss.detach())
    assert abs(loss - want_value) <= 1e-5 * max(1.0, abs(want_value))

    torch_grads = {name: (p.grad.double().numpy() if p.grad is not None
                          else np.zeros(tuple(p.shape)))
                   for name, p in hf.named_parameters()}
    want = layouts.openai_to_params(layouts.hf_to_openai(torch_grads, cfg), cfg)
    want, got = flat_leaves(want), flat_leaves(grads)
    assert_grads_close(want, got, f"{method}: project step vs HF CLIPModel + torch loss")
    # the comparison means something: the gradients are not all (near) zero
    assert max(float(np.max(np.abs(g))) for g in want.values()) > 1e-3
    assert abs(float(np.asarray(want["['logit_scale']"]))) > 1e-6
