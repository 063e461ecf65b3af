"""The demo flow: pre-train, fine-tune with each recipe, evaluate, report side by side.

``python train.py --config=configs/demo.py [--workdir=W]`` calls ``run(config, W)`` when
the config has a ``demo`` section (``demo_section()`` lists its knobs):

    (pre-trained) the shipped demo CLIP (gmm_jax/assets/demo_clip, made by
                  experiments/make_demo_model.py), evaluated in W/pretrained/eval; or,
                  with config.demo.pretrain.rebuild=True, W/pretrain/: the same model
                  trained from scratch on the demo's source split (CLIP loss, learned
                  temperature), exported to W/pretrain/model/ (save_pretrained)
    W/<run>/      one fine-tuning run per entry of config.demo.runs, from that model, on
                  the target split (``RECIPES`` maps a run name to its loss)
    W/*/eval/     eval_lib.evaluate of each model on the target test split and the
                  shifted splits (metrics.json, metrics.md, figures)
    W/demo_report.json, W/demo_report.md, W/gap_*.png

Every stage directory is an ordinary training workdir (resumable, readable by eval.py).
A stage whose marker ``demo_stage.json`` says it finished with the same training config
is skipped, and an evaluation whose ``demo_eval.json`` matches is reused, so a second
invocation costs only the report. The stage configs are ordinary configs (the ``demo``
section removed), validated by ``train_lib.validate_config``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from typing import Callable, Optional

import ml_collections
import numpy as np

from gmm_jax import paths as fs  # `paths` names the report's files below

log = logging.getLogger(__name__)

PRETRAINED = "pretrained"
# Fine-tuning recipes: run name -> config.loss fields. Everything else (weights, betas,
# tau_end, ...) comes from config.loss, so --config.loss.c_m2=0.05 reaches every run.
RECIPES = {
    "ft": {"method": "clip"},
    "m2mix": {"method": "m2mix"},
    "m2mix_c05": {"method": "m2mix", "c_m2": 0.05},  # the largest c_m2 of the paper's sweep
    "m3mix": {"method": "m3mix"},  # beta_m2 defaults to the reference's m3mix value, 0.2
    "cua": {"method": "cua"},
    "cuaxu": {"method": "cuaxu"},
    # Modality swapping: half the pairs, each coordinate exchanged with probability 1/2.
    # A protocol choice fixed before any swap run (the paper's rate is not used here).
    "ft_swap": {"method": "clip", "swap": "hard", "swap_p": 0.5},
    "ft_tsched": {"method": "clip", "temperature": "schedule"},
    "m2mix_tsched": {"method": "m2mix", "temperature": "schedule"},
}
# Shown first in the report (when present), in this order.
HEADLINE = (
    "retrieval/i2t_r1", "retrieval/t2i_r1", "retrieval/rsum",
    "retrieval_shift_background/rsum", "retrieval_shift_combo/rsum",
    "zeroshot/gmm_demo_target_test/top1", "zeroshot/gmm_demo_shift_background/top1",
    "zeroshot/gmm_demo_shift_combo/top1", "calibration/ece",
    "zeroshot/gmm_demo_target_test/ece", "zeroshot/gmm_demo_shift_background/ece",
    "zeroshot/gmm_demo_shift_combo/ece", "gap/centroid_distance", "gap/linear_separability",
    "gap/mean_positive_cosine", "gap/uniformity", "gap/alignment", "gap/relative_alignment",
)
# Keys that do not change what a stage trains (left out of its fingerprint).
_NOT_TRAINING = ("eval", "eval_every_steps", "eval_at_end", "progress_bar", "log_every_steps",
                 "checkpoint_every_steps", "max_to_keep", "async_checkpointing", "distributed",
                 "mesh")
STAGE_MARKER = "demo_stage.json"
EVAL_MARKER = "demo_eval.json"
MODEL_DIR = "model"


class DemoError(ValueError):
    """A user error in the demo section or a workdir that belongs to another config."""


def demo_section() -> ml_collections.ConfigDict:
    """The ``config.demo`` knobs with their defaults (configs/demo.py starts from these)."""
    d = ml_collections.ConfigDict()
    d.runs = "ft,m2mix"           # fine-tuning runs, names from RECIPES
    d.pretrain_dir = ""           # "" = WORKDIR/pretrain; else a shared pre-training dir
    d.tau_from_pretrained = True  # fixed/scheduled fine-tuning tau relative to the
    #                               pre-trained model's learned tau (see docs/demo.md)
    p = d.pretrain = ml_collections.ConfigDict()
    p.train_split = "source_train"
    p.num_epochs = 5
    p.total_steps = 8000          # > 0: overrides num_epochs (8000 x 128 = 17 epochs)
    p.batch_size = 128
    p.lr = 1e-3
    p.weight_decay = 0.1
    p.temperature = "learned"
    p.temp_lr_mult = 20.0          # lets the learned temperature rise as in CLIP (docs/demo.md)
    p.seed = 0
    p.rebuild = False             # True: pre-train here instead of loading the shipped model
    # After evaluation (gmm_jax.demo_extras; docs/demo.md): WiSE-FT curves of every run,
    # and a captioner on each model's frozen image embeddings.
    w = d.wise_ft = ml_collections.ConfigDict()
    w.enabled = True
    w.alphas = "0,0.25,0.5,0.75,1"   # theta = (1 - alpha) * pre-trained + alpha * run
    w.suites = "retrieval,calibration,zeroshot"
    w.reevaluate_ends = False        # alpha = 0 / 1: reuse the models' own evaluations
    c = d.captioning = ml_collections.ConfigDict()
    c.enabled = True
    c.seeds = "0"                    # "0,1,2": mean ± std over captioner seeds (3x cost)
    c.train_split = "target_train"   # scored on config.data.eval_split
    c.steps = 600                    # 150 steps: every image got the same caption
    c.batch_size = 64
    c.prefix_length = 4
    c.width = 64
    c.layers = 2
    c.heads = 2
    c.beam_size = 3
    c.max_length = 32                # tokens incl. SOT and EOT (demo captions: median 20)
    c.max_test_images = 500          # 0 = all
    c.num_samples = 5
    return d


def run_names(config) -> list[str]:
    names = [n.strip() for n in str(config.demo.runs).split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise DemoError(f"config.demo.runs: unknown run(s) {unknown}; known: {list(RECIPES)}")
    if len(set(names)) != len(names):
        raise DemoError(f"config.demo.runs={config.demo.runs!r} names a run twice")
    return names


def validate_demo(config) -> None:
    """Unknown / wrongly typed keys of ``config.demo`` (against ``demo_section()``)."""
    ref = demo_section()

    def walk(cfg, r, prefix):
        for k in cfg.keys():
            if k not in r:
                raise DemoError(f"unknown config key demo.{prefix}{k} (known: "
                                f"{sorted(r.keys())})")
            v, rv = cfg[k], r[k]
            if isinstance(rv, ml_collections.ConfigDict):
                walk(v, rv, f"{prefix}{k}.")
            elif not (isinstance(v, type(rv)) or (isinstance(rv, float) and isinstance(v, int)
                                                 and not isinstance(v, bool))):
                raise DemoError(f"config.demo.{prefix}{k}={v!r}: expected {type(rv).__name__}")
    walk(config.demo, ref, "")
    run_names(config)
    from gmm_jax import demo_extras
    if config.demo.wise_ft.enabled:
        demo_extras.wise_ft_settings(config)
    if config.demo.captioning.enabled:
        demo_extras.captioning_settings(config)


# --------------------------------------------------------------------------- stage configs

def base_config(config) -> ml_collections.ConfigDict:
    """A deep copy of ``config`` without its ``demo`` section (an ordinary config)."""
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        if "demo" in cfg:
            del cfg["demo"]
    return cfg


def _validate(cfg, stage: str) -> None:
    """``train_lib.validate_config`` of a stage config; its errors become DemoError."""
    from gmm_jax import train_lib
    try:
        train_lib.validate_config(cfg)
    except ValueError as e:
        raise DemoError(f"the demo's {stage} config: {e}") from e


def pretrain_config(config) -> ml_collections.ConfigDict:
    """Pre-training: the shared model/data settings, source split, CLIP loss."""
    cfg = base_config(config)
    p = config.demo.pretrain
    cfg.init = None
    cfg.data.train_split = p.train_split
    cfg.loss.method = "clip"
    cfg.loss.swap = "none"
    cfg.loss.temperature = p.temperature
    cfg.loss.temp_lr_mult = float(p.temp_lr_mult)
    cfg.num_epochs = int(p.num_epochs)
    cfg.total_steps = int(p.total_steps)
    cfg.batch_size = int(p.batch_size)
    cfg.optim.lr = float(p.lr)
    cfg.optim.weight_decay = float(p.weight_decay)
    cfg.seed = int(p.seed)
    cfg.eval_at_end, cfg.eval_every_steps = False, 0
    _validate(cfg, "pre-training")
    return cfg


def finetune_config(config, name: str, init_dir: str, pretrained_tau: Optional[float]):
    """Fine-tuning run ``name``: from ``init_dir`` on the target split with the recipe's
    loss. With ``config.demo.tau_from_pretrained``, a fixed tau is the pre-trained
    model's and a schedule starts there (keeping config.loss.tau_end / tau_start)."""
    from gmm_jax import train_lib
    cfg = base_config(config)
    cfg.init = init_dir
    for f in train_lib.MODEL_FIELDS:  # the architecture comes from the pre-trained model
        cfg.model[f] = None
    for k, v in RECIPES[name].items():
        cfg.loss[k] = v
    if config.demo.tau_from_pretrained and pretrained_tau is not None:
        ratio = float(cfg.loss.tau_end) / float(cfg.loss.tau_start)
        cfg.loss.tau = cfg.loss.tau_start = float(pretrained_tau)
        cfg.loss.tau_end = float(pretrained_tau) * ratio
    cfg.eval_at_end, cfg.eval_every_steps = False, 0
    _validate(cfg, f"run {name!r}")
    return cfg


def eval_config(config) -> ml_collections.ConfigDict:
    """What every model is evaluated with: ``config.data`` (eval split) and ``config.eval``."""
    return base_config(config)


def fingerprint(cfg, drop=_NOT_TRAINING) -> str:
    """What a training stage trained: its config without the keys that do not change
    training, with the initial model named by its content (the same model at another
    path, e.g. another install of the package, is the same start; a new model at the same
    path is not) and, for the demo data, the dataset version (a package upgrade that
    changes the world must not reuse stages trained on the old one)."""
    d = json.loads(cfg.to_json_best_effort(sort_keys=True))
    for k in drop:
        d.pop(k, None)
    if "data" in d:
        d["data"] = data_identity(d["data"], "eval_split")
    if d.get("init"):
        d["init"] = model_identity(d["init"])
    return json.dumps(d, sort_keys=True)


def data_identity(data, *unused: str) -> dict:
    """What a stage's cache records of its data config (a ConfigDict or its dict), less the
    ``unused`` keys: not ``data_dir`` (where TFDS data lives is not what it is: the same
    data copied to a bucket is the same data) but, for the demo data, the dataset's version
    (a new version of the demo world is never served from caches of the old one)."""
    d = dict(data) if isinstance(data, dict) else json.loads(
        data.to_json_best_effort(sort_keys=True))
    for k in ("data_dir",) + unused:
        d.pop(k, None)
    if d.get("name") == "demo":
        from gmm_jax.data import demo as demo_data
        d["demo_version"] = str(demo_data.GmmDemo.VERSION)
    return d


def model_identity(init: str) -> str:
    """``sha256:<hash of every file>`` for a model directory (one with the config file
    ``save_pretrained`` writes); any other ``init`` (a hub name) as given."""
    from gmm_jax import pretrained
    if not fs.isfile(fs.join(init, pretrained.CONFIG_FILE)):
        return init
    def files(d):  # epath refuses rglob (it could mean thousands of GCS requests)
        for p in sorted(d.iterdir()):
            yield from files(p) if p.is_dir() else [p]
    root = fs.path(init)
    h = hashlib.sha256()
    for f in files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def same_training(recorded: Optional[str], fp: str) -> bool:
    """Whether a stage recorded with fingerprint ``recorded`` trained what ``fp`` asks
    for: equal up to (a) loss knobs the recipe never reads (an ``ft`` run is the same
    for every ``loss.c_m2``, so a sweep over it can share one) and (b) config keys added
    to ``configs/default.py`` since, left at their defaults (a new knob's default keeps
    the old behaviour), so that finished stages survive a new version of the package."""
    if recorded == fp:
        return True
    if recorded is None:
        return False
    from gmm_jax.configs import default
    defaults = json.loads(default.get_config().to_json_best_effort(sort_keys=True))
    old, new = _without_unused_loss_knobs(recorded), _without_unused_loss_knobs(fp)
    return _equal_but_new_defaults(old, new, defaults)


def _without_unused_loss_knobs(fp: str) -> dict:
    from gmm_jax.loss_spec import LossSpec
    d = json.loads(fp)
    loss = d.get("loss", {})
    try:
        unused = LossSpec.from_config(loss).unused_fields()
    except ValueError:  # a section this version cannot read: compare it whole
        return d
    d["loss"] = {k: v for k, v in loss.items() if k not in unused}
    return d


def _equal_but_new_defaults(old: dict, new: dict, defaults) -> bool:
    defaults = defaults if isinstance(defaults, dict) else {}
    for k in set(old) | set(new):
        if k in old and k in new:
            if isinstance(old[k], dict) and isinstance(new[k], dict):
                if not _equal_but_new_defaults(old[k], new[k], defaults.get(k)):
                    return False
            elif old[k] != new[k]:
                return False
        elif not (k in new and k in defaults and new[k] == defaults[k]):
            return False  # removed, or added at a value other than its default
    return True


def _changed_keys(recorded: Optional[str], fp: str) -> list[str]:
    """The dotted config keys in which two fingerprints differ, loss knobs the recipe never
    reads left out (for the error message)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out
    if recorded is None:
        return ["everything (no fingerprint recorded)"]
    a, b = (flat(_without_unused_loss_knobs(x)) for x in (recorded, fp))
    missing = object()
    return sorted(k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing))


# --------------------------------------------------------------------------- stages

_read_json = fs.read_json_or_none  # markers: None when missing or cut short


def _write_json(path, obj, sort_keys=True):
    fs.write_json(path, obj, atomic=True, indent=1, sort_keys=sort_keys, allow_nan=True)


def stage_done(stage_dir: str, fp: str) -> bool:
    """True when ``stage_dir`` finished training with the config of fingerprint ``fp``
    (marker says done and its last checkpoint step is on disk). Raises DemoError when
    the directory holds a run of a different config."""
    marker = _read_json(fs.join(stage_dir, STAGE_MARKER))
    if marker is None:
        return False
    if not same_training(marker.get("fingerprint"), fp):
        raise DemoError(f"{stage_dir} holds a run of a different training config (it differs "
                        f"in {', '.join(_changed_keys(marker.get('fingerprint'), fp))}); use "
                        "another --workdir (or delete that directory) to train with this one")
    if not marker.get("done"):
        return False
    return fs.isdir(fs.join(stage_dir, "checkpoints", str(marker["step"])))


def train_stage(cfg, stage_dir: str, banner: Callable[[str], None]) -> dict:
    """Train ``cfg`` in ``stage_dir`` unless already done; returns the marker."""
    from gmm_jax import train_lib
    fp = fingerprint(cfg)
    if stage_done(stage_dir, fp):
        marker = _read_json(fs.join(stage_dir, STAGE_MARKER))
        banner(f"reusing the finished run in {stage_dir} (step {marker['step']})")
        return marker
    fs.makedirs(stage_dir)
    _write_json(fs.join(stage_dir, STAGE_MARKER), {"fingerprint": fp, "done": False})
    t0 = time.perf_counter()
    out = train_lib.train_and_evaluate(cfg, stage_dir)
    marker = {"fingerprint": fp, "done": True, "step": int(out["step"]),
              "seconds": round(time.perf_counter() - t0, 1),
              "train_metrics": {k: float(v) for k, v in (out.get("metrics") or {}).items()}}
    _write_json(fs.join(stage_dir, STAGE_MARKER), marker)
    return marker


def export_model(stage_dir: str, marker: dict) -> tuple[str, float]:
    """Write the finished run's params (its stage ``marker``) as a model directory (what
    ``config.init`` names), unless already exported; returns ``(model_dir, tau)`` with
    tau the model's 1/exp(logit_scale)."""
    from gmm_jax import checkpointing, pretrained
    model_dir = fs.join(stage_dir, MODEL_DIR)
    info = _read_json(fs.join(model_dir, "demo_export.json"))
    if info is None or info.get("step") != marker["step"]:
        model, params, tok, step, _ = checkpointing.load_run(stage_dir)
        pretrained.save_pretrained(model_dir, model.config, params, tok)
        info = {"step": step, "logit_scale": float(np.asarray(params["logit_scale"]))}
        _write_json(fs.join(model_dir, "demo_export.json"), info)
    return model_dir, float(math.exp(-info["logit_scale"]))


def eval_record(ecfg) -> dict:
    """What an evaluation cache records of an eval config: its eval settings (less the
    progress bar) and its data (``data_identity``, less the training split)."""
    ev = json.loads(ecfg.eval.to_json_best_effort(sort_keys=True))
    ev.pop("progress", None)
    return {"eval": ev, "data": data_identity(ecfg.data, "train_split")}


def _evaluate_cached(ecfg, out: str, model_key: dict, load, mesh, title: str) -> str:
    """Evaluate ``load()``'s ``(model, params, tokenizer)`` into ``out``, unless
    ``demo_eval.json`` there records the same ``model_key`` and ``eval_record``."""
    from gmm_jax import eval_lib
    fp = {**model_key, **eval_record(ecfg)}
    if (_read_json(fs.join(out, EVAL_MARKER)) == fp
            and fs.exists(fs.join(out, "metrics.json"))):
        return out
    model, params, tok = load()
    eval_lib.evaluate(model, params, tok, ecfg, out, mesh=mesh, title=title)
    _write_json(fs.join(out, EVAL_MARKER), fp)
    return out


def evaluate_stage(ecfg, stage_dir: str, marker: dict, mesh, title: str) -> str:
    """Evaluate the finished run in ``stage_dir`` (its stage ``marker``) into
    ``stage_dir/eval``; reused when ``demo_eval.json`` records the same training config,
    checkpoint and eval settings."""
    from gmm_jax import checkpointing
    key = {"stage": hashlib.sha256(marker["fingerprint"].encode()).hexdigest()[:16],
           "step": marker["step"]}
    return _evaluate_cached(ecfg, fs.join(stage_dir, "eval"), key,
                            lambda: checkpointing.load_run(stage_dir)[:3], mesh, title)


def evaluate_model_dir(ecfg, model_dir: str, out: str, mesh, title: str) -> str:
    """Evaluate a model directory (the shipped model) into ``out``; reused when
    ``demo_eval.json`` records the same model files, eval settings and demo world."""
    from gmm_jax import pretrained
    return _evaluate_cached(ecfg, out, {"model": model_identity(model_dir)},
                            lambda: pretrained.load_pretrained(model_dir), mesh, title)


def shipped_pretrained(eval_dir: str) -> tuple[str, float, dict]:
    """``(model_dir, tau, stage info)`` of the shipped demo model, evaluated into
    ``eval_dir``."""
    from gmm_jax import demo_model
    model_dir = demo_model.shipped_dir()
    path = fs.join(model_dir, demo_model.METRICS_FILE)
    info = _read_json(path) or {}
    if "tau" not in info:
        raise DemoError(f"{path}: missing or without 'tau' (remake the model with "
                        "python experiments/make_demo_model.py)")
    tau = float(info["tau"])
    stage = {"dir": model_dir, "step": info.get("step"),
             "train_seconds": info.get("train_seconds"), "tau": tau, "shipped": True,
             "eval_dir": eval_dir}
    return model_dir, tau, stage


def shipped_marker(model_dir: str) -> dict:
    """A stage marker for a model directory (the shipped model), so later stages key
    their reuse on it as on a trained stage: its recorded metrics and config identify
    it (remaking the model changes both)."""
    from gmm_jax import demo_model, pretrained
    parts = [fs.read_json_or_none(fs.join(model_dir, f)) for f in
             (demo_model.METRICS_FILE, pretrained.CONFIG_FILE)]
    return {"fingerprint": json.dumps(parts, sort_keys=True), "done": True,
            "step": int((parts[0] or {}).get("step") or 0)}


# --------------------------------------------------------------------------- report

def write_report(workdir: str, eval_dirs: dict, meta: dict,
                 extras: Optional[dict] = None) -> dict:
    """``demo_report.json`` (``{"runs": {name: metrics}, "meta": ..., "wise_ft": ...,
    "captioning": ...}``; the last two from ``extras`` when those stages ran),
    ``demo_report.md`` and the gap figures; returns the paths written."""
    from gmm_jax import demo_extras, figures, report
    extras = {k: v for k, v in (extras or {}).items() if v is not None}
    runs = {name: report.load_metrics(d) for name, d in eval_dirs.items()}
    keys = sorted({k for m in runs.values() for k in m})
    head = [k for k in HEADLINE if k in keys]
    head_md, data = report.compare_runs(runs, None, "Headline metrics", keys=head)
    full_md, _ = report.compare_runs(runs, None, "All metrics", keys=keys)
    json_path = fs.join(workdir, "demo_report.json")
    _write_json(json_path, {"runs": data["runs"], "meta": meta, **extras}, sort_keys=False)
    paths = {"json": json_path}
    figs = {}
    figs["gap_side_by_side"] = figures.gap_figure_side_by_side(
        dict(eval_dirs), fs.join(workdir, "gap_side_by_side.png"))
    if "ft" in eval_dirs and "m2mix" in eval_dirs:
        figs["gap_ft_vs_m2mix"] = figures.gap_figure_side_by_side(
            {"ft": eval_dirs["ft"], "m2mix": eval_dirs["m2mix"]},
            fs.join(workdir, "gap_ft_vs_m2mix.png"))
    rel = reliability_figure(eval_dirs, fs.join(workdir, "reliability.png"))
    if rel:
        figs["reliability"] = rel
    paths.update(figs)
    stage_lines = [f"| {name} | {s.get('dir', '')} | {s.get('step', '')} | "
                   f"{s.get('train_seconds', '–')} |" for name, s in meta["stages"].items()]
    stage_lines += [f"| {name} | {s['dir']} | | {s['seconds']} |"
                    for name, s in meta.get("extra_stages", {}).items()]
    sections = []
    if "wise_ft" in extras:
        sections += demo_extras.wise_ft_markdown(extras["wise_ft"])
    if "captioning" in extras:
        sections += demo_extras.captioning_markdown(extras["captioning"])
    md = ["# m²-Mix demo report", "",
          "Pre-trained = a small CLIP trained from scratch on the demo's source split; every "
          "other column fine-tunes it on the target split with that recipe (see "
          "docs/demo.md). Evaluation: retrieval, geometry and calibration on "
          f"`{meta['eval_split']}`; `retrieval_<split>/...` on the shifted splits; zero-shot "
          "classification on target_test and the shifts. Bold = best run of each metric; "
          "↑/↓ = which way is better.", "",
          f"Command: `{meta['command']}`", "",
          "| stage | workdir | step | s |", "| --- | --- | ---: | ---: |",
          *stage_lines, "",
          *["![" + k + "](" + fs.basename(v) + ")" for k, v in figs.items()], "",
          head_md.replace("# Headline", "## Headline"), "", *summary_lines(data["runs"]), "",
          *sections,
          full_md.replace("# All", "## All")]
    md_path = fs.join(workdir, "demo_report.md")
    fs.write_text(md_path, "\n".join(md) + "\n")
    paths["md"] = md_path
    return paths


def reliability_figure(eval_dirs: dict, out_path: str) -> Optional[str]:
    """Image-to-text retrieval reliability of every model, one panel each (from the eval
    dirs' reliability.json); None when no model has one."""
    from gmm_jax import eval_lib, figures
    bins = {}
    for name, d in eval_dirs.items():
        got = _read_json(fs.join(d, eval_lib.RELIABILITY_FILE))
        if got and "retrieval i2t" in got:
            bins[name] = got["retrieval i2t"]
    return figures.reliability_diagram(bins, out_path, "i2t retrieval") if bins else None


# (metric, words, unit scale) of the plain-language summary under the headline table.
_SUMMARY = (("retrieval/i2t_r1", "image-to-text R@1", 1.0),
            ("zeroshot/gmm_demo_target_test/top1", "zero-shot shape accuracy", 1.0),
            ("calibration/ece", "retrieval ECE in % (lower is better)", 100.0),
            ("gap/centroid_distance", "the centroid gap", 1.0))


def summary_lines(runs: dict) -> list[str]:
    """A few plain sentences: what fine-tuning changed, how every other run differs from
    ft, and that one seed cannot separate such differences from seed noise."""
    def val(run, key):
        v = runs.get(run, {}).get(key)
        return None if v is None else float(v)

    out = []
    if PRETRAINED in runs and "ft" in runs:
        parts = [f"{words} {val(PRETRAINED, k) * s:.3g} → {val('ft', k) * s:.3g}"
                 for k, words, s in _SUMMARY
                 if val(PRETRAINED, k) is not None and val("ft", k) is not None]
        if parts:
            out.append("From the pre-trained model to standard fine-tuning (ft) on "
                       "target_test: " + "; ".join(parts) + ".")
    for run in runs:
        if run in (PRETRAINED, "ft") or "ft" not in runs:
            continue
        parts = [f"{words} {(val(run, k) - val('ft', k)) * s:+.3g}"
                 for k, words, s in _SUMMARY
                 if val(run, k) is not None and val("ft", k) is not None]
        if parts:
            out.append(f"{run} minus ft: " + "; ".join(parts) + ".")
    if len(out) > 1:
        out.append("This is one fine-tuning seed, so it cannot tell such differences "
                   "from seed-to-seed noise; RESULTS.md compares the runs over five seeds "
                   "with paired 95% intervals (experiments/sweep.py).")
    return out


# --------------------------------------------------------------------------- driver

def _banner(msg: str) -> None:
    print(f"\n==== demo: {msg}", flush=True)


def _mesh():
    import jax
    from jax.sharding import AxisType
    if jax.device_count() <= 1:
        return None
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def run(config, workdir: str, command: str = "") -> dict:
    """The whole demo (see the module docstring). Returns ``{"report": paths, "runs":
    {name: metrics}, "seconds": wall time}``."""
    t_start = time.perf_counter()
    validate_demo(config)
    names = run_names(config)
    workdir = fs.absolute(workdir)
    fs.makedirs(workdir)
    pre_dir = fs.absolute(config.demo.pretrain_dir or fs.join(workdir, "pretrain"))
    pre_cfg = pretrain_config(config)
    ecfg = eval_config(config)
    do_wise = bool(config.demo.wise_ft.enabled and names)
    do_cap = bool(config.demo.captioning.enabled)
    n_stages = 1 + len(names) + 2 + do_wise + do_cap
    stages, eval_dirs = {}, {}
    mesh = _mesh()

    markers = {}
    if config.demo.pretrain.rebuild:
        _banner(f"[1/{n_stages}] pre-training a small CLIP from scratch on "
                f"{pre_cfg.data.train_split} -> {pre_dir}")
        marker = markers[PRETRAINED] = train_stage(pre_cfg, pre_dir, _banner)
        model_dir, tau_p = export_model(pre_dir, marker)
        stages[PRETRAINED] = {"dir": pre_dir, "step": marker["step"],
                              "train_seconds": marker.get("seconds"), "tau": tau_p}
    else:
        _banner(f"[1/{n_stages}] loading the shipped pre-trained demo CLIP (rebuild it with "
                "--config.demo.pretrain.rebuild=True)")
        # A shared pre-training dir (the sweep's) also shares the shipped model's evaluation.
        eval_dir = fs.join(config.demo.pretrain_dir if config.demo.pretrain_dir else
                           fs.join(workdir, PRETRAINED), "eval")
        model_dir, tau_p, stages[PRETRAINED] = shipped_pretrained(eval_dir)
        markers[PRETRAINED] = shipped_marker(model_dir)
    print(f"pre-trained model: {model_dir} (learned tau {tau_p:.4f}, scale {1 / tau_p:.1f})",
          flush=True)

    for i, name in enumerate(names):
        cfg = finetune_config(config, name, model_dir, tau_p)
        run_dir = fs.join(workdir, name)
        temp = cfg.loss.temperature + (f" tau={cfg.loss.tau:.4g}" if cfg.loss.temperature == "fixed"
                                       else "")
        _banner(f"[{2 + i}/{n_stages}] fine-tuning {name!r} (loss {cfg.loss.method}, "
                f"temperature {temp}) on {cfg.data.train_split or 'target_train'} -> {run_dir}")
        m = markers[name] = train_stage(cfg, run_dir, _banner)
        stages[name] = {"dir": run_dir, "step": m["step"], "train_seconds": m.get("seconds")}

    _banner(f"[{2 + len(names)}/{n_stages}] evaluating {[PRETRAINED] + names} on "
            f"{ecfg.data.eval_split} and the shifted splits")
    for name in [PRETRAINED] + names:
        if not stages[name].get("shipped"):
            eval_dirs[name] = evaluate_stage(ecfg, stages[name]["dir"], markers[name], mesh,
                                             name)
        else:  # the shipped model
            eval_dirs[name] = evaluate_model_dir(ecfg, model_dir, stages[name]["eval_dir"],
                                                 mesh, name)

    from gmm_jax import demo_extras
    extras, extra_stages, k = {}, {}, 2 + len(names)
    if do_wise:
        k += 1
        _banner(f"[{k}/{n_stages}] WiSE-FT: interpolating the pre-trained model and "
                f"{names} at alphas {config.demo.wise_ft.alphas}")
        t0 = time.perf_counter()
        extras["wise_ft"] = demo_extras.wise_ft_stage(config, workdir, stages, markers,
                                                      names, mesh, eval_dirs)
        extra_stages["wise_ft"] = {"dir": fs.join(workdir, demo_extras.WISE_FT_DIR),
                                   "seconds": round(time.perf_counter() - t0, 1)}
    if do_cap:
        k += 1
        _banner(f"[{k}/{n_stages}] captioning: a captioner on the image embeddings of "
                f"{[PRETRAINED] + names}, seeds {config.demo.captioning.seeds}")
        t0 = time.perf_counter()
        extras["captioning"] = demo_extras.captioning_stage(config, workdir, stages, markers,
                                                            [PRETRAINED] + names)
        extra_stages["captioning"] = {
            "dir": fs.join(workdir, demo_extras.CAPTIONING_DIR),
            "seconds": round(time.perf_counter() - t0, 1)}

    _banner(f"[{n_stages}/{n_stages}] report")
    meta = {"command": command or "python train.py --config=configs/demo.py",
            "eval_split": ecfg.data.eval_split, "stages": stages,
            "extra_stages": extra_stages,
            "seconds": round(time.perf_counter() - t_start, 1)}
    paths = write_report(workdir, eval_dirs, meta, extras)
    runs = _read_json(paths["json"])["runs"]
    head = [k for k in HEADLINE if all(k in m for m in runs.values())]
    from gmm_jax import report
    print(report.compare_runs(runs, None, "Headline metrics", keys=head)[0], flush=True)
    seconds = round(time.perf_counter() - t_start, 1)
    print(f"demo finished in {seconds:.0f} s. Report: {paths['md']} (and "
          f"{fs.basename(paths['json'])}); figures: "
          f"{', '.join(fs.basename(paths[k]) for k in paths if k.startswith('gap'))}",
          flush=True)
    return {"report": paths, "runs": runs, "seconds": seconds}
