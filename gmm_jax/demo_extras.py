"""The demo's two comparison stages after evaluation: WiSE-FT curves and captioning.

    wise_ft_stage     theta_alpha = (1 - alpha) * pre-trained + alpha * run for every
                      fine-tuning run and ``config.demo.wise_ft.alphas`` (``gmm_jax.wise_ft``),
                      evaluated on the eval split and the shifted splits
                      -> W/wise_ft/ (wise_ft.json, wise_ft.md, the two figures, evals/)
    captioning_stage  a ClipCap-style captioner (``gmm_jax.captioning``) trained on the
                      frozen image embeddings of the pre-trained model and of every run,
                      with the same budget and the same seeds
                      -> W/captioning/ (captioning.json, the embedding cache)

Both are cached like the demo's other stages: a marker records the models (their
training-config fingerprint and checkpoint step) and the stage's settings, and a second
invocation with the same ones reads the stage's JSON instead of recomputing it.
"""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from gmm_jax import paths as fs

WISE_FT_DIR = "wise_ft"
CAPTIONING_DIR = "captioning"
STAGE_MARKER = "demo_stage.json"
# Reported in demo_report.md (the JSON keeps every metric).
CAPTION_KEYS = ("captioning/bleu4", "captioning/cider", "captioning/rouge_l",
                "captioning/bleu1", "captioning/train_loss")
# Knobs of config.demo.captioning copied into gmm_jax.captioning.captioning_config().
CAPTION_KNOBS = ("steps", "batch_size", "prefix_length", "width", "layers", "heads",
                 "beam_size", "max_length", "max_test_images", "num_samples")
# How the stages write their JSON (as demo_flow's stages do): atomically, readable.
_JSON = {"atomic": True, "indent": 1, "sort_keys": True, "allow_nan": True}


def model_key(marker: dict) -> dict:
    """What identifies a demo stage's model: its training config and checkpoint step."""
    return {"config": hashlib.sha256(marker["fingerprint"].encode()).hexdigest()[:16],
            "step": marker["step"]}


def _cached(out_dir: str, result_file: str, fp: dict):
    """The stage's stored result when its marker records ``fp``, else None."""
    if fs.read_json_or_none(fs.join(out_dir, STAGE_MARKER)) != fp:
        return None
    return fs.read_json_or_none(fs.join(out_dir, result_file))


def _seeds(spec) -> list[int]:
    from gmm_jax.demo_flow import DemoError
    try:
        seeds = [int(s) for s in str(spec).split(",") if s.strip()]
    except ValueError:
        raise DemoError(f"config.demo.captioning.seeds={spec!r}: expected comma-separated "
                        "integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise DemoError(f"config.demo.captioning.seeds={spec!r}: give distinct seeds")
    return seeds


# --------------------------------------------------------------------------- WiSE-FT

def wise_ft_settings(config):
    """``(alphas, eval config)`` of the WiSE-FT stage; DemoError names a bad key."""
    from gmm_jax import wise_ft
    from gmm_jax.demo_flow import DemoError, eval_config
    w = config.demo.wise_ft
    try:
        alphas = wise_ft.parse_alphas(w.alphas)
    except wise_ft.WiseFTError as e:
        raise DemoError(f"config.demo.wise_ft.alphas={w.alphas!r}: {e}") from e
    if not str(w.suites).strip():
        raise DemoError("config.demo.wise_ft.suites is empty")
    ecfg = eval_config(config)
    ecfg.eval.suites = str(w.suites)
    return alphas, ecfg


def wise_ft_stage(config, workdir: str, stages: dict, markers: dict, names: list[str],
                  mesh=None, eval_dirs: dict | None = None) -> dict:
    """The WiSE-FT curve of every run in ``names`` (``stages[name]["dir"]``: training
    workdirs; ``stages["pretrained"]``: the zero-shot end) into ``workdir/wise_ft``.
    Unless ``config.demo.wise_ft.reevaluate_ends``, the rows of alpha = 0 and 1 are the
    models' own evaluations (``eval_dirs[name]``, same data and eval settings; exact
    ends of the interpolation), which saves three evaluations.
    Returns ``wise_ft.json``'s content (``{"alphas", "metrics": {run: [rows]},
    "id_metric", "ood_metrics", "ece_metrics", ...}``), reused when unchanged."""
    from gmm_jax import wise_ft, wise_ft_report
    from gmm_jax.demo_flow import PRETRAINED, eval_record
    alphas, ecfg = wise_ft_settings(config)
    out = fs.join(workdir, WISE_FT_DIR)
    reuse = not config.demo.wise_ft.reevaluate_ends and eval_dirs is not None
    fp = {"models": {n: model_key(markers[n]) for n in [PRETRAINED] + names},
          "alphas": alphas, "reuse_ends": reuse, **eval_record(ecfg)}
    cached = _cached(out, "wise_ft.json", fp)
    if cached is not None:
        return cached
    fs.write_json(fs.join(out, STAGE_MARKER), {"running": True}, **_JSON)
    model, params_a, tok = wise_ft.load_model(stages[PRETRAINED]["dir"])
    finetuned = {}
    for n in names:
        model_b, params_b, _ = wise_ft.load_model(stages[n]["dir"])
        wise_ft.check_compatible(params_a, params_b, PRETRAINED, n, model.config,
                                 model_b.config)
        finetuned[n] = params_b
    inner = [a for a in alphas if not (reuse and a in (0.0, 1.0))]
    result = wise_ft.wise_ft_curve(model, params_a, finetuned, tok, ecfg, inner, out,
                                   mesh=mesh) if inner else {"metrics": {n: [] for n in names}}
    if reuse:
        result = _with_ends(result, alphas, inner, eval_dirs)
    result["zeroshot"] = stages[PRETRAINED]["dir"]
    result["finetuned"] = {n: stages[n]["dir"] for n in names}
    result["temperature"] = "log(scale) interpolated like every tensor"
    result["suites"] = str(ecfg.eval.suites)
    wise_ft_report.write(result, out)  # adds id/ood/ece metric choices to wise_ft.json
    result = fs.read_json(fs.join(out, "wise_ft.json"))
    fs.write_json(fs.join(out, STAGE_MARKER), fp, **_JSON)
    return result


def _with_ends(result: dict, alphas: list, inner: list, eval_dirs: dict) -> dict:
    """``result`` over ``inner`` alphas completed to ``alphas`` with the pre-trained
    (alpha = 0) and each run's (alpha = 1) evaluation, on the keys the curve has."""
    from gmm_jax.demo_flow import PRETRAINED
    from gmm_jax.report import load_metrics
    rows = {}
    for name, got in result["metrics"].items():
        by_alpha = dict(zip(inner, got))
        keys = got[0].keys() if got else None
        for a, src in ((0.0, PRETRAINED), (1.0, name)):
            if a in alphas:
                m = load_metrics(eval_dirs[src])
                by_alpha[a] = {k: m[k] for k in (keys or m) if k in m}
        rows[name] = [by_alpha[a] for a in alphas]
    return {**result, "alphas": [float(a) for a in alphas], "metrics": rows,
            "ends": "alpha = 0 and 1: the models' own evaluations (W/*/eval)"}


def wise_ft_markdown(result: dict) -> list[str]:
    """The report's WiSE-FT section: figures and one table per run."""
    ood, ece = result["ood_metrics"], result["ece_metrics"]
    rsum = [k for k in result["metrics"][next(iter(result["metrics"]))][0]
            if k.startswith("retrieval") and k.endswith("/rsum")]
    cols = [result["id_metric"], "OOD"] + rsum + list(ece)
    lines = ["## Robustness: WiSE-FT weight interpolation", "",
             "theta_alpha = (1 - alpha) * pre-trained + alpha * fine-tuned, for every tensor "
             "(log logit-scale included); alpha = 0 is the pre-trained model, 1 the run. "
             f"Suites `{result.get('suites', '')}`. OOD = mean of "
             + ", ".join(f"`{k}`" for k in ood) + f". Details: `{WISE_FT_DIR}/wise_ft.md`.",
             "", f"![WiSE-FT ID vs OOD]({WISE_FT_DIR}/wise_ft_id_ood.png)",
             f"![WiSE-FT ECE vs alpha]({WISE_FT_DIR}/wise_ft_ece.png)", ""]
    for name, rows in result["metrics"].items():
        lines += [f"### {name}", "", "| alpha | " + " | ".join(f"`{c}`" for c in cols) + " |",
                  "| ---: |" + " ---: |" * len(cols)]
        for a, row in zip(result["alphas"], rows):
            vals = [row[result["id_metric"]], float(np.mean([row[k] for k in ood]))
                    if ood else float("nan")] + [row[k] for k in rsum + list(ece)]
            lines.append(f"| {a:g} | " + " | ".join(_fmt(v) for v in vals) + " |")
        lines.append("")
    return lines


# --------------------------------------------------------------------------- captioning

def captioning_settings(config):
    """``(captioning_config, seeds, train_split, test_split)`` of the captioning stage."""
    from gmm_jax.captioning import captioning_config, check_config
    from gmm_jax.demo_flow import DemoError
    c = config.demo.captioning
    cfg = captioning_config()
    for k in CAPTION_KNOBS:
        cfg[k] = type(cfg[k])(c[k])
    cfg.java_metrics = ""  # the same metrics on every machine (METEOR needs Java)
    try:
        check_config(cfg, where="config.demo.captioning")
    except ValueError as e:
        raise DemoError(str(e)) from e
    return cfg, _seeds(c.seeds), str(c.train_split), str(config.data.eval_split)


def _split(data_cfg, name, tok, size):
    from gmm_jax.captioning.suite import captions_by_image
    from gmm_jax.data import load_retrieval_split
    s = load_retrieval_split(data_cfg, name, tok, size)
    return s, captions_by_image(s)


def captioning_stage(config, workdir: str, stages: dict, markers: dict,
                     names: list[str]) -> dict:
    """Train and score a captioner on each model's frozen image embeddings of
    ``train_split`` / the eval split, once per seed, same budget for every model.
    Returns ``captioning.json``'s content (see docs/demo.md), reused when unchanged."""
    from gmm_jax import wise_ft
    from gmm_jax.captioning import (
        cached_image_embeddings,
        captioning_from_embeddings,
        clip_image_encoder,
        params_fingerprint,
    )
    from gmm_jax.demo_flow import data_identity
    cfg, seeds, train_split, test_split = captioning_settings(config)
    out = fs.join(workdir, CAPTIONING_DIR)
    data = data_identity(config.data, "train_split")
    fp = {"models": {n: model_key(markers[n]) for n in names}, "seeds": seeds,
          "captioner": cfg.to_dict(), "splits": [train_split, test_split], "data": data}
    cached = _cached(out, "captioning.json", fp)
    if cached is not None:
        return cached
    fs.write_json(fs.join(out, STAGE_MARKER), {"running": True}, **_JSON)
    cfg.cache_dir = fs.join(out, "cache")
    data_key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    splits, runs, hyps = None, {}, {}
    for n in names:
        model, params, tok = wise_ft.load_model(stages[n]["dir"])  # run or model dir
        if splits is None:  # every model shares the pre-trained model's tokenizer
            size = model.config.image_size
            splits = {r: _split(config.data, s, tok, size)
                      for r, s in (("train", train_split), ("test", test_split))}
            test_n = splits["test"][0].num_images
            n_test = min(test_n, cfg.max_test_images or test_n)
            test_caps = splits["test"][1][:n_test]
        enc = clip_image_encoder(model, params, int(cfg.encode_batch_size))
        fpr = params_fingerprint(params)
        emb, files = {}, {}
        for role, limit in (("train", 0), ("test", 0 if n_test == test_n else n_test)):
            s = splits[role][0]
            # the data config in the key: a shared pre-trained model on another data set
            key = f"{data_key}:{s.split}" + (f"[:{limit}]" if limit else "")
            images = _limited(s, int(cfg.encode_batch_size), limit)
            emb[role] = cached_image_embeddings(enc, images, cache_dir=cfg.cache_dir,
                                                fingerprint=fpr, split=key)
            files[role] = str(fs.path(_cache_path(cfg.cache_dir, fpr, key))
                              .relative_to(fs.path(out)))
        per_seed = []
        for s in seeds:
            cfg.seed = s
            t0 = time.perf_counter()
            metrics, _, h = captioning_from_embeddings(
                emb["train"], splits["train"][1], emb["test"], test_caps, tok, cfg, java=None)
            metrics["captioning/seconds"] = round(time.perf_counter() - t0, 1)
            per_seed.append(metrics)
            if s == seeds[0]:
                hyps[n] = h
        runs[n] = {"per_seed": per_seed, "mean": _agg(per_seed, np.mean),
                   "std": _agg(per_seed, lambda v: np.std(v, ddof=1) if len(v) > 1
                               else float("nan")),
                   "embeddings": files}
    num = min(int(cfg.num_samples), len(test_caps))
    result = {"seeds": seeds, "train_split": train_split, "test_split": test_split,
              "captioner": {k: cfg[k] for k in CAPTION_KNOBS + ("lr", "length_alpha")},
              "runs": runs,
              "samples": {"image": list(range(num)), "references": test_caps[:num],
                          "captions": {n: hyps[n][:num] for n in names},
                          "seed": seeds[0]}}
    fs.write_json(fs.join(out, "captioning.json"), result, **{**_JSON, "sort_keys": False})
    fs.write_json(fs.join(out, STAGE_MARKER), fp, **_JSON)
    return result


def _cache_path(cache_dir, fpr, key):
    from gmm_jax.captioning.cache import cache_file
    return cache_file(cache_dir, fpr, key)


def _limited(split, batch_size: int, limit: int):
    """A callable streaming the first ``limit`` (0 = all) images of ``split``."""
    from gmm_jax.captioning.suite import _take_images
    return _take_images(lambda: split.iter_images(batch_size), limit or split.num_images)


def _agg(rows: list[dict], fn) -> dict:
    return {k: float(fn(np.asarray([r[k] for r in rows], np.float64))) for k in rows[0]}


def captioning_markdown(result: dict) -> list[str]:
    """The report's captioning section: metrics side by side (mean ± std over seeds)
    and a few generated captions of each model beside the references."""
    from gmm_jax.report import better
    runs = result["runs"]
    seeds = result["seeds"]
    c = result["captioner"]
    spread = (f"mean ± sample std over captioner seeds {seeds}" if len(seeds) > 1
              else f"one captioner seed ({seeds[0]}): no interval")
    lines = ["## Captioning on frozen image embeddings", "",
             f"A ClipCap-style captioner (prefix {c['prefix_length']}, decoder width "
             f"{c['width']} x {c['layers']} layers, {c['steps']} steps of batch "
             f"{c['batch_size']}, beam {c['beam_size']}) trained on each model's image "
             f"embeddings of `{result['train_split']}` with the same budget, scored on "
             f"`{result['test_split']}` against all references ({spread}). "
             "The captioner sees only the image embedding, so the scores compare what the "
             "embeddings keep about the scene.", "",
             "| metric | better | " + " | ".join(runs) + " |",
             "| --- | :---: |" + " ---: |" * len(runs)]
    for k in CAPTION_KEYS:
        arrow = "↓" if k.endswith("train_loss") else better(k)
        cells = [_fmt(r["mean"][k]) + ("" if len(seeds) < 2 else f" ± {_fmt(r['std'][k])}")
                 for r in runs.values()]
        lines.append(f"| `{k}` | {arrow} | " + " | ".join(cells) + " |")
    s = result["samples"]
    lines += ["", f"Sample captions (seed {s['seed']}, the first images of "
              f"`{result['test_split']}`):", "",
              "| image | references | " + " | ".join(runs) + " |",
              "| --- | --- |" + " --- |" * len(runs)]
    for i, img in enumerate(s["image"]):
        refs = "<br>".join(_cell(r) for r in s["references"][i][:2])
        lines.append(f"| {img} | {refs} | "
                     + " | ".join(_cell(s["captions"][n][i]) for n in runs) + " |")
    return lines + [""]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(x) -> str:
    from gmm_jax.report import _fmt as fmt
    return fmt(x)
