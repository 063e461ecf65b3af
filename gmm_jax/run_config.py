"""Run configs: validation against the packaged defaults (``gmm_jax/configs/default.py``),
the paths a run starts from, and whether a workdir's saved run may be resumed with a
given config. Pure checks: nothing here writes to disk."""
from __future__ import annotations

import json

import ml_collections

from gmm_jax import losses, paths, train_state
from gmm_jax.models.config import ATTENTIONS

MODEL_FIELDS = ("embed_dim", "act", "image_size", "patch_size", "vision_width",
                "vision_layers", "vision_heads", "vision_mlp_dim", "vocab_size",
                "context_length", "text_width", "text_layers", "text_heads", "text_mlp_dim",
                "logit_scale_init")
CHOICES = {
    "loss.method": losses.METHODS, "loss.mix_schedule": losses.MIX_SCHEDULES,
    "loss.mix_form": losses.MIX_FORMS, "loss.swap": losses.SWAPS,
    "loss.temperature": train_state.TEMPERATURES, "loss_impl": ("global", "local"),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ATTENTIONS, "optim.name": ("adamw",),
    "optim.schedule": ("cosine", "constant"),
    "data.name": ("coco", "flickr30k", "image_text_files", "demo", "class_captions"),
    "data.caption_mode": ("first", "random"),
}


# --------------------------------------------------------------------------- config

def default_config() -> ml_collections.ConfigDict:
    """Every knob with its default: ``gmm_jax/configs/default.py``'s ``get_config()``."""
    from gmm_jax.configs import default
    return default.get_config()


def _flatten(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, (ml_collections.ConfigDict, dict)) and not k.endswith("demo_config"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate_config(config, reference=None) -> None:
    """Raise ``ValueError`` naming the key: unknown keys and wrong types (against
    ``reference``, default ``gmm_jax/configs/default.py``), bad enum values, bad sizes."""
    reference = default_config() if reference is None else reference
    flat = _flatten(config)
    ref = _flatten(reference)
    unknown = sorted(k for k in flat if k not in ref and not k.startswith("eval."))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} (not in gmm_jax/configs/default.py)")
    for k, v in flat.items():
        r = ref.get(k)
        if r is None or v is None or k.startswith("eval.") or k == "data.demo_config":
            continue
        ok = isinstance(v, type(r)) or (isinstance(r, float) and isinstance(v, int)
                                       and not isinstance(v, bool))
        if isinstance(r, (tuple, list)):
            ok = isinstance(v, (tuple, list))
        if not ok:
            raise ValueError(f"config.{k}={v!r}: expected {type(r).__name__}, "
                             f"got {type(v).__name__}")
    for k, choices in CHOICES.items():
        if k in flat and flat[k] not in choices:
            raise ValueError(f"config.{k}={flat[k]!r}; expected one of {list(choices)}")
    losses.LossSpec.from_config(config.loss)  # the loss section's own checks (ranges)
    for k in ("batch_size", "log_every_steps", "checkpoint_every_steps"):
        if int(flat[k]) <= 0:
            raise ValueError(f"config.{k}={flat[k]} must be > 0")
    chunks = config.get("embed_chunks", 1)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"config.embed_chunks={chunks!r} must be a positive int")
    if int(flat["batch_size"]) % chunks:
        raise ValueError(f"config.embed_chunks={chunks} must divide the per-device batch "
                         f"(config.batch_size={flat['batch_size']} / data-parallel devices)")
    if config.loss.temperature == "fixed" and float(config.loss.tau) <= 0:
        raise ValueError(f"config.loss.tau={config.loss.tau} must be > 0")
    if not config.init and not config.get("allow_from_scratch", True):
        raise ValueError(
            "config.init is not set, and this config fine-tunes a pretrained CLIP "
            "(config.allow_from_scratch=False): convert a checkpoint first, e.g. "
            "`python -m gmm_jax.convert --src /models/clip-vit-base-patch32 --format hf "
            "--out /models/b32` "
            "(see docs/models.md), and pass --config.init=/models/b32; or set "
            "--config.allow_from_scratch=true to train from scratch on purpose")
    if config.init and any(config.model.get(f) is not None for f in MODEL_FIELDS):
        set_ = [f for f in MODEL_FIELDS if config.model.get(f) is not None]
        raise ValueError(f"config.model.{set_[0]} is set but config.init={config.init!r} fixes "
                         "the architecture (only model.dtype / model.remat / "
                         "model.attention apply)")


def config_to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def check_paths(config) -> None:
    """The directories a run starts from exist (before anything is written)."""
    for key in ("init", "tokenizer"):
        path = config.get(key)
        if path and not paths.exists(path):
            raise FileNotFoundError(f"config.{key}={path!r} does not exist")
    if config.init and not paths.isdir(config.init):
        raise NotADirectoryError(f"config.init={config.init!r} is not a directory (a model "
                                 "directory from python -m gmm_jax.convert, or a run's workdir)")


# Keys a resumed run may change: how long and how often, where the data and the devices
# are, compute dtype, evaluation. Anything else would mix two runs in one workdir.
RESUME_MAY_CHANGE = ("total_steps", "num_epochs", "checkpoint_every_steps", "max_to_keep",
                     "async_checkpointing", "log_every_steps", "progress_bar",
                     "eval_every_steps", "eval_at_end", "eval.", "data.eval_split",
                     "data.data_dir", "data.manual_dir", "data.files_path", "data.images_dir",
                     "mesh.", "distributed", "loss_impl", "embed_chunks", "model.dtype",
                     "model.remat", "model.attention",
                     "allow_from_scratch")


def _flat_json(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("demo_config"):
            out.update(_flat_json(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict, config, workdir: str, step: int) -> list[str]:
    """Refuse (ValueError naming each key with both values) to resume a run whose saved
    config differs from ``config`` outside ``RESUME_MAY_CHANGE``; returns the allowed
    keys that changed. Keys the saved config lacks (added in a later version) count as
    their defaults; a checkpoint saved without a config is not checked."""
    if not saved:
        return []
    old = _flat_json(saved)
    new = _flat_json(json.loads(config_to_json(config)))
    defaults = _flat_json(json.loads(config_to_json(default_config())))
    bad, allowed = [], []
    for k in sorted(new):
        if k not in old and k not in defaults:
            continue
        before = old[k] if k in old else defaults[k]
        if before == new[k]:
            continue
        if any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUME_MAY_CHANGE):
            allowed.append(k)
        else:
            bad.append(f"config.{k}: saved {before!r}, now {new[k]!r}")
    if bad:
        raise ValueError(f"{workdir} holds a run with a different config (checkpoint step "
                         f"{step}): " + "; ".join(bad) + ". Use another --workdir, or the "
                         "saved values to resume")
    return allowed
