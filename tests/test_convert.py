"""Converters against Hugging Face's PyTorch CLIPModel (random weights, two
architectures), OpenAI / OpenCLIP layouts written by the test's own mapping, the
error reports, and the CLI end to end."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as torch_save_file

from gmm_jax import convert
from gmm_jax.pretrained import load_pretrained
from gmm_jax.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # transformers/open_clip models, convert.py runs

CAPTIONS = ["a red square on a blue background", "two green circles", "a small yellow star",
            "the big purple triangle next to a circle", "an orange square and a red star"] * 4

# Two architectures differing in patch size, widths, heads, depth, activation and EOT rule.
ARCHS = {
    "A": dict(act="quick_gelu", vocab=600, eos=599, ctx=12, proj=24,
              vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, image_size=32, patch_size=8),
              text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=3)),
    "B": dict(act="gelu", vocab=530, eos=2, ctx=10, proj=40,     # eos 2: legacy argmax rule
              vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                          num_attention_heads=2, image_size=28, patch_size=7),
              text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2)),
}


def _hf_model(arch, seed=0):
    a = ARCHS[arch]
    cfg = transformers.CLIPConfig(
        text_config=dict(a["text"], vocab_size=a["vocab"], max_position_embeddings=a["ctx"],
                         eos_token_id=a["eos"], bos_token_id=max(a["eos"] - 1, 0),
                         hidden_act=a["act"]),
        vision_config=dict(a["vision"], hidden_act=a["act"]), projection_dim=a["proj"])
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg)
    with torch.no_grad():                  # perturb every weight: no zero biases / unit norms
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(0.05 * torch.randn_like(p))
            else:
                p.fill_(3.1)
    return model.eval()


def _inputs(arch, n=3, seed=0):
    a = ARCHS[arch]
    rng = np.random.default_rng(seed)
    size = a["vision"]["image_size"]
    images = rng.standard_normal((n, size, size, 3)).astype(np.float32)
    eot = a["vocab"] - 1                                      # OpenAI layout: EOT is the max id
    tokens = rng.integers(1, eot - 1, (n, a["ctx"]))
    for i in range(n):
        j = rng.integers(1, a["ctx"])
        tokens[i, j], tokens[i, j + 1:] = eot, 0
    return images, tokens.astype(np.int32)


def _torch_outputs(model, images, tokens):
    """Projected features and logits_per_image of a transformers CLIPModel."""
    px = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        fi = model.get_image_features(pixel_values=px)
        ft = model.get_text_features(input_ids=ids)
        logits = model(input_ids=ids, pixel_values=px).logits_per_image
    fi = getattr(fi, "pooler_output", fi)                     # v5 returns an output object
    ft = getattr(ft, "pooler_output", ft)
    return fi.numpy(), ft.numpy(), logits.numpy()


def _flax_outputs(model, params, images, tokens):
    f = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    img, txt, log_scale = (np.asarray(a, np.float64) for a in f(params, images, tokens))
    # independent of the library's losses: logits = exp(s) * cos(v_i, t_j)
    iv = img / np.linalg.norm(img, axis=1, keepdims=True)
    tv = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt, np.exp(log_scale) * iv @ tv.T


def _assert_same(got, want, atol=1e-5):
    """Absolute tolerance; features and logits here are O(1-10)."""
    for g, w, what in zip(got, want, ("image features", "text features", "logits")):
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=what)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """arch -> (arch, saved HF directory, eager torch model, inputs, torch outputs)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            model = _hf_model(arch)
            path = str(tmp_path_factory.mktemp(f"hf_{arch}"))
            model.save_pretrained(path)
            if arch == "A":          # a tokenizer that fits the model's vocabulary beside it
                Tokenizer.train(CAPTIONS, ARCHS["A"]["vocab"],
                                context_length=ARCHS["A"]["ctx"]).save(path)
            ref = transformers.CLIPModel.from_pretrained(path, attn_implementation="eager").eval()
            images, tokens = _inputs(arch)
            cache[arch] = (arch, path, ref, (images, tokens), _torch_outputs(ref, images, tokens))
        return cache[arch]
    return get


@pytest.fixture(params=sorted(ARCHS))
def hf(request, hf_cache):
    return hf_cache(request.param)


def test_from_hf_matches_transformers(hf):
    arch, path, _, (images, tokens), want = hf
    model, params = convert.from_hf(path)
    a = ARCHS[arch]
    assert model.config.act == a["act"] and model.config.patch_size == a["vision"]["patch_size"]
    assert model.config.eos_token_id == (None if a["eos"] == 2 else a["eos"])
    _assert_same(_flax_outputs(model, params, images, tokens), want)


def test_to_hf_round_trip_reloads_in_transformers(hf, tmp_path):
    arch, path, ref, (images, tokens), want = hf
    model, params = convert.from_hf(path)
    out = convert.to_hf(model, params, str(tmp_path / "export"))
    back = transformers.CLIPModel.from_pretrained(out, attn_implementation="eager").eval()
    sd_ref, sd_back = ref.state_dict(), back.state_dict()
    assert set(sd_ref) == set(sd_back)
    for k in sd_ref:
        torch.testing.assert_close(sd_back[k], sd_ref[k], rtol=0, atol=0, msg=k)
    _assert_same(_torch_outputs(back, images, tokens), want, atol=1e-6)


# ------------------------------------------------------------------ OpenAI / OpenCLIP layouts

def _to_openai_layout(hf_sd, n_text, n_vision):
    """The test's own HF -> OpenAI name map (written independently of gmm_jax)."""
    g = {k: v.detach().clone() for k, v in hf_sd.items()}
    sd = {
        "positional_embedding": g["text_model.embeddings.position_embedding.weight"],
        "token_embedding.weight": g["text_model.embeddings.token_embedding.weight"],
        "ln_final.weight": g["text_model.final_layer_norm.weight"],
        "ln_final.bias": g["text_model.final_layer_norm.bias"],
        "text_projection": g["text_projection.weight"].t().contiguous(),
        "logit_scale": g["logit_scale"],
        "visual.class_embedding": g["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": g["vision_model.embeddings.position_embedding.weight"],
        "visual.conv1.weight": g["vision_model.embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": g["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": g["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": g["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": g["vision_model.post_layernorm.bias"],
        "visual.proj": g["visual_projection.weight"].t().contiguous(),
    }
    for tower, dst, n in (("text_model", "transformer", n_text),
                          ("vision_model", "visual.transformer", n_vision)):
        for i in range(n):
            s, d = f"{tower}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            for kind in ("weight", "bias"):
                sd[d + "attn.in_proj_" + kind] = torch.cat(
                    [g[s + f"self_attn.{x}_proj.{kind}"] for x in ("q", "k", "v")], 0)
                sd[d + "attn.out_proj." + kind] = g[s + "self_attn.out_proj." + kind]
                sd[d + "ln_1." + kind] = g[s + "layer_norm1." + kind]
                sd[d + "ln_2." + kind] = g[s + "layer_norm2." + kind]
                sd[d + "mlp.c_fc." + kind] = g[s + "mlp.fc1." + kind]
                sd[d + "mlp.c_proj." + kind] = g[s + "mlp.fc2." + kind]
    return sd


def _openai_sd(ref, arch):
    a = ARCHS[arch]
    return _to_openai_layout(ref.state_dict(), a["text"]["num_hidden_layers"],
                             a["vision"]["num_hidden_layers"])


class _Holder(torch.nn.Module):
    """Holds tensors under dotted names, like OpenAI's scripted CLIP."""

    def forward(self, x):
        return x


def _scripted(sd, fp16=True):
    root = _Holder()
    for key, val in sd.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if not hasattr(m, name):
                m.add_module(name, _Holder())
            m = getattr(m, name)
        m.register_parameter(leaf, torch.nn.Parameter(val.half() if fp16 else val,
                                                      requires_grad=False))
    for meta in ("input_resolution", "context_length", "vocab_size"):   # as OpenAI's archives
        root.register_buffer(meta, torch.tensor(7))
    return torch.jit.script(root)


def test_from_openai_torchscript(hf, tmp_path):
    arch, _, ref, (images, tokens), _ = hf
    sd = _openai_sd(ref, arch)
    sd = {k: v.half().float() for k, v in sd.items()}      # OpenAI ships fp16 weights
    with torch.no_grad():
        ref16 = _hf_model(arch)
        ref16.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    want = _torch_outputs(ref16.eval(), images, tokens)
    path = str(tmp_path / "ViT-test.pt")
    _scripted(sd).save(path)
    a = ARCHS[arch]
    heads = dict(vision_heads=a["vision"]["num_attention_heads"],
                 text_heads=a["text"]["num_attention_heads"])
    model, params = convert.from_openai(path, act=a["act"], **heads)
    if a["eos"] != 2:      # OpenAI's rule is argmax; equal here because EOT is the largest id
        assert model.config.eos_token_id is None
    _assert_same(_flax_outputs(model, params, images, tokens), want)


def test_from_openclip_files_and_hub_dir(tmp_path):
    arch = "A"
    ref = _hf_model(arch)
    images, tokens = _inputs(arch)
    want = _torch_outputs(ref, images, tokens)
    sd = _openai_sd(ref, arch)
    a = ARCHS[arch]
    # (1) a training checkpoint: {"state_dict": {"module.<key>": tensor}, "epoch": ...}
    ckpt = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, ckpt)
    model, params = convert.from_openclip(str(ckpt), act="quick_gelu", vision_heads=4,
                                          text_heads=3)
    _assert_same(_flax_outputs(model, params, images, tokens), want)
    # (2) the hub layout (timm/vit_*_clip_*.openai): safetensors + open_clip_config.json
    hub = tmp_path / "hub"
    hub.mkdir()
    torch_save_file({k: v.contiguous() for k, v in sd.items()},
                    str(hub / "open_clip_model.safetensors"))
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": a["proj"], "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": a["ctx"], "vocab_size": a["vocab"], "width": 48,
                     "heads": 3, "layers": 2}}}))
    model, params = convert.from_openclip(str(hub))
    assert (model.config.act, model.config.vision_heads, model.config.text_heads) == \
        ("quick_gelu", 4, 3)
    _assert_same(_flax_outputs(model, params, images, tokens), want)
    # the activation is not in the tensors: the config file is what makes this right
    cfg = json.loads((hub / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = False
    (hub / "open_clip_config.json").write_text(json.dumps(cfg))
    model, params = convert.from_openclip(str(hub))
    assert model.config.act == "gelu"
    got = _flax_outputs(model, params, images, tokens)
    assert np.abs(got[0] - want[0]).max() > 1e-3


# ------------------------------------------------------------------ errors


def test_missing_extra_and_misshaped_tensors_are_named(hf_cache, tmp_path):
    arch, path, ref, _, _ = hf_cache("A")
    bad = tmp_path / "bad_hf"
    shutil.copytree(path, bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"]
    sd["vision_model.encoder.layers.0.self_attn.extra_gate"] = np.zeros(3, np.float32)
    sd["vision_model.post_layernorm.bias"] = np.zeros(7, np.float32)
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        convert.from_hf(str(bad))
    msg = str(e.value)
    assert "missing tensors (1): text_model.encoder.layers.1.mlp.fc2.bias" in msg
    assert "unexpected tensors (1): vision_model.encoder.layers.0.self_attn.extra_gate" in msg
    assert "vision_model.post_layernorm.bias: got (7,), expected (64,)" in msg

    osd = _openai_sd(ref, arch)
    del osd["visual.ln_post.weight"]
    osd["visual.attnpool.positional_embedding"] = torch.zeros(2)
    f = tmp_path / "bad_openclip.safetensors"
    torch_save_file({k: v.contiguous() for k, v in osd.items()}, str(f))
    with pytest.raises(ValueError, match=r"(?s)missing tensors \(1\): visual\.ln_post\.weight"
                                         r".*unexpected tensors \(1\): visual\.attnpool"):
        convert.from_openclip(str(f), act="quick_gelu")
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.from_hf(str(tmp_path))


# ------------------------------------------------------------------ CLI


def test_cli_end_to_end(hf_cache, tmp_path):
    arch, path, _, (images, tokens), want = hf_cache("A")       # A has tokenizer files
    out = tmp_path / "model_dir"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "gmm_jax.convert", "--src", path, "--format", "hf",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "converting" in r.stderr                          # the tqdm bar
    assert sorted(os.listdir(out)) == ["model_config.json", "params", "tokenizer"]
    model, params, tok = load_pretrained(str(out))
    _assert_same(_flax_outputs(model, params, images, tokens), want)
    src_tok = Tokenizer.from_path(path)
    assert tok.vocab_size == src_tok.vocab_size <= ARCHS["A"]["vocab"]
    np.testing.assert_array_equal(tok(CAPTIONS[:5]), src_tok(CAPTIONS[:5], context_length=12))
    assert tok(CAPTIONS[:2]).shape == (2, ARCHS["A"]["ctx"])


def test_cli_openai_in_process_with_default_tokenizer(tmp_path):
    ref = _hf_model("B")
    sd = _openai_sd(ref, "B")
    path = str(tmp_path / "B.pt")
    _scripted(sd, fp16=False).save(path)
    out = str(tmp_path / "dir")
    # the OpenAI vocabulary (49408) does not fit model B's 530-entry table: clear error
    with pytest.raises(ValueError, match="tokenizer has 49408 tokens"):
        convert.main(["--src", path, "--format", "openai", "--out", out, "--act", "gelu",
                      "--vision-heads", "2", "--text-heads", "2"])
    tok_dir = str(tmp_path / "tok")
    Tokenizer.train(CAPTIONS, ARCHS["B"]["vocab"]).save(tok_dir)
    assert convert.main(["--src", path, "--format", "openai", "--out", out, "--act", "gelu",
                         "--vision-heads", "2", "--text-heads", "2",
                         "--tokenizer", tok_dir]) == 0
    model, params, tok = load_pretrained(out)
    images, tokens = _inputs("B")
    _assert_same(_flax_outputs(model, params, images, tokens), _torch_outputs(ref, images, tokens))
    assert tok.vocab_size <= ARCHS["B"]["vocab"] and tok.context_length == ARCHS["B"]["ctx"]


# ------------------------------------------------------------------ tokenizer.json, file modes

TOKENIZER_TEXTS = CAPTIONS[:5] + ["A Red SQUARE, next to 3 circles!", "zebra crossing at night",
                                  "café ☕ naïve", "it's 1,000,000 -- wow..."]


def _custom_hf_tokenizer(seed=0):
    """A transformers CLIPTokenizer with a small vocabulary of its own: the 512 byte-level
    symbols, merges learned by the tests' brute-force trainer, ids shuffled (unlike
    OpenAI's layout). save_pretrained writes tokenizer.json only (transformers 5)."""
    from tokenizers.pre_tokenizers import ByteLevel

    from tests.test_tokenizer import _naive_bpe_train
    merges = _naive_bpe_train(CAPTIONS, 514 + 60)
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    tokens += list(dict.fromkeys(a + b for a, b in merges if a + b not in tokens))
    ids = np.random.default_rng(seed).permutation(len(tokens))
    vocab = {t: int(i) for t, i in zip(tokens, ids)}
    return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges])


def _model_dir_without_tokenizer(hf_cache, tmp_path):
    _, path, *_ = hf_cache("A")
    d = tmp_path / "hf_model"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(path, name), d / name)
    return d


def test_cli_reads_tokenizer_json(hf_cache, tmp_path, capsys):
    d = _model_dir_without_tokenizer(hf_cache, tmp_path)
    hf_tok = _custom_hf_tokenizer()
    hf_tok.save_pretrained(str(d))
    assert not (d / "vocab.json").exists() and (d / "tokenizer.json").exists()
    assert len(hf_tok) <= ARCHS["A"]["vocab"]
    out = tmp_path / "gmm"
    assert convert.main(["--src", str(d), "--format", "hf", "--out", str(out)]) == 0
    assert "tokenizer.json" in capsys.readouterr().err
    _, _, tok = load_pretrained(str(out))
    want = hf_tok(TOKENIZER_TEXTS, add_special_tokens=False)["input_ids"]
    assert [tok.encode(t) for t in TOKENIZER_TEXTS] == want
    assert max(len(w) for w in want) > 3
    L = ARCHS["A"]["ctx"]
    rows = tok(TOKENIZER_TEXTS)
    assert rows.shape == (len(TOKENIZER_TEXTS), L)
    for row, ids in zip(rows.tolist(), want):
        full = ([hf_tok.bos_token_id] + ids + [hf_tok.eos_token_id])[:L]
        full[-1] = hf_tok.eos_token_id if len(ids) + 2 > L else full[-1]
        assert row == full + [0] * (L - len(full))
    # exported back to transformers, the same ids come out of its tokenizer
    out_hf = tmp_path / "hf_export"
    assert convert.main(["--src", str(d), "--format", "hf", "--out", str(out_hf),
                         "--to", "hf"]) == 0
    back = transformers.CLIPTokenizer.from_pretrained(str(out_hf))
    assert back(TOKENIZER_TEXTS, add_special_tokens=False)["input_ids"] == want


def test_cli_falls_back_to_openai_vocabulary_only_without_tokenizer(hf_cache, tmp_path, capsys):
    d = _model_dir_without_tokenizer(hf_cache, tmp_path)
    with pytest.raises(ValueError, match="tokenizer has 49408 tokens"):   # model A: 600
        convert.main(["--src", str(d), "--format", "hf", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert f"no tokenizer files (vocab.json + merges.txt, or tokenizer.json) in {d}" in err
    assert "using OpenAI's CLIP vocabulary" in err


@pytest.mark.parametrize("edit,match", [
    (lambda tj: tj["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\S+"),
     r"pre_tokenizer: need one inverted Split on CLIP's regex"),
    (lambda tj: tj["model"].update(end_of_word_suffix=None), r"model.end_of_word_suffix=None"),
    (lambda tj: tj.update(normalizer=None), r"normalizer: no Lowercase"),
    (lambda tj: tj["model"].update(type="WordPiece"), r"model.type='WordPiece'"),
])
def test_non_clip_tokenizer_json_is_refused(hf_cache, tmp_path, edit, match):
    d = _model_dir_without_tokenizer(hf_cache, tmp_path)
    _custom_hf_tokenizer().save_pretrained(str(d))
    tj = json.loads((d / "tokenizer.json").read_text())
    edit(tj)
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match=r"tokenizer.json: not a CLIP byte-level BPE "
                                         r"tokenizer: .*" + match):
        convert.main(["--src", str(d), "--format", "hf", "--out", str(tmp_path / "o")])


def test_exported_safetensors_is_readable_like_other_files(hf_cache, tmp_path):
    _, path, *_ = hf_cache("A")
    model, params = convert.from_hf(path)
    out = convert.to_hf(model, params, str(tmp_path / "exp"))
    mask = os.umask(0o022)
    os.umask(mask)
    mode = lambda name: os.stat(os.path.join(out, name)).st_mode & 0o777  # noqa: E731
    assert mode("model.safetensors") == 0o666 & ~mask == mode("config.json")
