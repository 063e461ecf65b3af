"""Pretrained CLIP checkpoints (Hugging Face, OpenAI, OpenCLIP) <-> Flax ``CLIP``.

    model, params = from_hf("clip-vit-base-patch32/")        # config.json + model.safetensors
    model, params = from_openai("ViT-B-32.pt")                # OpenAI TorchScript (needs torch)
    model, params = from_openclip("open_clip_model.safetensors")  # or .bin/.pt, or a hub dir
    to_hf(model, params, "exported/")                         # transformers.CLIPModel loads it

The architecture is read off the tensor shapes (head counts and activation from the
source's config file where it has one, else OpenAI's conventions: 64-wide heads,
quick_gelu). Hugging Face hub ids and OpenCLIP pretrained tags are fetched through
``gmm_jax.hub`` (huggingface_hub's cache). CLI (writes a model directory, see
``gmm_jax.pretrained``, or with ``--to hf`` a Hugging Face directory with the tokenizer
files):

    python -m gmm_jax.convert --src PATH --format {hf,openai,openclip} --out DIR
    python -m gmm_jax.convert --src openai/clip-vit-base-patch32 --format hf --out DIR
    python -m gmm_jax.convert --src ViT-B-32:laion2b_s34b_b79k --format openclip --out DIR
    python -m gmm_jax.convert --src RUN_WORKDIR --format run [--step N] --out DIR --to hf
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import zipfile
from typing import Any, Optional

import numpy as np

from gmm_jax import paths
from gmm_jax.models import CLIP, CLIPConfig, layouts

_OPENCLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                   "model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------- file reading

def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is installed in CI
        raise ImportError("reading PyTorch checkpoints (.pt/.bin/.pth) needs torch: "
                          "pip install torch (CPU build is enough), or convert the file "
                          "to .safetensors first") from e
    return torch


def _to_numpy(sd) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):                       # torch tensor (fp16/bf16 -> fp32)
            v = v.detach().cpu()
            v = v.float().numpy() if v.is_floating_point() else v.numpy()
        out[k] = np.asarray(v)
    return out


def _load_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load
    try:
        return load(data)
    except TypeError:                       # bfloat16 tensors: NumPy has no such dtype
        import jax.numpy as jnp
        from safetensors.flax import load as load_flax
        return {k: np.asarray(v.astype(jnp.float32)) for k, v in load_flax(data).items()}


def _is_torchscript(data: bytes) -> bool:
    """TorchScript archives are zip files with a ``constants.pkl`` (plain torch.save
    zips have none)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A flat ``{name: array}`` from .safetensors (NumPy only) or a torch file
    (.bin/.pt/.pth; TorchScript archives too). Unwraps a ``state_dict`` entry and
    strips DistributedDataParallel's ``module.`` prefixes."""
    if not paths.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    data = paths.read_bytes(path)  # a local or gs:// file alike
    if path.endswith(".safetensors"):
        sd = _load_safetensors(data)
    else:
        torch = _torch()
        if _is_torchscript(data):
            sd = torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()
        else:
            sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if hasattr(sd, "state_dict") and not isinstance(sd, dict):
            sd = sd.state_dict()
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return _to_numpy(sd)


def _count_layers(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _need(sd, names, source):
    missing = [n for n in names if n not in sd]
    if missing:
        raise ValueError(f"{source}: cannot infer the CLIP architecture, missing tensors: "
                         f"{', '.join(missing)} (keys start: {sorted(sd)[:8]})")


def _grid(num_positions: int, source: str, key: str) -> int:
    g = math.isqrt(num_positions - 1)
    if g * g != num_positions - 1:
        raise ValueError(f"{source}: {key} has {num_positions} rows, not 1 + a square grid")
    return g


def _heads(width: int, heads: Optional[int], what: str) -> int:
    heads = heads or max(width // 64, 1)               # OpenAI: 64-wide heads
    if width % heads:
        raise ValueError(f"{what}: width {width} is not divisible by {heads} heads")
    return heads


# ---------------------------------------------------------------- OpenAI / OpenCLIP

def infer_openai_config(sd, source="checkpoint", *, act="quick_gelu", vision_heads=None,
                        text_heads=None, eos_token_id=None, **extra) -> CLIPConfig:
    """Architecture of an OpenAI-layout ViT CLIP from its tensor shapes.

    ``eos_token_id=None``: features at the argmax of the ids, as OpenAI/OpenCLIP do."""
    _need(sd, ["visual.conv1.weight", "visual.positional_embedding", "text_projection",
               "token_embedding.weight", "positional_embedding",
               "visual.transformer.resblocks.0.mlp.c_fc.weight",
               "transformer.resblocks.0.mlp.c_fc.weight"], source)
    vw, _, p, _ = sd["visual.conv1.weight"].shape
    grid = _grid(sd["visual.positional_embedding"].shape[0], source, "visual.positional_embedding")
    vocab, tw = sd["token_embedding.weight"].shape
    return CLIPConfig(
        embed_dim=int(sd["text_projection"].shape[1]), act=act,
        image_size=int(p * grid), patch_size=int(p), vision_width=int(vw),
        vision_layers=_count_layers(sd, "visual.transformer.resblocks"),
        vision_heads=_heads(vw, vision_heads, f"{source} vision tower"),
        vision_mlp_dim=int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        vocab_size=int(vocab), context_length=int(sd["positional_embedding"].shape[0]),
        text_width=int(tw), text_layers=_count_layers(sd, "transformer.resblocks"),
        text_heads=_heads(tw, text_heads, f"{source} text tower"),
        text_mlp_dim=int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        eos_token_id=eos_token_id, **extra)


def _from_openai_sd(sd, source, progress, **kw):
    cfg = infer_openai_config(sd, source, **kw)
    layouts.check_state_dict(sd, layouts.openai_shapes(cfg), layouts.IGNORED_OPENAI, source)
    return CLIP(cfg), _as_jax(layouts.openai_to_params(sd, cfg, _bar(progress, source)))


def from_openai(path: str, progress: bool = False, **config_overrides):
    """OpenAI's released TorchScript ``.pt`` (or a plain state dict of that layout)
    -> ``(CLIP model, params)``. Needs torch. ``config_overrides``: e.g.
    ``dtype="bfloat16"``, ``remat=True``, ``vision_heads=..`` (default width // 64)."""
    _torch()
    return _from_openai_sd(load_state_dict(path), path, progress, **config_overrides)


_OPENCLIP_UNSUPPORTED = {  # config flags that change the computation without new tensors
    "vision_cfg": {"no_ln_pre": True, "final_ln_after_pool": True, "attentional_pool": True,
                   "timm_model_name": None, "pos_embed_type": None},
    "text_cfg": {"hf_model_name": None, "no_causal_mask": True, "final_ln_after_pool": True},
}


def _openclip_options(cfg_path: Optional[str]) -> dict[str, Any]:
    """act / head counts / pooling from an ``open_clip_config.json`` (hub layout)."""
    if not cfg_path or not paths.isfile(cfg_path):
        return {}
    mc = paths.read_json(cfg_path).get("model_cfg", {})
    vc, tc = mc.get("vision_cfg", {}), mc.get("text_cfg", {})
    for sub, flags in _OPENCLIP_UNSUPPORTED.items():
        for flag, bad in flags.items():
            val = mc.get(sub, {}).get(flag)
            if val is not None and (bad is None or val == bad):
                raise ValueError(f"{cfg_path}: {sub}.{flag}={val!r} is not supported "
                                 "(only OpenAI-style ViT CLIP towers are)")
    pool = tc.get("pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        raise ValueError(f"{cfg_path}: text_cfg.pool_type={pool!r} is not supported")
    opts: dict[str, Any] = {"act": "quick_gelu" if mc.get("quick_gelu") else "gelu"}
    if "width" in vc:
        opts["vision_heads"] = vc["width"] // vc.get("head_width", 64)
    if "heads" in tc:
        opts["text_heads"] = tc["heads"]
    if pool == "eos":
        opts["eos_token_id"] = tc.get("eos_id", 49407)
    return opts


def from_openclip(path: str, progress: bool = False, config_path: Optional[str] = None,
                  **config_overrides):
    """An OpenCLIP ViT state dict -> ``(CLIP model, params)``.

    ``path``: a .safetensors/.bin/.pt/.pth file (``state_dict`` wrappers and
    ``module.`` prefixes are handled) or a hub directory such as
    ``timm/vit_base_patch32_clip_224.openai`` (``open_clip_model.safetensors`` or
    ``open_clip_pytorch_model.bin`` beside ``open_clip_config.json``). The config
    file, if found, gives the activation and head counts; without one, OpenCLIP's
    default ``act="gelu"`` is assumed (pass ``act="quick_gelu"`` for OpenAI weights)."""
    if paths.isdir(path):
        found = [paths.join(path, f) for f in _OPENCLIP_FILES
                 if paths.isfile(paths.join(path, f))]
        if not found:
            raise FileNotFoundError(f"{path}: no OpenCLIP weights ({', '.join(_OPENCLIP_FILES)})")
        path = found[0]
    config_path = config_path or paths.join(paths.dirname(path), "open_clip_config.json")
    opts = _openclip_options(config_path)
    if not opts and "act" not in config_overrides:
        print(f"[gmm_jax.convert] no open_clip_config.json beside {path}: assuming act='gelu' "
              "(OpenCLIP's default; OpenAI-trained weights need act='quick_gelu')",
              file=sys.stderr)
        opts["act"] = "gelu"
    return _from_openai_sd(load_state_dict(path), path, progress, **{**opts, **config_overrides})


# ---------------------------------------------------------------- Hugging Face

def _load_hf_weights(path: str) -> dict[str, np.ndarray]:
    single = paths.join(path, "model.safetensors")
    index = single + ".index.json"
    if paths.isfile(single):
        return load_state_dict(single)
    if paths.isfile(index):                              # sharded checkpoint
        shards = sorted(set(paths.read_json(index)["weight_map"].values()))
        sd = {}
        for s in shards:
            sd.update(load_state_dict(paths.join(path, s)))
        return sd
    if paths.isfile(paths.join(path, "pytorch_model.bin")):
        return load_state_dict(paths.join(path, "pytorch_model.bin"))
    raise FileNotFoundError(f"{path}: no model.safetensors (or sharded index, or "
                            "pytorch_model.bin)")


def infer_hf_config(hf_cfg: dict, sd, source="config.json", **extra) -> CLIPConfig:
    """CLIPConfig from an HF ``config.json`` dict, sizes checked against the tensors."""
    # very old configs keep the values under *_config_dict, which then take precedence
    tc = {**(hf_cfg.get("text_config") or {}), **(hf_cfg.get("text_config_dict") or {})}
    vc = {**(hf_cfg.get("vision_config") or {}), **(hf_cfg.get("vision_config_dict") or {})}
    _need(sd, ["vision_model.embeddings.patch_embedding.weight",
               "vision_model.embeddings.position_embedding.weight",
               "text_model.embeddings.token_embedding.weight",
               "text_model.embeddings.position_embedding.weight", "text_projection.weight",
               "vision_model.encoder.layers.0.mlp.fc1.weight",
               "text_model.encoder.layers.0.mlp.fc1.weight"], source)
    acts = {tc.get("hidden_act", "quick_gelu"), vc.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ValueError(f"{source}: hidden_act {sorted(acts)} not supported "
                         "(one of quick_gelu, gelu for both towers)")
    eps = {tc.get("layer_norm_eps", 1e-5), vc.get("layer_norm_eps", 1e-5)}
    if len(eps) != 1:
        raise ValueError(f"{source}: text and vision layer_norm_eps differ: {sorted(eps)}")
    vw, _, p, _ = sd["vision_model.embeddings.patch_embedding.weight"].shape
    grid = _grid(sd["vision_model.embeddings.position_embedding.weight"].shape[0], source,
                 "vision_model.embeddings.position_embedding.weight")
    vocab, tw = sd["text_model.embeddings.token_embedding.weight"].shape
    eos = tc.get("eos_token_id", 49407)
    return CLIPConfig(
        embed_dim=int(sd["text_projection.weight"].shape[0]), act=acts.pop(),
        image_size=int(p * grid), patch_size=int(p), vision_width=int(vw),
        vision_layers=_count_layers(sd, "vision_model.encoder.layers"),
        vision_heads=_heads(vw, vc.get("num_attention_heads", 12), f"{source} vision_config"),
        vision_mlp_dim=int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        vocab_size=int(vocab),
        context_length=int(sd["text_model.embeddings.position_embedding.weight"].shape[0]),
        text_width=int(tw), text_layers=_count_layers(sd, "text_model.encoder.layers"),
        text_heads=_heads(tw, tc.get("num_attention_heads", 8), f"{source} text_config"),
        text_mlp_dim=int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        eos_token_id=None if eos == 2 or eos is None else int(eos),   # 2: legacy argmax rule
        layer_norm_eps=float(eps.pop()),
        logit_scale_init=float(hf_cfg.get("logit_scale_init_value", math.log(1 / 0.07))),
        **extra)


def from_hf(path: str, progress: bool = False, **config_overrides):
    """A Hugging Face CLIP directory (config.json + model.safetensors, read with
    NumPy) -> ``(CLIP model, params)``. ``config_overrides``: ``dtype``, ``remat``."""
    cfg_file = paths.join(path, "config.json")
    if not paths.isfile(cfg_file):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face CLIP directory)")
    hf_cfg = paths.read_json(cfg_file)
    if hf_cfg.get("model_type", "clip") != "clip":
        raise ValueError(f"{cfg_file}: model_type={hf_cfg.get('model_type')!r}, expected 'clip'")
    sd = _load_hf_weights(path)
    cfg = infer_hf_config(hf_cfg, sd, cfg_file, **config_overrides)
    layouts.check_state_dict(sd, layouts.hf_shapes(cfg), layouts.IGNORED_HF, path)
    oa = layouts.hf_to_openai(sd, cfg)
    return CLIP(cfg), _as_jax(layouts.openai_to_params(oa, cfg, _bar(progress, path)))


def hf_config_dict(cfg: CLIPConfig) -> dict:
    """The ``config.json`` of a ``transformers.CLIPModel`` with ``cfg``'s architecture."""
    # HF reads features at the first eos_token_id, or at the argmax of the ids when it is 2.
    eos = 2 if cfg.eos_token_id is None else cfg.eos_token_id
    common = dict(hidden_act=cfg.act, layer_norm_eps=cfg.layer_norm_eps, attention_dropout=0.0,
                  initializer_factor=1.0, initializer_range=0.02, projection_dim=cfg.embed_dim)
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "dtype": "float32",
        "projection_dim": cfg.embed_dim, "logit_scale_init_value": cfg.logit_scale_init,
        "initializer_factor": 1.0,
        "text_config": dict(common, model_type="clip_text_model", vocab_size=cfg.vocab_size,
                            hidden_size=cfg.text_width, intermediate_size=cfg.text_mlp_dim,
                            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                            max_position_embeddings=cfg.context_length, eos_token_id=eos,
                            bos_token_id=0 if eos == 2 else eos - 1, pad_token_id=1),
        "vision_config": dict(common, model_type="clip_vision_model", hidden_size=cfg.vision_width,
                              intermediate_size=cfg.vision_mlp_dim, num_channels=3,
                              num_hidden_layers=cfg.vision_layers,
                              num_attention_heads=cfg.vision_heads, image_size=cfg.image_size,
                              patch_size=cfg.patch_size),
    }


def to_hf(model: CLIP, params, out_dir: str) -> str:
    """Write ``params`` as a Hugging Face CLIP directory (config.json + model.safetensors,
    float32) that ``transformers.CLIPModel.from_pretrained(out_dir)`` loads. Returns out_dir."""
    from safetensors.numpy import save
    cfg = model.config
    oa = layouts.params_to_openai(params)
    layouts.check_state_dict(oa, layouts.openai_shapes(cfg), source="params")
    paths.write_json(paths.join(out_dir, "config.json"), hf_config_dict(cfg))
    # serialised in memory and written like config.json (same file mode, local or gs://)
    paths.write_bytes(paths.join(out_dir, "model.safetensors"),
                      save(layouts.openai_to_hf(oa, cfg), metadata={"format": "pt"}))
    return out_dir


# ---------------------------------------------------------------- helpers + CLI

def _as_jax(params):
    import jax
    import jax.numpy as jnp
    return jax.tree.map(jnp.asarray, params)


def _bar(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return lambda it: tqdm(it, desc=f"converting {paths.basename(desc)}",
                           unit="tensor")


def source_tokenizer(fmt: str, src: str, context_length: int, tokenizer: Optional[str] = None):
    """The tokenizer to ship with a conversion: ``tokenizer`` (a path) if given, else the
    source's own files (vocab.json + merges.txt or tokenizer.json beside it), else
    OpenAI's vocabulary, saying which on stderr."""
    from gmm_jax.tokenizer import Tokenizer
    from gmm_jax.tokenizer.files import has_hf_tokenizer
    if tokenizer:
        return Tokenizer.from_path(tokenizer, context_length=context_length)
    src_dir = src if paths.isdir(src) else paths.dirname(src)
    if fmt != "openai" and has_hf_tokenizer(src_dir):
        tok = Tokenizer.from_path(src_dir, context_length=context_length)
        print(f"[gmm_jax.convert] tokenizer: {tok.source} ({tok.vocab_size} tokens)",
              file=sys.stderr)
        return tok
    why = ("an OpenAI checkpoint" if fmt == "openai" else
           f"no tokenizer files (vocab.json + merges.txt, or tokenizer.json) in {src_dir}")
    print(f"[gmm_jax.convert] {why}: using OpenAI's CLIP vocabulary (pass --tokenizer "
          "for another)", file=sys.stderr)
    return Tokenizer.default(context_length=context_length)


def load_source(fmt: str, path: str, progress: bool = False, **config_overrides):
    """``(model, params)`` of a local checkpoint in format ``fmt`` (hf/openai/openclip)."""
    readers = {"hf": from_hf, "openai": from_openai, "openclip": from_openclip}
    if fmt not in readers:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {list(readers)}")
    return readers[fmt](path, progress=progress, **config_overrides)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gmm_jax.convert",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True, help="HF directory or hub id (ORG/NAME), OpenAI "
                    ".pt, OpenCLIP file or dir or pretrained tag (MODEL:TAG, hf-hub:ORG/NAME), "
                    "or a training run's workdir (--format run)")
    ap.add_argument("--format", required=True, choices=("hf", "openai", "openclip", "run"))
    ap.add_argument("--step", type=int, help="--format run: checkpoint step (default: latest)")
    ap.add_argument("--out", required=True, help="directory to write")
    ap.add_argument("--to", choices=("gmm", "hf"), default="gmm",
                    help="gmm: a gmm_jax model directory (default); hf: config.json + "
                    "model.safetensors + tokenizer files for transformers' CLIPModel")
    ap.add_argument("--tokenizer", help="HF tokenizer dir or bpe_simple_vocab_16e6.txt.gz "
                    "(default: the source's own files, else OpenAI's vocabulary)")
    ap.add_argument("--act", choices=("quick_gelu", "gelu"),
                    help="activation (openai/openclip; "
                    "default: quick_gelu / open_clip_config.json)")
    ap.add_argument("--vision-heads", type=int, help="default: from the config, else width // 64")
    ap.add_argument("--text-heads", type=int, help="default: from the config, else width // 64")
    args = ap.parse_args(argv)
    kw = {k: v for k, v in (("act", args.act), ("vision_heads", args.vision_heads),
                            ("text_heads", args.text_heads)) if v is not None}
    if args.step is not None and args.format != "run":
        ap.error("--step applies to --format run only")
    if args.format in ("hf", "openclip") and not paths.exists(args.src):
        from gmm_jax import hub  # a hub id / OpenCLIP tag: through huggingface_hub's cache
        if hub.hub_format(args.src):
            try:
                fetched = hub.fetch(args.src, args.format)
            except hub.HubError as e:
                print(f"{ap.prog}: error: {e}", file=sys.stderr)  # one line, no usage
                return 2
            print(f"[gmm_jax.convert] {args.src}: {fetched.path}", file=sys.stderr)
            args.src = fetched.path
            if args.format == "openclip":
                kw = {**fetched.options, **kw}  # --act still wins over the table
    from gmm_jax.pretrained import save_pretrained  # after the hub: its errors come fast
    tok = None
    if args.format == "run":
        if kw:
            ap.error("--act/--vision-heads/--text-heads do not apply to --format run")
        from gmm_jax import checkpointing  # logit_scale comes back as OpenAI's log(scale)
        try:
            model, params, tok, step, _ = checkpointing.load_run(args.src, step=args.step)
        except (FileNotFoundError, ValueError) as e:
            ap.error(f"--src {args.src!r}: {e}")
        print(f"[gmm_jax.convert] {args.src}: checkpoint of step {step}", file=sys.stderr)
    elif args.format == "hf":
        if kw:
            ap.error("--act/--vision-heads/--text-heads apply to openai/openclip only "
                     "(HF config.json states them)")
        model, params = from_hf(args.src, progress=True)
    else:
        model, params = load_source(args.format, args.src, progress=True, **kw)
    if tok is None or args.tokenizer:
        tok = source_tokenizer(args.format, args.src, model.config.context_length,
                               args.tokenizer)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model's embedding "
                         f"table only {model.config.vocab_size}")
    if args.to == "hf":
        to_hf(model, params, args.out)
        tok.save(args.out)
    else:
        save_pretrained(args.out, model.config, params, tok)
    print(f"wrote {args.out}: {json.dumps(model.config.to_dict())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
