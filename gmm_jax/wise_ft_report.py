"""The WiSE-FT report: which metrics are in- and out-of-distribution, ``wise_ft.json``,
``wise_ft.md`` and the two figures (matplotlib, Agg backend)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gmm_jax import paths  # noqa: E402
from gmm_jax.wise_ft import WiseFTError  # noqa: E402


def _zeroshot_keys(values: Mapping[str, float], suffix: str) -> list[str]:
    # evaluate() adds the zero-shot sets in config.eval.zeroshot.datasets order.
    return [k for k in values if k.startswith("zeroshot/") and k.endswith(suffix)
            and k.count("/") == 2]


def _keys(spec: str) -> list[str]:
    return [k.strip() for k in spec.split(",") if k.strip()] if spec else []


def choose_metrics(values: Mapping[str, float], id_metric: str = "", ood_metrics: str = "",
                   ece_metrics: str = "") -> tuple[str, list[str], list[str]]:
    """``(id_key, ood_keys, ece_keys)`` from flags (empty = default) and one alpha's
    flat metrics. Defaults: in-distribution = the first zero-shot set's top1 (the
    target, e.g. ImageNet or the demo's target_test), out-of-distribution = the mean top1
    of the other zero-shot sets (the shifts); without zero-shot sets, retrieval rsum on
    the eval split vs on ``retrieval.extra_splits``; no OOD metric when there is no other
    set (a held-out run for choosing alpha): the figure then shows ID vs alpha. ECE:
    ``calibration/ece`` and every zero-shot set's ECE present."""
    zs = _zeroshot_keys(values, "/top1")
    if id_metric:
        id_key = id_metric
    elif zs:
        id_key = zs[0]
    elif "retrieval/rsum" in values:
        id_key = "retrieval/rsum"
    else:
        raise WiseFTError("no default in-distribution metric (no zero-shot or retrieval "
                          "suite in config.eval.suites): set --id-metric")
    if ood_metrics:
        ood = _keys(ood_metrics)
    elif id_key in zs:
        ood = [k for k in zs if k != id_key]
    else:
        ood = [k for k in values if k.startswith("retrieval_") and k.endswith("/rsum")]
    ece = _keys(ece_metrics) or ([k for k in ("calibration/ece",) if k in values]
                                 + _zeroshot_keys(values, "/ece"))
    for flag, keys in (("--id-metric", [id_key]), ("--ood-metrics", ood),
                       ("--ece-metrics", ece)):
        missing = [k for k in keys if k not in values]
        if missing:
            raise WiseFTError(f"{flag}: metric {missing[0]!r} is not in the evaluation "
                              f"output; keys there: {sorted(values)}")
    return id_key, ood, ece


def _ood(row: Mapping[str, float], keys: Sequence[str]) -> float:
    return float(np.mean([row[k] for k in keys])) if keys else float("nan")


def _fmt(x: float) -> str:
    return "–" if x is None or math.isnan(x) else (f"{x:.2f}" if abs(x) >= 10 else f"{x:.4f}")


def markdown(result: Mapping, id_key: str, ood: Sequence[str], ece: Sequence[str]) -> str:
    ood_name = (ood[0] if len(ood) == 1 else f"mean of {', '.join(ood)}" if ood
                else "none (no other evaluation set)")
    lines = ["# WiSE-FT: weight-space ensembles", "",
             ("theta_alpha = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned; "
              f"temperature: {result.get('temperature', 'log(scale) interpolated')}."), "",
             f"- zero-shot model (alpha = 0): `{result.get('zeroshot', '?')}`",
             f"- in-distribution (ID): `{id_key}`",
             f"- out-of-distribution (OOD): `{ood_name}`", ""]
    for name, rows in result["metrics"].items():
        source = result.get("finetuned", {}).get(name, name)
        lines += [f"## {name}", "", f"fine-tuned model (alpha = 1): `{source}`", "",
                  "| alpha | ID | OOD | " + " | ".join(f"`{k}`" for k in ece) + " |",
                  "| ---: | ---: | ---: |" + " ---: |" * len(ece)]
        for a, row in zip(result["alphas"], rows):
            cells = [f"{a:g}", _fmt(row[id_key]), _fmt(_ood(row, ood))]
            cells += [_fmt(row[k]) for k in ece]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def id_ood_figure(result: Mapping, id_key: str, ood: Sequence[str], out_path: str) -> str:
    """OOD vs ID, one curve per fine-tuned run, points labelled by alpha; the zero-shot
    (alpha = 0) and fine-tuned (alpha = 1) endpoints marked. Without OOD metrics: ID vs
    alpha."""
    fig, ax = plt.subplots(figsize=(6, 4.8))
    alphas = list(result["alphas"])

    def xy(rows):
        if ood:
            return [r[id_key] for r in rows], [_ood(r, ood) for r in rows]
        return alphas, [r[id_key] for r in rows]

    for i, (name, rows) in enumerate(result["metrics"].items()):
        colour = f"C{i}"
        x, y = xy(rows)
        ax.plot(x, y, "-o", c=colour, ms=4, label=name)
        for a, xi, yi in zip(alphas, x, y):
            ax.annotate(f"{a:g}", (xi, yi), textcoords="offset points", xytext=(4, 3),
                        fontsize=7, color=colour)
            if a == 1.0:
                ax.scatter([xi], [yi], marker="s", s=70, c=colour, edgecolors="k", zorder=3)
    x0, y0 = xy(next(iter(result["metrics"].values())))
    for a, xi, yi in zip(alphas, x0, y0):
        if a == 0.0:
            ax.scatter([xi], [yi], marker="*", s=180, c="k", zorder=4,
                       label="zero-shot (alpha = 0)")
    ax.scatter([], [], marker="s", c="w", edgecolors="k", label="fine-tuned (alpha = 1)")
    if ood:
        ax.set_xlabel(f"in-distribution: {id_key}")
        ax.set_ylabel("out-of-distribution: " + (ood[0] if len(ood) == 1 else
                                                 f"mean of {len(ood)} metrics"))
    else:
        ax.set_xlabel("alpha")
        ax.set_ylabel(f"in-distribution: {id_key}")
    ax.set_title("WiSE-FT: weight-space ensembles", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_path)


def ece_figure(result: Mapping, ece: Sequence[str], out_path: str) -> str:
    """ECE (percent) vs alpha: one panel per ECE metric, one line per run."""
    n = max(len(ece), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False)
    for ax, key in zip(axes[0], ece):
        for i, (name, rows) in enumerate(result["metrics"].items()):
            ax.plot(result["alphas"], [100 * r[key] for r in rows], "-o", ms=3, c=f"C{i}",
                    label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("alpha"), ax.set_ylabel("ECE (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not ece:
        axes[0][0].set_axis_off()
        axes[0][0].set_title("no ECE metric (calibration/zeroshot suites off)", fontsize=9)
    return _save(fig, out_path)


def write(result: Mapping, out_dir: str, id_metric: str = "", ood_metrics: str = "",
          ece_metrics: str = "") -> str:
    """Write ``wise_ft.json``, ``wise_ft.md``, ``wise_ft_id_ood.png`` and
    ``wise_ft_ece.png`` to ``out_dir``; returns the markdown."""
    path = paths.join(out_dir, "wise_ft.json")

    def dump(data):
        paths.write_json(path, data, indent=1, allow_nan=True)

    dump(result)  # first without the metric choice: a bad flag loses no evaluation
    first = next(iter(result["metrics"].values()))[0]
    id_key, ood, ece = choose_metrics(first, id_metric, ood_metrics, ece_metrics)
    dump({**result, "id_metric": id_key, "ood_metrics": list(ood), "ece_metrics": list(ece)})
    md = markdown(result, id_key, ood, ece)
    paths.write_text(paths.join(out_dir, "wise_ft.md"), md + "\n")
    id_ood_figure(result, id_key, ood, paths.join(out_dir, "wise_ft_id_ood.png"))
    ece_figure(result, ece, paths.join(out_dir, "wise_ft_ece.png"))
    return md


def _save(fig, out_path: str) -> str:
    fig.tight_layout()
    paths.save_figure(fig, out_path, dpi=110)
    plt.close(fig)
    return out_path
