"""Evaluation figures (matplotlib, Agg backend: no display needed).

- ``gap_projection``: 2-D PCA of image and text embeddings, pairs joined by faint
  lines, centroids marked: the modality gap as a picture.
- ``reliability_diagram``: accuracy vs confidence per bin, with the diagonal.
- ``recall_chart``: R@K bars, both directions.
- ``gap_figure_side_by_side``: two or more runs' gap pictures in one PNG.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gmm_jax import paths  # noqa: E402
from gmm_jax.metrics import unit_rows  # noqa: E402

IMAGE_COLOUR, TEXT_COLOUR = "#1f77b4", "#d62728"


def pca_2d(x) -> np.ndarray:
    """Project rows of ``x`` (N, D) onto their top two principal axes -> (N, 2)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def _draw_gap(ax, v, t, title: str, max_pairs: int = 300, gap: float | None = None):
    v, t = unit_rows(v, np.float64), unit_rows(t, np.float64)
    n = min(len(v), max_pairs)
    # One joint projection so distances between the modalities are comparable.
    p = pca_2d(np.concatenate([v[:n], t[:n]]))
    pv, pt = p[:n], p[n:]
    segs = np.stack([pv, pt], axis=1)
    from matplotlib.collections import LineCollection
    ax.add_collection(LineCollection(segs, colors="0.5", alpha=0.15, linewidths=0.5))
    ax.scatter(pv[:, 0], pv[:, 1], s=6, c=IMAGE_COLOUR, alpha=0.7, label="image")
    ax.scatter(pt[:, 0], pt[:, 1], s=6, c=TEXT_COLOUR, alpha=0.7, label="text")
    ax.scatter(*pv.mean(0), marker="X", s=90, c=IMAGE_COLOUR, edgecolors="k")
    ax.scatter(*pt.mean(0), marker="X", s=90, c=TEXT_COLOUR, edgecolors="k")
    if gap is None:
        gap = float(np.linalg.norm(v.mean(0) - t.mean(0)))
    ax.set_title(f"{title}\ncentroid gap {gap:.3f} ({n} pairs, PCA)", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    ax.legend(loc="best", fontsize=7, markerscale=2)
    ax.set_aspect("equal", adjustable="datalim")


def gap_projection(v, t, out_path: str, title: str = "image vs text embeddings",
                   max_pairs: int = 300) -> str:
    """Write the gap picture of paired embeddings ``v, t`` (N, D) to ``out_path``."""
    fig, ax = plt.subplots(figsize=(5, 5))
    _draw_gap(ax, v, t, title, max_pairs)
    return _save(fig, out_path)


def gap_figure_side_by_side(runs: Mapping[str, object], out_path: str,
                            max_pairs: int = 300) -> str:
    """Gap pictures of several runs side by side.

    ``runs`` maps a run name to ``(v, t)`` arrays or to an eval output directory
    holding ``embeddings.npz`` (written by ``eval_lib.evaluate``).
    """
    if not runs:
        raise ValueError("gap_figure_side_by_side: no runs given")
    loaded = {}
    for name, run in runs.items():
        if isinstance(run, (str, os.PathLike)):
            path = paths.join(run, "embeddings.npz")
            if not paths.exists(path):
                raise FileNotFoundError(f"run {name!r}: {path} not found (evaluate with the "
                                        "geometry suite writes it)")
            z = paths.load_npz(path)
            loaded[name] = (z["image"], z["text"])
        else:
            loaded[name] = run
    fig, axes = plt.subplots(1, len(loaded), figsize=(4.5 * len(loaded), 4.8), squeeze=False)
    for ax, (name, (v, t)) in zip(axes[0], loaded.items()):
        _draw_gap(ax, v, t, name, max_pairs)
    return _save(fig, out_path)


def reliability_diagram(bins: Mapping[str, Mapping], out_path: str,
                        title: str = "reliability") -> str:
    """One panel per entry of ``bins`` (name -> ``metrics.reliability_bins`` output)."""
    cols = min(len(bins), 3)
    rows = -(-len(bins) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(bins):]:
        ax.set_axis_off()
    for ax, (name, b) in zip(axes.flat, bins.items()):
        edges = np.asarray(b["edges"])
        width = np.diff(edges)
        acc = np.nan_to_num(np.asarray(b["accuracy"], np.float64))
        conf = np.asarray(b["confidence"], np.float64)
        count = np.asarray(b["count"], np.float64)
        ax.bar(edges[:-1], acc, width=width, align="edge", color=IMAGE_COLOUR, alpha=0.8,
               edgecolor="k", linewidth=0.5, label="accuracy")
        filled = count > 0
        ax.scatter((edges[:-1] + width / 2)[filled], conf[filled], c="k", s=10, zorder=3,
                   label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", c="0.4", linewidth=1)
        ece = float(np.sum(count[filled] / max(count.sum(), 1)
                           * np.abs(acc[filled] - conf[filled])))
        ax.set_title(f"{title}: {name}\nECE {100 * ece:.2f}%", fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.set_xlabel("confidence"), ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=7)
    return _save(fig, out_path)


def recall_chart(values: Mapping[str, float], out_path: str, ks: Sequence[int] = (1, 5, 10),
                 prefix: str = "retrieval") -> str:
    """Grouped bars of R@K for image->text and text->image from flat metric keys."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(ks))
    for j, (d, colour) in enumerate((("i2t", IMAGE_COLOUR), ("t2i", TEXT_COLOUR))):
        heights = [values[f"{prefix}/{d}_r{k}"] for k in ks]
        bars = ax.bar(x + (j - 0.5) * 0.38, heights, width=0.38, color=colour,
                      label="image→text" if d == "i2t" else "text→image")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [f"R@{k}" for k in ks])
    ax.set_ylim(0, 105), ax.set_ylabel("recall (%)")
    ax.set_title(f"retrieval, rsum {values.get(f'{prefix}/rsum', float('nan')):.1f}", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


def _save(fig, out_path: str) -> str:
    fig.tight_layout()
    paths.save_figure(fig, out_path, dpi=110)
    plt.close(fig)
    return out_path
