r"""The demo's comparison over a grid of config keys x fine-tuning seeds (the paper's sweep).

    python experiments/sweep.py --workdir=runs/sweep --seeds=0,1,2,3,4 \
        --grid="loss.c_m2=0.001,0.005,0.01,0.05;optim.lr=1e-4,3e-4" \
        [--config.demo.runs=ft,m2mix,m3mix,cua] [--config.X=...]

Each cell of the grid (one value per key) and seed is a full demo flow
(``demo_flow.run`` with the cell's overrides and ``config.seed = s``) in
``WORKDIR/<cell>/seed<s>``, from the same pre-trained model: the shipped demo CLIP,
evaluated once into ``WORKDIR/pretrain/eval`` (or ``--config.demo.pretrain_dir``), or with
``--config.demo.pretrain.rebuild=True`` one pre-training there, shared by every cell and
seed (grid keys change fine-tuning only). Resumable: a cell-seed whose
``demo_report.json`` was written for the same overrides is read back, not rerun (and
``demo_flow`` itself reuses finished stages of an interrupted one). Cells run one after
another: on a 2-core machine two trainings at once are no faster.

Writes ``WORKDIR/sweep_report.json`` (per cell: ``runs.<run>.<metric> = {mean, std,
values}``, ``vs_ft.<run>.<metric> = {mean, lo, hi, n, excludes_zero}``: the paired
per-seed difference with ft and its 95% Student-t interval, see
``gmm_jax.paired_stats``), ``sweep_report.md`` (one table per headline metric) and
``sweep_<metric>.png`` (one figure per headline metric: mean ± std over seeds per cell)
and ``sweep_vs_ft_<cell>.png`` (per cell: every run's paired difference with ft and its
95% interval, one panel per metric); with a two-key grid also
``sweep_grid_<run>_vs_ft.png`` (one heatmap per metric of the run's paired difference
over the grid).
With the demo's captioning stage on, ``--metrics`` may name ``captioning/*`` keys (each
run's captioner, mean over ``config.demo.captioning.seeds``).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from typing import Callable, Optional

from absl import app, flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

FLAGS = flags.FLAGS
DEFAULT_METRICS = ("retrieval/i2t_r1,retrieval/t2i_r1,retrieval/rsum,"
                   "zeroshot/gmm_demo_target_test/top1,calibration/ece,gap/centroid_distance")


def define_flags():
    """Only when run as a script (importing this module for its functions defines none)."""
    config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "demo.py"),
                                    "Demo config file.", lock_config=True)
    flags.DEFINE_string("workdir", "runs/sweep", "Output directory.")
    flags.DEFINE_string("seeds", "0,1,2,3,4", "Fine-tuning seeds, comma-separated.")
    flags.DEFINE_string("grid", "loss.c_m2=0.001,0.005,0.01,0.05",
                        "KEY=V1,V2,...;KEY2=... (config keys, ';'-separated)")
    flags.DEFINE_string("metrics", DEFAULT_METRICS,
                        "Headline metrics: one table and one figure each.")
    flags.DEFINE_string("report_runs", "",
                        "Runs shown in the reports, comma-separated (default: all; ft is "
                        "kept for the paired differences). Cells are not rerun.")


BASELINE = "ft"


def parse_grid(text: str) -> dict[str, list]:
    """``"a.b=1,2;c=x"`` -> ``{"a.b": [1, 2], "c": ["x"]}`` (numbers parsed)."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--grid: {part!r} is not KEY=V1,V2,...")
        grid[key.strip()] = [_value(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(v, v)


def cells(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in order."""
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def cell_name(cell: dict) -> str:
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in cell.items()) or "default"


def apply(config, cell: dict, seed: int):
    """A copy of ``config`` (demo section kept) with the cell's keys and the seed set;
    an unknown key is an error naming it."""
    import copy
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        for key, v in cell.items():
            *path, last = key.split(".")
            node = cfg
            for p in path:
                node = node[p]
            if last not in node:
                raise KeyError(f"--grid: unknown config key {key!r}")
            node[last] = type(node[last])(v) if isinstance(node[last], float) else v
        cfg.seed = seed
    return cfg


def config_id(config) -> str:
    """A short hash of the sweep's base config (progress display left out): a finished
    cell-seed is reused only for the same base config, not just the same cell."""
    import hashlib
    d = json.loads(config.to_json_best_effort(sort_keys=True))
    d.pop("progress_bar", None)
    d.get("eval", {}).pop("progress", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def run_grid(config, workdir: str, grid: dict, seeds: list[int],
             run_one: Callable[[object, str], dict]) -> dict:
    """``{cell_name: {seed: demo report}}``; ``run_one(cfg, dir)`` returns a demo report
    and is skipped when ``dir/sweep_cell.json`` records the same overrides and the report
    exists (and the base config, ``config_id``, and the demo world's version are the
    same)."""
    from gmm_jax.data import demo as demo_data
    world = str(demo_data.GmmDemo.VERSION)  # a new world reruns every cell
    out = {}
    for cell in cells(grid):
        name = cell_name(cell)
        out[name] = {}
        for s in seeds:
            d = os.path.join(workdir, name, f"seed{s}")
            marker, report = os.path.join(d, "sweep_cell.json"), os.path.join(
                d, "demo_report.json")
            want = {"cell": cell, "seed": s, "config": config_id(config), "world": world}
            if os.path.exists(report) and _with_world(_read(marker)) == want:
                out[name][s] = _read(report)
                continue
            print(f"\n######## {name} seed {s}", flush=True)
            out[name][s] = run_one(apply(config, cell, s), d)
            os.makedirs(d, exist_ok=True)
            with open(marker, "w") as f:
                json.dump(want, f)
    return out


def _with_world(marker):
    """A cell marker with its world version; markers from before the version was recorded
    were all written for gmm_demo 4.0.0 or older."""
    return marker if marker is None or "world" in marker else {**marker, "world": "4.0.0"}


def _read(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_metrics(report: dict, run: str) -> dict:
    """A run's flat metrics in a demo report: its evaluation and, when the captioning stage
    ran, its captioners' scores (``captioning/*``, the mean over captioner seeds)."""
    captioning = ((report.get("captioning") or {}).get("runs") or {}).get(run) or {}
    return {**report["runs"][run], **captioning.get("mean", {})}


def keep_runs(results: dict, names: list[str], baseline: str = BASELINE) -> dict:
    """``results`` with only the runs ``names`` (and ``baseline``) in every report, in the
    reports' order; an unknown name is an error naming it."""
    if not names:
        return results
    reports = [rep for by_seed in results.values() for rep in by_seed.values()]
    unknown = sorted({n for n in names for rep in reports if n not in rep["runs"]})
    if unknown:
        raise ValueError(f"--report_runs: {unknown} not in the sweep's runs "
                         f"{list(reports[0]['runs'])}")
    keep = set(names) | {baseline}
    return {cell: {s: {**rep, "runs": {r: m for r, m in rep["runs"].items() if r in keep}}
                   for s, rep in by_seed.items()} for cell, by_seed in results.items()}


def aggregate(results: dict, metrics: list[str], baseline: str = BASELINE) -> dict:
    """Per cell: mean/std over seeds per run and metric, and each run's paired difference
    with ``baseline`` with its 95% t interval."""
    import numpy as np

    from gmm_jax import paired_stats
    agg = {}
    for name, by_seed in results.items():
        seeds = sorted(by_seed)
        runs = list(by_seed[seeds[0]]["runs"])
        cell = {"runs": {}, "vs_" + baseline: {}}
        for r in runs:
            flat = [run_metrics(by_seed[s], r) for s in seeds]
            vals = {k: [m[k] for m in flat] for k in metrics if all(k in m for m in flat)}
            cell["runs"][r] = {k: {"mean": float(np.mean(v)),
                                   # equal values (the pre-trained model's, one per seed)
                                   # have std 0, not np.std's rounding residue (1e-16)
                                   "std": float(np.std(v, ddof=1)) if len(set(v)) > 1 else 0.0,
                                   "values": [float(x) for x in v]} for k, v in vals.items()}
        for r in runs:
            if r in (baseline, "pretrained") or baseline not in runs or len(seeds) < 2:
                continue
            cell["vs_" + baseline][r] = {}
            for k in cell["runs"][r]:
                if k in cell["runs"][baseline]:
                    iv = paired_stats.t_interval(cell["runs"][r][k]["values"],
                                                 cell["runs"][baseline][k]["values"])
                    cell["vs_" + baseline][r][k] = {**iv._asdict(),
                                                    "excludes_zero": iv.excludes_zero()}
        agg[name] = cell
    return agg


def _shown_mean(d) -> float:
    """A paired difference's mean, 0 where it is only the rounding residue of differences
    like 75.9 - 75.8 - 0.1 (1e-15, far below its interval), not an effect."""
    return 0.0 if abs(d["mean"]) < 1e-9 * max(abs(d["lo"]), abs(d["hi"])) else d["mean"]


def _difference(d) -> str:
    """A paired difference as ``+mean [lo, hi]`` (`` *`` when the interval excludes zero);
    ``–`` when missing."""
    if not d:
        return "–"
    return (f"{_shown_mean(d):+.3g} [{d['lo']:+.3g}, {d['hi']:+.3g}]"
            + (" *" if d["excludes_zero"] else ""))


def markdown(agg: dict, metric: str, baseline: str = BASELINE) -> str:
    """One table: rows = cells, columns = runs (mean ± std) and run − baseline [95% CI]."""
    from gmm_jax.report import better
    runs = list(next(iter(agg.values()))["runs"])
    others = [r for r in runs if r not in (baseline, "pretrained")]
    head = ["cell"] + [f"{r}" for r in runs] + [f"{o} − {baseline} [95% CI]" for o in others]
    lines = [f"### `{metric}` ({better(metric)})", "", "| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    for name, cell in agg.items():
        row = [name]
        for r in runs:
            s = cell["runs"][r].get(metric)
            row.append(f"{s['mean']:.4g} ± {s['std']:.2g}" if s else "–")
        for o in others:
            row.append(_difference(cell["vs_" + baseline].get(o, {}).get(metric)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def differences_table(agg: dict, metrics: list[str], run: str,
                      baseline: str = BASELINE) -> str:
    """A grid at a glance: rows = cells, columns = metrics, entries = ``run``'s paired
    difference with ``baseline`` [95% CI] (``*``: the interval excludes zero)."""
    from gmm_jax.report import better
    head = ["cell"] + [f"`{m}` {better(m)}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    for name, cell in agg.items():
        row = [name]
        for m in metrics:
            row.append(_difference(cell["vs_" + baseline].get(run, {}).get(m)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def cell_table(cell: dict, metrics: list[str], baseline: str = BASELINE) -> str:
    """One cell as one table: rows = metrics, columns = runs (mean ± std) and each run's
    paired difference with ``baseline`` [95% CI] (``*``: the interval excludes zero)."""
    from gmm_jax.report import better
    runs = list(cell["runs"])
    others = [r for r in runs if r not in (baseline, "pretrained")]
    head = ["metric", "better"] + runs + [f"{o} − {baseline} [95% CI]" for o in others]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | :---: | " + " | ".join("---:" for _ in head[2:]) + " |"]
    for m in metrics:
        row = [f"`{m}`", better(m)]
        for r in runs:
            st = cell["runs"][r].get(m)
            row.append(f"{st['mean']:.4g} ± {st['std']:.2g}" if st else "–")
        for o in others:
            row.append(_difference(cell["vs_" + baseline].get(o, {}).get(m)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def figure(agg: dict, metric: str, out_path: str) -> str:
    """Mean ± std over seeds of every run, per cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(agg)
    runs = list(next(iter(agg.values()))["runs"])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.2))
    width = 0.8 / max(len(runs), 1)
    for i, r in enumerate(runs):
        stats = [agg[n]["runs"][r].get(metric, {"mean": float("nan"), "std": 0.0})
                 for n in names]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))]
        ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats],
                    fmt="o", capsize=3, label=r)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(metric, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def difference_figure(cell: dict, metrics: list[str], out_path: str,
                      baseline: str = BASELINE) -> str:
    """One panel per metric: each run's paired difference with ``baseline`` (mean and 95%
    interval over seeds), a line at zero; filled where the interval excludes zero."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gmm_jax.report import better
    diffs = cell["vs_" + baseline]
    runs = list(diffs)
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 0.35 * len(runs) * rows + 1.0),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes.flat, metrics):
        for y, r in enumerate(runs):
            d = diffs[r].get(m)
            if d is None:
                continue
            ax.errorbar([d["mean"]], [y], xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]],
                        fmt="o", capsize=3, color=f"C{y}",
                        mfc=f"C{y}" if d["excludes_zero"] else "white")
        ax.axvline(0.0, color="0.5", lw=0.8)
        ax.set_title(f"{m} {better(m)}", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    axes[0, 0].set_yticks(range(len(runs)), [f"{r} − {baseline}" for r in runs])
    axes[0, 0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def grid_matrix(agg: dict, grid: dict, metric: str, run: str, baseline: str = BASELINE):
    """A two-key grid's paired differences as matrices (rows: the first key's values,
    columns: the second's): ``(means, excludes_zero)``, NaN / False where missing."""
    import numpy as np
    (k1, v1s), (k2, v2s) = grid.items()
    means = np.full((len(v1s), len(v2s)), np.nan)
    excl = np.zeros(means.shape, bool)
    for i, v1 in enumerate(v1s):
        for j, v2 in enumerate(v2s):
            cell = agg.get(cell_name({k1: v1, k2: v2}), {})
            d = cell.get("vs_" + baseline, {}).get(run, {}).get(metric)
            if d:
                means[i, j], excl[i, j] = _shown_mean(d), d["excludes_zero"]
    return means, excl


def grid_figure(agg: dict, grid: dict, metrics: list[str], run: str, out_path: str,
                baseline: str = BASELINE) -> str:
    """One heatmap per metric of ``run − baseline`` over a two-key grid; green where the
    run is better (by the metric's direction), purple where worse, each square labelled
    with the difference (``*``: its 95% interval excludes zero)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gmm_jax.report import better
    (k1, v1s), (k2, v2s) = grid.items()
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(1.0 * len(v2s) * cols + 1.5, 0.55 * len(v1s) * rows + 1.0))
    for ax, m in zip(axes.flat, metrics):
        means, excl = grid_matrix(agg, grid, m, run, baseline)
        gain = means * (-1.0 if better(m) == "↓" else 1.0)
        lim = np.nanmax(np.abs(gain)) if np.isfinite(gain).any() else 1.0
        ax.imshow(gain, cmap="PiYG", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(means):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.2g}" + ("*" if excl[i, j] else ""), ha="center",
                        va="center", fontsize=6)
        ax.set_title(f"{m} {better(m)}", fontsize=7)
        ax.set_xticks(range(len(v2s)), [str(v) for v in v2s], fontsize=6)
        ax.set_yticks(range(len(v1s)), [str(v) for v in v1s], fontsize=6)
        ax.set_xlabel(k2.split(".")[-1], fontsize=7)
        ax.set_ylabel(k1.split(".")[-1], fontsize=7)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{run} − {baseline} (mean over seeds; * = 95% interval excludes zero)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_reports(workdir: str, results: dict, metrics: list[str], command: str,
                  grid: Optional[dict] = None) -> dict:
    """The JSON and Markdown reports and their figures; with a two-key ``grid``, also one
    heatmap figure per compared run."""
    agg = aggregate(results, metrics)
    with open(os.path.join(workdir, "sweep_report.json"), "w") as f:
        json.dump({"command": command, "cells": agg}, f, indent=1)
    md = ["# Demo sweep", "", f"Command: `{command}`", "",
          "Mean ± sample std over the fine-tuning seeds; `X − ft`: mean paired per-seed "
          "difference with its 95% Student-t interval, `*` where it excludes zero.", ""]
    figs = {}
    for name, cell in agg.items():
        md += [f"## Cell `{name}`", "", cell_table(cell, metrics)]
        if cell["vs_" + BASELINE]:
            path = os.path.join(workdir, f"sweep_vs_{BASELINE}_{name}.png".replace("/", "_"))
            figs[f"vs_{BASELINE}/{name}"] = difference_figure(cell, metrics, path)
            md.append(f"![{name}: paired differences with {BASELINE}]({os.path.basename(path)})\n")
    if len(agg) > 1:
        runs = sorted({r for cell in agg.values() for r in cell["vs_" + BASELINE]},
                      key=list(next(iter(agg.values()))["runs"]).index)
        for r in runs:
            md += [f"## `{r}` − `{BASELINE}` in every cell", "",
                   differences_table(agg, metrics, r)]
            if grid and len(grid) == 2:
                path = os.path.join(workdir, f"sweep_grid_{r}_vs_{BASELINE}.png")
                figs[f"grid/{r}"] = grid_figure(agg, grid, metrics, r, path)
                md.append(f"![{r} − {BASELINE} over the grid]({os.path.basename(path)})\n")
    md += ["## Per metric", ""]
    for m in metrics:
        md.append(markdown(agg, m))
        figs[m] = figure(agg, m, os.path.join(workdir, "sweep_" + m.replace("/", "_") + ".png"))
        md.append(f"![{m}]({os.path.basename(figs[m])})\n")
    with open(os.path.join(workdir, "sweep_report.md"), "w") as f:
        f.write("\n".join(md))
    return {"agg": agg, "figures": figs}


def main(argv):
    if len(argv) > 1:
        sys.exit(f"sweep.py: error: unexpected arguments {argv[1:]}")
    from gmm_jax import demo_flow
    config = FLAGS.config
    if "demo" not in config:
        sys.exit("sweep.py: error: --config has no demo section (use configs/demo.py)")
    workdir = os.path.abspath(FLAGS.workdir)
    os.makedirs(workdir, exist_ok=True)
    seeds = [int(s) for s in FLAGS.seeds.split(",") if s.strip()]
    metrics = [m.strip() for m in FLAGS.metrics.split(",") if m.strip()]
    try:
        grid = parse_grid(FLAGS.grid)
        for c in cells(grid):
            apply(config, c, 0)  # unknown keys fail before anything runs
    except (KeyError, ValueError) as e:
        sys.exit(f"sweep.py: error: {e}")
    # One pre-training (or, with the shipped model, one evaluation of it) shared by every
    # cell and seed.
    if not config.demo.pretrain_dir:
        config.demo.pretrain_dir = os.path.join(workdir, "pretrain")
    cmd = " ".join(["python experiments/sweep.py"] + sys.argv[1:])
    t0 = time.perf_counter()

    def run_one(cfg, d):
        demo_flow.run(cfg, d, command=cmd)
        return _read(os.path.join(d, "demo_report.json"))

    shown = [r.strip() for r in FLAGS.report_runs.split(",") if r.strip()]
    unknown = [r for r in shown if r not in ["pretrained"] + demo_flow.run_names(config)]
    if unknown:  # before anything runs
        sys.exit(f"sweep.py: error: --report_runs: {unknown} not in pretrained or "
                 f"--config.demo.runs={config.demo.runs}")
    results = keep_runs(run_grid(config, workdir, grid, seeds, run_one), shown)
    write_reports(workdir, results, metrics, cmd, grid)
    print(f"sweep finished in {time.perf_counter() - t0:.0f} s: "
          f"{os.path.join(workdir, 'sweep_report.md')}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
