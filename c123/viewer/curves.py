"""Curves of reconstructions as Matplotlib PNGs (Agg, no pyplot state), from their result.json: the detector's
S^k, the prior weights and the loss terms. The viewer draws one case per figure; the benchmark report draws a
method's cases together with the same functions."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from c123.atomic import write_atomic


def save_figure(fig: Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(path, buf.getvalue())


def _finish(ax, title: str, legend_size: int) -> None:
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size, ncol=2)


def detector_plot(results: dict[str, dict], title: str, path: Path) -> Path:
    """S^k against iteration per result (label -> result.json), a dashed line at each switch (forced: hollow)."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, result in results.items():
        det = result.get("detector") or {}
        if not det.get("iterations"):
            continue
        (line,) = ax.plot(det["iterations"], det["S"], marker=".", label=label)
        switch = det.get("switch_iteration", result.get("switch_iteration"))
        if switch is not None:
            ax.axvline(switch, color=line.get_color(), linestyle="--", linewidth=1)
            at = np.interp(switch, det["iterations"], det["S"])
            ax.plot([switch], [at], "o", color=line.get_color(), mfc="none" if det.get("forced") else line.get_color())
    ax.set_xlabel("NeRF iteration")
    ax.set_ylabel("S^k (mean CLIP image-text cosine)")
    _finish(ax, title, 7)
    return save_figure(fig, path)


def weights_plot(results: dict[str, dict], title: str, path: Path) -> Path:
    """w3D (solid) and w2D (dashed) against iteration per result."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, result in results.items():
        w = result.get("weights") or {}
        if not w.get("iterations"):
            continue
        (line,) = ax.plot(w["iterations"], w["w3d"], label=f"{label} w3D")
        ax.plot(w["iterations"], w["w2d"], linestyle="--", color=line.get_color(), label=f"{label} w2D")
    ax.set_xlabel("iteration (NeRF then DMTet)")
    ax.set_ylabel("prior weight")
    ax.set_ylim(-0.05, 1.05)
    _finish(ax, title, 6)
    return save_figure(fig, path)


def loss_plot(result: dict, title: str, path: Path) -> Path:
    """Every weighted loss term of one result against iteration (log scale where all values are positive),
    with the NeRF -> DMTet boundary and the switch marked."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    positive = True
    for name, pairs in (result.get("loss") or {}).items():
        if not pairs:
            continue
        steps, values = zip(*pairs)
        positive &= min(values) > 0
        ax.plot(steps, values, linewidth=1, label=name)
    if positive and ax.lines:
        ax.set_yscale("log")
    train = (result.get("config") or {}).get("train") or {}
    if train.get("dmtet_iters"):
        ax.axvline(train["nerf_iters"] + 0.5, color="k", linewidth=1, label="NeRF | DMTet")
    if result.get("switch_iteration") is not None:
        ax.axvline(result["switch_iteration"], color="k", linestyle="--", linewidth=1, label="switch")
    ax.set_xlabel("iteration (NeRF then DMTet)")
    ax.set_ylabel("weighted loss term")
    _finish(ax, title, 6)
    return save_figure(fig, path)
