"""The on-disk model directory: what ``python -m gmm_jax.convert`` writes and what
``config.init`` (train.py) and eval.py load.

    out_dir/model_config.json   CLIPConfig.to_dict()
    out_dir/tokenizer/          Tokenizer.save (HF vocab.json + merges.txt)
    out_dir/params/             Orbax PyTree checkpoint of the params (float32)
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gmm_jax import paths
from gmm_jax.models import CLIP, CLIPConfig

CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
PARAMS_DIR = "params"


def save_config(out_dir: str, config: CLIPConfig) -> None:
    paths.write_json(paths.join(out_dir, CONFIG_FILE), config.to_dict())


def load_config(model_dir: str) -> CLIPConfig:
    path = paths.join(model_dir, CONFIG_FILE)
    if not paths.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {CONFIG_FILE} (not a gmm_jax model directory; "
                                "create one with python -m gmm_jax.convert)")
    return CLIPConfig.from_dict(paths.read_json(path))


def save_pretrained(out_dir: str, config: CLIPConfig, params, tokenizer=None) -> str:
    """Write config, tokenizer (if given) and float32 params to ``out_dir``
    (an existing ``params/`` is replaced). Returns the absolute path."""
    out_dir = paths.absolute(out_dir)
    save_config(out_dir, config)
    if tokenizer is not None:
        tokenizer.save(paths.join(out_dir, TOKENIZER_DIR))
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(paths.join(out_dir, PARAMS_DIR), params, force=True)
    return out_dir


def load_params(model_dir: str, config: Optional[CLIPConfig] = None):
    """The params of a model directory as jax arrays on the default device; with
    ``config``, checked against the shapes that config implies."""
    path = paths.join(paths.absolute(model_dir), PARAMS_DIR)
    if not paths.isdir(path):
        raise FileNotFoundError(f"{model_dir}: no {PARAMS_DIR}/ checkpoint")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = ckptr.restore(path, restore_args=restore_args)
    if config is not None:
        from gmm_jax.models import init_params
        want = jax.eval_shape(lambda: init_params(CLIP(config), jax.random.key(0)))
        want_flat = {jax.tree_util.keystr(k): v.shape
                     for k, v in jax.tree_util.tree_leaves_with_path(want)}
        got_flat = {jax.tree_util.keystr(k): np.shape(v)
                    for k, v in jax.tree_util.tree_leaves_with_path(params)}
        bad = sorted(set(want_flat) ^ set(got_flat))
        bad += sorted(f"{k}: got {got_flat[k]}, expected {want_flat[k]}"
                      for k in set(want_flat) & set(got_flat) if want_flat[k] != got_flat[k])
        if bad:
            raise ValueError(f"{path}: params do not match {CONFIG_FILE}: " + ", ".join(bad[:40]))
    return jax.tree.map(jnp.asarray, params)


def load_pretrained(model_dir: str, **config_overrides):
    """``(CLIP model, params, tokenizer)`` from a model directory. ``config_overrides``
    change run-time options (``dtype="bfloat16"``, ``remat=True``); the tokenizer is
    None when the directory has none."""
    config = load_config(model_dir)
    params = load_params(model_dir, config)
    if config_overrides:
        config = config.replace(**config_overrides)
    tok_dir = paths.join(model_dir, TOKENIZER_DIR)
    tokenizer = None
    if paths.isdir(tok_dir):
        from gmm_jax.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_path(tok_dir, context_length=config.context_length)
    return CLIP(config), params, tokenizer
