"""State-dict layouts of CLIP checkpoints and the maps between them.

Three layouts, all flat ``{name: array}`` in PyTorch conventions except the last:
  * OpenAI (also OpenCLIP's ViT models): ``visual.conv1.weight``,
    ``transformer.resblocks.3.attn.in_proj_weight`` ... The hub of the maps.
  * Hugging Face ``CLIPModel``: ``vision_model.encoder.layers.3.self_attn.q_proj.weight``
    ... (q/k/v separate, projections stored as ``Linear`` (out, in)).
  * Our Flax tree: OpenAI names with ``resblocks_{i}``, ``kernel`` = weight.T,
    ``scale`` for layer-norm weights, ``embedding`` for the token table.

Every map is a table built from a ``CLIPConfig``, so the expected names and shapes
of a checkpoint are known before reading it and mismatches are reported by name.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from flax import traverse_util

from .config import CLIPConfig

# Keys some files carry that hold no weights: metadata scalars in OpenAI's TorchScript
# archives, position-id buffers in older transformers checkpoints.
IGNORED_OPENAI = frozenset({"input_resolution", "context_length", "vocab_size"})
IGNORED_HF = frozenset({"text_model.embeddings.position_ids",
                        "vision_model.embeddings.position_ids"})

_LN = ("ln_1", "ln_2", "ln_pre", "ln_post", "ln_final")


def _block_shapes(prefix: str, width: int, mlp: int) -> dict[str, tuple]:
    return {
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width),
        f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_1.weight": (width,), f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (mlp, width), f"{prefix}.mlp.c_fc.bias": (mlp,),
        f"{prefix}.mlp.c_proj.weight": (width, mlp), f"{prefix}.mlp.c_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,), f"{prefix}.ln_2.bias": (width,),
    }


def openai_shapes(cfg: CLIPConfig) -> dict[str, tuple]:
    """Every tensor of an OpenAI-layout ViT CLIP state dict -> its shape."""
    vw, tw, p = cfg.vision_width, cfg.text_width, cfg.patch_size
    shapes = {
        "visual.conv1.weight": (vw, 3, p, p),
        "visual.class_embedding": (vw,),
        "visual.positional_embedding": (cfg.grid_size ** 2 + 1, vw),
        "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,),
        "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
        "visual.proj": (vw, cfg.embed_dim),
        "token_embedding.weight": (cfg.vocab_size, tw),
        "positional_embedding": (cfg.context_length, tw),
        "ln_final.weight": (tw,), "ln_final.bias": (tw,),
        "text_projection": (tw, cfg.embed_dim),
        "logit_scale": (),
    }
    for i in range(cfg.vision_layers):
        shapes.update(_block_shapes(f"visual.transformer.resblocks.{i}", vw, cfg.vision_mlp_dim))
    for i in range(cfg.text_layers):
        shapes.update(_block_shapes(f"transformer.resblocks.{i}", tw, cfg.text_mlp_dim))
    return shapes


def check_state_dict(sd, expected: dict[str, tuple], ignored: Iterable[str] = (),
                     source: str = "checkpoint") -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped tensor."""
    ignored = set(ignored)
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected and k not in ignored)
    misshaped = sorted(f"{k}: got {tuple(np.shape(sd[k]))}, expected {expected[k]}"
                       for k in expected if k in sd and tuple(np.shape(sd[k])) != expected[k])
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the CLIP layout it was read as:"]
        for title, items in (("missing tensors", missing), ("unexpected tensors", unexpected),
                             ("mis-shaped tensors", misshaped)):
            if items:
                shown = items[:40] + (
                    [f"... and {len(items) - 40} more"] if len(items) > 40 else [])
                parts.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        raise ValueError("\n".join(parts))


# ---------------------------------------------------------------- Flax <-> OpenAI

def _openai_name(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
    """Flax param path -> (OpenAI name, value in PyTorch orientation)."""
    parts: list[str] = []
    for p in path:
        parts.extend(p.split("_", 1) if p.startswith("resblocks_") else [p])
    *head, leaf = parts
    if head and head[-1] == "in_proj":                    # fused q|k|v of nn.MultiheadAttention
        name = ".".join(head[:-1] + [f"in_proj_{'weight' if leaf == 'kernel' else 'bias'}"])
        return name, (value.T if leaf == "kernel" else value)
    if leaf == "kernel":
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        leaf = "weight"
    elif leaf in ("scale", "embedding"):
        leaf = "weight"
    return ".".join(head + [leaf]), value


def _flax_path(name: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """OpenAI name -> (Flax param path, value in Flax orientation); inverse of the above."""
    parts = name.split(".")
    path: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] == "resblocks":
            path.append(f"resblocks_{parts[i + 1]}")
            i += 2
        else:
            path.append(parts[i])
            i += 1
    *head, leaf = path
    if leaf in ("in_proj_weight", "in_proj_bias"):
        is_w = leaf.endswith("weight")
        return tuple(head + ["in_proj", "kernel" if is_w else "bias"]), (value.T if is_w else value)
    if leaf == "weight":
        if head[-1] in _LN:
            return tuple(head + ["scale"]), value
        if head[-1] == "token_embedding":
            return tuple(head + ["embedding"]), value
        return tuple(head + ["kernel"]), (value.transpose(2, 3, 1, 0) if value.ndim == 4
                                          else value.T)
    return tuple(path), value


def params_to_openai(params) -> dict[str, np.ndarray]:
    """Flax CLIP params -> OpenAI-layout state dict (float32 NumPy)."""
    flat = traverse_util.flatten_dict(params)
    return dict(_openai_name(k, np.asarray(v, np.float32)) for k, v in flat.items())


def openai_to_params(sd, cfg: CLIPConfig, progress=None):
    """OpenAI-layout state dict -> Flax params (nested dict of float32 NumPy).

    ``sd`` must already pass ``check_state_dict(sd, openai_shapes(cfg))``;
    ``progress``: optional callable wrapping the iteration (e.g. tqdm).
    """
    names = list(openai_shapes(cfg))
    it = progress(names) if progress else names
    flat = {}
    for name in it:
        path, value = _flax_path(name, np.asarray(sd[name], np.float32))
        flat[path] = np.array(value, np.float32, order="C")  # ascontiguousarray makes 0-d 1-d
    return traverse_util.unflatten_dict(flat)


# ---------------------------------------------------------------- HF <-> OpenAI

def _hf_table(cfg: CLIPConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """(OpenAI name, HF names, how) with how in copy | T (transpose) | qkv (concat)."""
    t = [("logit_scale", ("logit_scale",), "copy"),
         ("token_embedding.weight", ("text_model.embeddings.token_embedding.weight",), "copy"),
         ("positional_embedding", ("text_model.embeddings.position_embedding.weight",), "copy"),
         ("text_projection", ("text_projection.weight",), "T"),
         ("visual.class_embedding", ("vision_model.embeddings.class_embedding",), "copy"),
         ("visual.conv1.weight", ("vision_model.embeddings.patch_embedding.weight",), "copy"),
         ("visual.positional_embedding",
          ("vision_model.embeddings.position_embedding.weight",), "copy"),
         ("visual.proj", ("visual_projection.weight",), "T")]
    for wb in ("weight", "bias"):
        t += [(f"ln_final.{wb}", (f"text_model.final_layer_norm.{wb}",), "copy"),
              (f"visual.ln_pre.{wb}", (f"vision_model.pre_layrnorm.{wb}",), "copy"),
              (f"visual.ln_post.{wb}", (f"vision_model.post_layernorm.{wb}",), "copy")]
    for ours, hf, layers in (("transformer.resblocks", "text_model.encoder.layers",
                              cfg.text_layers),
                             ("visual.transformer.resblocks", "vision_model.encoder.layers",
                              cfg.vision_layers)):
        for i in range(layers):
            o, h = f"{ours}.{i}", f"{hf}.{i}"
            for wb in ("weight", "bias"):
                t += [(f"{o}.attn.in_proj_{wb}",
                       tuple(f"{h}.self_attn.{x}_proj.{wb}" for x in "qkv"), "qkv"),
                      (f"{o}.attn.out_proj.{wb}", (f"{h}.self_attn.out_proj.{wb}",), "copy"),
                      (f"{o}.ln_1.{wb}", (f"{h}.layer_norm1.{wb}",), "copy"),
                      (f"{o}.ln_2.{wb}", (f"{h}.layer_norm2.{wb}",), "copy"),
                      (f"{o}.mlp.c_fc.{wb}", (f"{h}.mlp.fc1.{wb}",), "copy"),
                      (f"{o}.mlp.c_proj.{wb}", (f"{h}.mlp.fc2.{wb}",), "copy")]
    return t


def hf_shapes(cfg: CLIPConfig) -> dict[str, tuple]:
    """Every tensor of a Hugging Face ``CLIPModel`` state dict -> its shape."""
    oa = openai_shapes(cfg)
    out = {}
    for ours, hf, how in _hf_table(cfg):
        shape = oa[ours]
        if how == "T":
            shape = shape[::-1]
        elif how == "qkv":
            shape = (shape[0] // 3,) + shape[1:]
        out.update({k: shape for k in hf})
    return out


def hf_to_openai(sd, cfg: CLIPConfig) -> dict[str, np.ndarray]:
    """HF state dict (checked against ``hf_shapes``) -> OpenAI layout."""
    out = {}
    for ours, hf, how in _hf_table(cfg):
        arrays = [np.asarray(sd[k], np.float32) for k in hf]
        out[ours] = (arrays[0].T if how == "T" else
                     np.concatenate(arrays, 0) if how == "qkv" else arrays[0])
    return out


def openai_to_hf(sd, cfg: CLIPConfig) -> dict[str, np.ndarray]:
    """OpenAI layout -> HF ``CLIPModel`` state dict (contiguous float32)."""
    out = {}
    for ours, hf, how in _hf_table(cfg):
        a = np.asarray(sd[ours], np.float32)
        parts = np.split(a, 3, 0) if how == "qkv" else [a.T if how == "T" else a]
        out.update({k: np.array(v, np.float32, order="C") for k, v in zip(hf, parts)})
    return out
