"""Figures: a PNG like Fig. 2 of the EM-DenoiSeg paper (MICCAI 2024) for one slice of a prediction, with
instance ids in fixed colours. See ``docs/evaluation.md``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.utils import convert_to_numpy

__all__ = ["save_figure"]


def _id_colours(ids: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random colour per id (splitmix64 hash of the id itself: the same id gets the same colour
    in every figure); id 0 black. ``ids`` 1-D uint64, returns (n, 3) floats in [0.2, 1]."""
    z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    rgb = np.stack([(z >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], axis=-1).astype(np.float64)
    rgb = 0.2 + 0.8 * rgb / 255.0
    rgb[ids == 0] = 0.0
    return rgb


def _colour_instances(lab: np.ndarray) -> np.ndarray:
    lab = np.asarray(lab)
    if lab.dtype.kind == "f":
        lab = lab.astype(np.int64)
    uniq, inverse = np.unique(lab.astype(np.uint64), return_inverse=True)
    return _id_colours(uniq)[inverse.reshape(lab.shape)].astype(np.float32)


def _panel_image(x, kind: str) -> np.ndarray:
    arr = convert_to_numpy(x)
    if kind == "affinity" and arr.ndim == 3:
        arr = arr[:2].mean(0)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{kind}: expected a 2-D array (pick the slice first), got shape {arr.shape}.")
    if kind in ("instances", "labels"):
        return _colour_instances(arr)
    arr = arr.astype(np.float32)
    return arr / 255.0 if convert_to_numpy(x).dtype.kind in "ui" else arr


def save_figure(
    path: str | os.PathLike,
    noisy=None,
    coarse=None,
    final=None,
    clean=None,
    affinity=None,
    instances=None,
    labels=None,
    title: str = "",
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """A PNG like Fig. 2 of the paper: top row noisy | coarse I_c | final I_f | clean, bottom row affinity |
    predicted instances | ground-truth instances.

    Every panel is a 2-D array (the caller picks the slice) or None (drawn blank with its title). Images are
    shown in [0, 1] (integer images as 0-255); ``affinity`` is one channel (H, W), or (C, H, W) whose first
    two channels (the nearest neighbours) are averaged; instance ids get fixed pseudo-random colours (a hash
    of the id, 0 black). The PNG is ``4 * panel_inches * dpi`` by ``2 * panel_inches * dpi`` pixels.
    Rendered with matplotlib's Agg canvas directly (no pyplot state, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        ("noisy", "noisy", noisy), ("coarse", "coarse $I_c$", coarse), ("final", "final $I_f$", final),
        ("clean", "clean", clean), ("affinity", "affinity", affinity), ("instances", "predicted instances", instances),
        ("labels", "ground truth", labels), (None, "", None),
    ]
    fig = Figure(figsize=(4 * panel_inches, 2 * panel_inches), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9 if title else 0.94, wspace=0.04, hspace=0.12)
    for ax, (kind, label, data) in zip(axes.flat, panels):
        ax.set_axis_off()
        if kind is None:
            continue
        ax.set_title(label, fontsize=10)
        if data is None:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", color="0.6", transform=ax.transAxes)
            continue
        img = _panel_image(data, kind)
        if img.ndim == 3:
            ax.imshow(img, interpolation="nearest")
        else:
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
