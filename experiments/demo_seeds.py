r"""The demo's comparison repeated over fine-tuning seeds: mean and standard deviation.

    python experiments/demo_seeds.py [--config=configs/demo.py] [--workdir=runs/demo_seeds] \
        [--seeds=0,1,2] [--config.demo.pretrain_dir=runs/demo/pretrain] [--config.X=...]

As in the paper (one pre-trained CLIP, fine-tuned with several seeds), the pre-training
is shared: it runs once (or is reused from ``--config.demo.pretrain_dir``, e.g. the one
``python train.py --config=configs/demo.py`` left in ``runs/demo/pretrain``); each seed
is a full demo flow (``gmm_jax.demo_flow.run`` with ``config.seed = s``) in
``WORKDIR/seed<s>``, so finished seeds are reused. The seed sets the fine-tuning data
order and the m2-Mix lambda draws.

Writes ``WORKDIR/seeds_report.json``:

    {"seeds": [...], "runs": {run: {metric: {"mean", "std", "values"}}},
     "vs_ft": {run: {metric: {"mean", "std", "better", "n"}}}, "commands": [...]}

(``std`` is the sample standard deviation, ddof=1; ``vs_ft`` is the per-seed paired
difference run - ft and ``better`` the number of seeds where the run beats ft in the
metric's better direction) and ``seeds_report.md``, the same as tables.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "demo.py"), "Demo config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_seeds", "Output directory.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Fine-tuning seeds, comma-separated.")


def _stats(values):
    vals = [float(v) for v in values]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "values": vals}


def aggregate(reports: dict, baseline: str = "ft") -> dict:
    """``reports``: seed -> demo_report.json content. Returns the seeds report dict."""
    from gmm_jax import report as R
    seeds = list(reports)
    names = list(next(iter(reports.values()))["runs"])
    runs, vs = {}, {}
    for name in names:
        keys = sorted(set.intersection(*(set(reports[s]["runs"][name]) for s in seeds)))
        runs[name] = {k: _stats([reports[s]["runs"][name][k] for s in seeds]) for k in keys}
        if name == baseline or baseline not in names or name == "pretrained":
            continue
        vs[name] = {}
        for k in keys:
            if k not in runs[baseline]:
                continue
            diffs = [reports[s]["runs"][name][k] - reports[s]["runs"][baseline][k] for s in seeds]
            arrow = R.better(k)
            better = (sum(d > 0 for d in diffs) if arrow == "↑" else
                      sum(d < 0 for d in diffs) if arrow == "↓" else None)
            vs[name][k] = {**_stats(diffs), "better": better, "n": len(diffs)}
    return {"seeds": seeds, "runs": runs, "vs_" + baseline: vs}


def _fmt(x):
    return f"{x:.2f}" if abs(x) >= 10 else f"{x:.4f}"


def markdown(agg: dict, keys, title: str, baseline: str = "ft") -> str:
    from gmm_jax import report as R
    names = list(agg["runs"])
    others = list(agg.get("vs_" + baseline, {}))
    head = (["metric", "better"] + [f"{n} (mean ± std)" for n in names]
            + [f"{o} − {baseline}" for o in others] + [f"{o} better in" for o in others])
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |",
             "| --- | :---: | " + " | ".join("---:" for _ in head[2:]) + " |"]
    for k in keys:
        cells = [f"`{k}`", R.better(k)]
        for n in names:
            s = agg["runs"][n].get(k)
            cells.append(f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" if s else "–")
        for o in others:
            d = agg["vs_" + baseline][o].get(k)
            cells.append(f"{d['mean']:+.4g} ± {d['std']:.2g}" if d else "–")
        for o in others:
            d = agg["vs_" + baseline][o].get(k)
            cells.append(f"{d['better']}/{d['n']}" if d and d["better"] is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        sys.exit(f"demo_seeds.py: error: unexpected arguments {argv[1:]}")
    import logging

    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("gmm_jax").setLevel(logging.INFO)
    from gmm_jax import demo_flow
    config = _CONFIG.value
    if "demo" not in config:
        sys.exit("demo_seeds.py: error: --config has no demo section (use configs/demo.py)")
    workdir = os.path.abspath(_WORKDIR.value)
    seeds = [int(s) for s in _SEEDS.value.split(",") if s.strip()]
    if len(seeds) < 2:
        sys.exit("demo_seeds.py: error: --seeds needs at least two seeds for a std")
    cmd = " ".join(["python experiments/demo_seeds.py"] + sys.argv[1:])
    t0 = time.perf_counter()
    if not config.demo.pretrain_dir:
        config.demo.pretrain_dir = os.path.join(workdir, "pretrain")
    reports = {}
    for s in seeds:
        cfg = demo_flow.base_config(config)  # copy; the demo section goes back on below
        with cfg.unlocked():
            cfg.demo = config.demo
        cfg.seed = s
        print(f"\n######## seed {s} ({seeds.index(s) + 1}/{len(seeds)})", flush=True)
        try:
            out = demo_flow.run(cfg, os.path.join(workdir, f"seed{s}"),
                                command=f"{cmd}  [seed {s}]")
        except demo_flow.DemoError as e:
            sys.exit(f"demo_seeds.py: error: {e}")
        with open(out["report"]["json"]) as f:
            reports[s] = json.load(f)
    agg = aggregate(reports)
    agg["command"] = cmd
    agg["seconds"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(workdir, "seeds_report.json"), "w") as f:
        json.dump(agg, f, indent=1)
    some = next(iter(agg["runs"].values()))
    head = [k for k in demo_flow.HEADLINE if k in some]
    md = [f"# Demo over seeds {seeds}", "",
          f"Command: `{cmd}` ({agg['seconds']:.0f} s)", "",
          "Mean ± sample std (ddof=1) over the fine-tuning seeds; the pre-trained model is "
          "shared (std 0). `X − ft`: paired per-seed difference; `better in`: seeds where X "
          "beats ft in the metric's better direction.", "",
          markdown(agg, head, "Headline metrics"),
          markdown(agg, sorted(some), "All metrics")]
    with open(os.path.join(workdir, "seeds_report.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md[:6]) + markdown(agg, head, "Headline metrics"))
    print(f"wrote {os.path.join(workdir, 'seeds_report.md')} and seeds_report.json")


if __name__ == "__main__":
    app.run(main)
