"""Metric reports: one run's ``metrics.json``/``metrics.md``, and several runs side by side."""
from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

from gmm_jax import paths

# Which way is better, by key pattern (first match wins); unknown keys get no arrow.
_LOWER = ("gap/centroid_distance", "gap/linear_separability", "gap/uniformity",
          "gap/alignment", "gap/relative_alignment", "/ece")
_NEUTRAL = ("_std", "/scale", "best_lambda", "num_queries", "/num_")


def better(key: str) -> str:
    """'↓' when lower is better, '↑' when higher is, '' when neither applies."""
    if any(p in key for p in _NEUTRAL):
        return ""
    if any(key.endswith(p) or (p.startswith("/") and p in key) for p in _LOWER):
        return "↓"
    return "↑"


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, float)):
        return f"{x:.2f}" if abs(x) >= 10 else f"{x:.4f}"
    return str(x)


def write_metrics(values: Mapping[str, float], out_dir: str,
                  title: str = "Evaluation") -> tuple[str, str]:
    """Write ``metrics.json`` (flat, sorted keys) and ``metrics.md``; return both paths."""
    json_path, md_path = paths.join(out_dir, "metrics.json"), paths.join(out_dir, "metrics.md")
    paths.write_json(json_path, {k: values[k] for k in sorted(values)}, indent=1, allow_nan=True)
    lines = [f"# {title}", "", "| metric | value | better |", "| --- | ---: | :---: |"]
    lines += [f"| `{k}` | {_fmt(values[k])} | {better(k)} |" for k in sorted(values)]
    paths.write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path


def load_metrics(run_dir: str) -> dict:
    """``run_dir/metrics.json`` as a dict, with a clear error if missing or malformed."""
    path = paths.join(run_dir, "metrics.json") if paths.isdir(run_dir) else run_dir
    if not paths.exists(path):
        raise FileNotFoundError(f"no metrics.json in {run_dir!r}: evaluate that run first "
                                "(python eval.py ... --out DIR)")
    try:
        data = paths.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metric -> value")
    return data


def _run_names(dirs: Sequence[str]) -> list[str]:
    """Short unique names for run directories: the shortest distinguishing path tail."""
    parts = [paths.absolute(d).rstrip("/").split("/") for d in dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{n}#{i}" for i, n in enumerate(names)]


def compare_runs(runs, out_path: str | None = None, title: str = "Runs side by side",
                 keys: Sequence[str] | None = None) -> tuple[str, dict]:
    """Side-by-side table of several runs.

    Args:
      runs: a list of eval output directories (each with ``metrics.json``), or a
        mapping ``name -> directory or metrics dict``; order is kept.
      out_path: where to write; an existing directory gets ``compare.md`` and
        ``compare.json``, any other path is a prefix (``.md``/``.json`` appended,
        a given ``.md``/``.json`` suffix is dropped first). None writes nothing.
      keys: metrics to show (default: the union over runs, sorted).
    Returns:
      ``(markdown, {"runs": {name: metrics}})``.
    """
    if isinstance(runs, Mapping):
        items = list(runs.items())
    else:
        runs = list(runs)
        items = list(zip(_run_names([str(r) for r in runs]), runs))
    if not items:
        raise ValueError("compare_runs: no runs given")
    table = {name: (dict(r) if isinstance(r, Mapping) else load_metrics(str(r)))
             for name, r in items}
    keys = list(keys) if keys is not None else sorted({k for m in table.values() for k in m})
    names = list(table)
    lines = [f"# {title}", "", "| metric | better | " + " | ".join(names) + " |",
             "| --- | :---: | " + " | ".join("---:" for _ in names) + " |"]
    for k in keys:
        vals = [table[n].get(k) for n in names]
        cells = [_fmt(v) for v in vals]
        arrow = better(k)
        nums = [v for v in vals if isinstance(v, (int, float)) and not math.isnan(v)]
        if arrow and len(nums) > 1 and len(set(nums)) > 1:  # bold the best run
            best = min(nums) if arrow == "↓" else max(nums)
            cells = [f"**{c}**" if v == best else c for c, v in zip(cells, vals)]
        lines.append(f"| `{k}` | {arrow} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    result = {"runs": table}
    if out_path is not None:
        if paths.isdir(out_path):
            prefix = paths.join(out_path, "compare")
        else:
            prefix = out_path[:-3] if out_path.endswith(".md") else (
                out_path[:-5] if out_path.endswith(".json") else out_path)
        paths.write_text(prefix + ".md", markdown)
        paths.write_json(prefix + ".json", result, indent=1, allow_nan=True)
    return markdown, result
