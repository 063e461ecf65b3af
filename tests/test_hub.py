"""Hub names as sources (gmm_jax.hub): a Hugging Face hub id and an OpenCLIP pretrained tag
resolved offline from a huggingface_hub cache the test fills itself (tiny random
transformers CLIPModels in the cache layout ``models--ORG--NAME/snapshots/REV`` +
``refs/main``), converted by the CLI and through ``config.init``; features checked against
the PyTorch models; the one-line error when neither the cache nor the network has it; the
OpenCLIP table checked against open_clip's own pretrained.py."""
import importlib.util
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from safetensors.torch import save_file as torch_save_file

from gmm_jax import convert, hub
from gmm_jax.pretrained import load_pretrained
from gmm_jax.tokenizer import Tokenizer
from tests.test_convert import (
    ARCHS,
    CAPTIONS,
    _assert_same,
    _flax_outputs,
    _hf_model,
    _inputs,
    _openai_sd,
    _torch_outputs,
)

pytestmark = pytest.mark.slow  # converter runs from a filled hub cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_ID = "tiny-org/tiny-clip"
OPENCLIP_NAME = "ViT-B-32:laion2b_s34b_b79k"
OPENCLIP_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
REV = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache, repo_id):
    """The snapshot folder of ``repo_id`` in huggingface_hub's cache layout (refs/main
    names the revision; files are plain files, which the hub library reads alike)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
    """An HF cache holding HF_ID (transformers' save_pretrained + a tokenizer) and the
    OpenCLIP repo of OPENCLIP_NAME (open_clip_model.safetensors + open_clip_config.json),
    with the reference PyTorch models."""
    cache = tmp_path_factory.mktemp("hf_cache")
    a = ARCHS["A"]
    ref = _hf_model("A")
    ref.save_pretrained(str(_snapshot(cache, HF_ID)))
    tok = Tokenizer.train(CAPTIONS, a["vocab"], context_length=a["ctx"])
    tok.save(str(_snapshot(cache, HF_ID)))
    # OpenCLIP: the same kind of model with gelu (what the table says laion2b_s34b_b79k
    # uses); the repo's config states head counts but, wrongly, quick_gelu: the table wins.
    oc_ref = _hf_model("B", seed=1)  # B: gelu
    b = ARCHS["B"]
    snap = _snapshot(cache, OPENCLIP_REPO)
    torch_save_file({k: v.contiguous() for k, v in _openai_sd(oc_ref, "B").items()},
                    str(snap / "open_clip_model.safetensors"))
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": b["proj"], "quick_gelu": True,
        "vision_cfg": {"width": 48, "head_width": 24},
        "text_cfg": {"width": 32, "heads": 2}}}))
    oc_tok = Tokenizer.train(CAPTIONS, b["vocab"], context_length=b["ctx"])
    oc_tok.save(str(snap))  # laion repos ship vocab.json + merges.txt beside the weights
    return {"cache": cache, "hf_ref": ref, "tok": tok, "oc_ref": oc_ref, "oc_tok": oc_tok}


@pytest.fixture
def offline_env(filled_cache, tmp_path, monkeypatch):
    env = {"HF_HUB_CACHE": str(filled_cache["cache"]), "HF_HUB_OFFLINE": "1",
           "GMM_JAX_CACHE": str(tmp_path / "gmm_cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _check_hf_model_dir(out, filled_cache):
    model, params, tok = load_pretrained(str(out))
    images, tokens = _inputs("A")
    _assert_same(_flax_outputs(model, params, images, tokens),
                 _torch_outputs(filled_cache["hf_ref"], images, tokens))
    want = filled_cache["tok"]
    assert tok.encoder == want.encoder  # the snapshot's tokenizer, not OpenAI's
    np.testing.assert_array_equal(tok(CAPTIONS[:3]), want(CAPTIONS[:3]))


def test_convert_cli_hub_id_offline_from_cache(filled_cache, offline_env, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, **offline_env, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "gmm_jax.convert", "--src", HF_ID,
                           "--format", "hf", "--out", str(out)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"/snapshots/{REV}" in proc.stderr  # said where the files came from
    _check_hf_model_dir(out, filled_cache)


def test_convert_cli_openclip_tag_offline_from_cache(filled_cache, offline_env, tmp_path):
    out = tmp_path / "oc"
    assert convert.main(["--src", OPENCLIP_NAME, "--format", "openclip", "--out", str(out)]) == 0
    model, params, tok = load_pretrained(str(out))
    assert (model.config.act, model.config.vision_heads, model.config.text_heads) == \
        ("gelu", 2, 2)  # act from the table, heads from the repo's open_clip_config.json
    images, tokens = _inputs("B")
    _assert_same(_flax_outputs(model, params, images, tokens),
                 _torch_outputs(filled_cache["oc_ref"], images, tokens))
    assert tok.encoder == filled_cache["oc_tok"].encoder


def test_quickgelu_name_and_explicit_act(filled_cache, offline_env, tmp_path):
    got = hub.fetch("ViT-B-32-quickgelu:laion2b_s34b_b79k", "openclip")
    assert got.options == {"act": "quick_gelu"} and got.revision == REV
    assert got.path == str(filled_cache["cache"] / f"models--{OPENCLIP_REPO.replace('/', '--')}"
                           / "snapshots" / REV / "open_clip_model.safetensors")
    # --act beats the table (the user knows better)
    out = tmp_path / "oc"
    assert convert.main(["--src", OPENCLIP_NAME, "--format", "openclip", "--act",
                         "quick_gelu", "--out", str(out)]) == 0
    assert load_pretrained(str(out))[0].config.act == "quick_gelu"


def test_hf_hub_prefix_reads_a_repo_without_the_table(filled_cache, offline_env):
    got = hub.fetch("hf-hub:" + OPENCLIP_REPO, "openclip")
    assert got.options == {} and got.path.endswith("open_clip_model.safetensors")
    model, _ = convert.from_openclip(got.path, **got.options)  # act from the repo's config
    assert model.config.act == "quick_gelu"


def _one_line_error(proc, name, cache):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr
    assert name in lines[0] and cache in lines[0]
    return lines[0]


@pytest.mark.parametrize("fmt,name", [("hf", "nobody/no-such-clip"),
                                      ("openclip", "ViT-B-16:laion2b_s34b_b88k")])
def test_not_cached_and_no_network_is_one_line_naming_both(tmp_path, fmt, name):
    cache = str(tmp_path / "empty_cache")
    base = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_CACHE=cache)
    base.pop("HF_HUB_OFFLINE", None)
    cmd = [sys.executable, "-m", "gmm_jax.convert", "--src", name, "--format", fmt,
           "--out", str(tmp_path / "out")]
    # (1) offline mode: no network call at all
    proc = subprocess.run(cmd, env=dict(base, HF_HUB_OFFLINE="1"), capture_output=True,
                          text=True, timeout=300)
    assert "HF_HUB_OFFLINE=1" in _one_line_error(proc, name, cache)
    # (2) online, but the hub is unreachable (a closed local port): fails fast, one line
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=dict(base, HF_ENDPOINT="http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=300)
    assert "download failed" in _one_line_error(proc, name, cache)
    assert time.monotonic() - t0 < 120
    assert not os.path.exists(tmp_path / "out")


def test_config_init_hub_name_is_converted_once(filled_cache, offline_env, tmp_path,
                                                monkeypatch):
    out = hub.resolve_model_dir(HF_ID)
    assert out == os.path.join(offline_env["GMM_JAX_CACHE"], "tiny-org--tiny-clip")
    _check_hf_model_dir(out, filled_cache)
    with open(os.path.join(out, hub.SOURCE_FILE)) as f:
        assert json.load(f)["revision"] == REV
    assert not [p for p in os.listdir(offline_env["GMM_JAX_CACHE"]) if ".tmp-" in p]

    def no_fetch(*a, **k):
        raise AssertionError("fetched again")
    monkeypatch.setattr(hub, "fetch", no_fetch)
    assert hub.resolve_model_dir(HF_ID) == out  # reused, nothing fetched or converted
    # train_lib's config.init goes through the same resolution
    from gmm_jax import train_lib
    from gmm_jax.configs import tiny
    config = tiny.get_config()
    config.init = HF_ID
    model, params, tok = train_lib.build_model_and_tokenizer(config, str(tmp_path / "run"))
    images, tokens = _inputs("A")
    _assert_same(_flax_outputs(model, params, images, tokens),
                 _torch_outputs(filled_cache["hf_ref"], images, tokens))
    assert tok.encoder == filled_cache["tok"].encoder


def test_config_init_unknown_name_names_init_and_cache(offline_env, tmp_path):
    with pytest.raises(hub.HubError) as e:
        hub.resolve_model_dir("nobody/missing-clip")
    msg = str(e.value)
    assert "\n" not in msg and "config.init='nobody/missing-clip'" in msg
    assert offline_env["HF_HUB_CACHE"] in msg


def test_paths_are_not_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "b32").mkdir(parents=True)
    for path in ("models/b32", str(tmp_path / "models"), "gs://bucket/models/b32", "", None):
        assert hub.resolve_model_dir(path) == path
        assert hub.hub_format(path or "") is None
    assert hub.hub_format("openai/clip-vit-base-patch32") == "hf"
    assert hub.hub_format("ViT-L-14:openai") == "openclip"
    assert hub.hub_format("hf-hub:timm/vit_base_patch32_clip_224.openai") == "openclip"
    # OpenCLIP's tag spelling: case and '-' vs '_' do not matter
    assert hub.parse_openclip_name("ViT-B-32:LAION2B-s34b-b79k") == \
        (OPENCLIP_REPO, OPENCLIP_NAME, False)
    assert hub.hub_format("a/b/c") is None and hub.hub_format("../x") is None
    with pytest.raises(hub.HubError, match="unknown model 'ViT-Q-99'.*ViT-B-32"):
        hub.parse_openclip_name("ViT-Q-99:openai")
    with pytest.raises(hub.HubError, match="unknown tag 'laion5b' for ViT-B-32.*laion2b_e16"):
        hub.parse_openclip_name("ViT-B-32:laion5b")


def _open_clip_pretrained_table():
    """open_clip's own tag table, its module run in isolation (importing open_clip needs
    torchvision); only its two sibling modules are provided."""
    spec = importlib.util.find_spec("open_clip")
    loc = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("_oc_ref")
    pkg.__path__ = [loc]
    saved = {k: sys.modules.get(k) for k in
             ("_oc_ref", "_oc_ref.constants", "_oc_ref.version", "_oc_ref.pretrained")}
    sys.modules["_oc_ref"] = pkg
    try:
        for name in ("constants", "version", "pretrained"):
            s = importlib.util.spec_from_file_location(f"_oc_ref.{name}",
                                                       os.path.join(loc, f"{name}.py"))
            mod = importlib.util.module_from_spec(s)
            sys.modules[f"_oc_ref.{name}"] = mod
            s.loader.exec_module(mod)
        return mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)


def test_openclip_table_agrees_with_open_clip():
    ref = _open_clip_pretrained_table()
    for model, tags in hub.OPENCLIP_TAGS.items():
        for tag, (repo, quick) in tags.items():
            cfg = ref.get_pretrained_cfg(model, tag)
            assert cfg, (model, tag)
            assert cfg["hf_hub"].rstrip("/") == repo, (model, tag)
            assert bool(cfg.get("quick_gelu", False)) == quick, (model, tag)
            # -quickgelu names exist in open_clip exactly for the quick_gelu tags
            assert ref.is_pretrained_cfg(model + "-quickgelu", tag) == quick, (model, tag)
