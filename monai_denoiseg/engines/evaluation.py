"""Whole-slice / whole-volume evaluation of the joint network, as in the EM-DenoiSeg paper (MICCAI 2024).

Plain functions, to be wired into an evaluator (e.g. :class:`~monai_denoiseg.engines.evaluator.DenoiSegEvaluator`):

- :func:`predict_volume` (from :mod:`monai_denoiseg.inferers`, re-exported): sliding-window inference of a
  network returning a dict (or a tensor) over an in-memory stack, whole or block by block with the blocks
  and windows of the blockwise pipeline.
- :func:`segment`: mutex-watershed instances of the predicted affinities (:class:`AffinityToInstances`).
- :func:`evaluate_prediction`: the paper's metrics, PSNR/SSIM of the coarse and final images, VOI (split,
  merge, total, bits) and adapted Rand error of the instances, IoU/F1 for binary tasks.
- :func:`save_metrics`: a JSON + CSV table (the Fig. 2-style PNG: :func:`monai_denoiseg.figures.save_figure`).

See ``docs/evaluation.md``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.utils import convert_to_numpy

from monai_denoiseg.inferers import predict_volume
from monai_denoiseg.postprocessing import segment
from monai_denoiseg.metrics import (
    AdaptedRandErrorMetric,
    UnitRangePSNRMetric,
    UnitRangeSSIMMetric,
    VariationOfInformationMetric,
    binary_f1_metric,
    binary_iou_metric,
)
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D

__all__ = ["predict_volume", "segment", "evaluate_prediction", "save_metrics", "IMAGE_KEYS"]

#: image outputs scored against the clean image: output key -> metric suffix
IMAGE_KEYS: dict[str, str] = {"coarse": "coarse", "final": "final"}


# ----------------------------------------------------------------------------------------------- helpers
def _stack_3d(x, key: str) -> np.ndarray:
    """An image or id stack (D, H, W) from (D, H, W), (1, D, H, W) or a single slice (H, W)."""
    arr = convert_to_numpy(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{key}: expected (D, H, W), (1, D, H, W) or (H, W), got shape {arr.shape}.")
    return arr


def _channels_4d(x, key: str) -> np.ndarray:
    """A prediction (C, D, H, W) from (C, D, H, W) or a single slice (C, H, W)."""
    arr = convert_to_numpy(x)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{key}: expected (C, D, H, W) or (C, H, W), got shape {arr.shape}.")
    return arr


def _nanmean(values) -> float:
    vals = np.asarray(convert_to_numpy(values), dtype=np.float64).reshape(-1)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


# ------------------------------------------------------------------------------------------- metrics
def _image_metrics(pred: np.ndarray, clean: np.ndarray, per: str) -> tuple[float, float]:
    """PSNR (dB) and SSIM (uniform 7-wide window, sample covariance, data range 1, as scikit-image's
    ``structural_similarity(win_size=7, data_range=1)``) of (D, H, W) images in [0, 1]. ``"slice"``: per 2-D
    slice, averaged; ``"volume"``: one PSNR over the volume and a 3-D SSIM (7x7x7; per-slice 2-D SSIM
    averaged when D < 7, too thin for a 3-D window)."""
    p = torch.as_tensor(np.ascontiguousarray(pred, dtype=np.float32))
    c = torch.as_tensor(np.ascontiguousarray(clean, dtype=np.float32))
    if per == "slice":
        psnr = UnitRangePSNRMetric(data_range=1.0)(p[:, None], c[:, None])
    else:
        psnr = UnitRangePSNRMetric(data_range=1.0)(p[None, None], c[None, None])
    if per == "volume" and p.shape[0] >= 7:
        ssim = UnitRangeSSIMMetric(spatial_dims=3, data_range=1.0)(p[None, None], c[None, None])
    else:
        ssim = UnitRangeSSIMMetric(spatial_dims=2, data_range=1.0)(p[:, None], c[:, None])
    return float(psnr.double().mean()), float(ssim.double().mean())


def evaluate_prediction(
    pred: Mapping[str, Any],
    clean=None,
    labels=None,
    offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
    per: str = "slice",
    mws_kwargs: Mapping[str, Any] | None = None,
    foreground_mask_from_gt: bool = False,
    binary_key: str | None = None,
    affinity_key: str = "affinity_prob",
    ignore_gt: Sequence[int] = (0,),
    return_instances: bool = False,
) -> dict[str, Any]:
    """The EM-DenoiSeg paper's metrics of one predicted stack; a dict of floats.

    Args:
        pred: outputs (C, D, H, W) (or one slice (C, H, W)), e.g. from :func:`predict_volume`: ``"coarse"``
            and ``"final"`` images in [0, 1], ``affinity_key`` "same instance" probabilities (one channel per offset).
        clean: clean image (D, H, W) in [0, 1], or None (no image metrics).
        labels: ground-truth instance ids (D, H, W), 0 = background / unlabelled (ignored), or None.
        offsets: the affinity offsets (2-D: every slice segmented on its own; 3-D: the volume in 3-D).
        per: ``"slice"`` (the paper: every metric computed per 2-D slice and averaged over slices) or
            ``"volume"`` (one 3-D PSNR, 3-D SSIM with a 7x7x7 window, one 3-D VOI/ARAND). Note that 2-D
            offsets give ids disjoint across slices, so a ``"volume"`` score of a per-slice segmentation
            counts every neuron as split between slices.
        mws_kwargs: arguments of :func:`segment` (``strides``, ``min_size``, ...).
        foreground_mask_from_gt: mask the mutex watershed with ``labels > 0``, as the reference code does
            (it hands the method the true membranes / background, which are not known at test time).
            Default False: the honest protocol, every pixel is segmented (ground-truth 0 is ignored by the
            metrics either way).
        binary_key: name of a 1-channel probability output of a binary task (e.g. mitochondria): it is
            thresholded at 0.5 and scored with IoU and F1 against ``labels > 0`` (per slice: slices
            without foreground in the ground truth are left out), instead of the instance metrics.
        affinity_key: the affinity output to segment.
        ignore_gt: ground-truth ids left out of VOI and ARAND.
        return_instances: also return the uint64 instances (D, H, W) under ``"instances"`` (the binary
            mask for a binary task; None if nothing was segmented).

    Returns:
        ``psnr_coarse``, ``ssim_coarse``, ``psnr_final``, ``ssim_final`` (those images present, if ``clean``
        is given; PSNR = inf for a perfect image), ``voi_split``, ``voi_merge``, ``voi`` (bits) and
        ``arand`` (if ``labels`` and the affinities are given), or ``iou`` and ``f1`` (binary task).
    """
    if per not in ("slice", "volume"):
        raise ValueError(f"per: expected 'slice' or 'volume', got {per!r}.")
    metrics: dict[str, Any] = {}
    gt = None if labels is None else _stack_3d(labels, "labels")
    if clean is not None:
        ref = _stack_3d(clean, "clean").astype(np.float32)
        for key, name in IMAGE_KEYS.items():
            if pred.get(key) is None:
                continue
            img = _channels_4d(pred[key], key)
            if img.shape[1:] != ref.shape or img.shape[0] != 1:
                raise ValueError(f"{key}: expected one channel shaped like clean {ref.shape}, got shape {img.shape}.")
            metrics[f"psnr_{name}"], metrics[f"ssim_{name}"] = _image_metrics(img[0], ref, per)
    instances = None
    if binary_key is not None:
        if pred.get(binary_key) is None:  # a denoiser alone segments nothing
            return {**metrics, "instances": None} if return_instances else metrics
        prob = _channels_4d(pred[binary_key], binary_key)
        if prob.shape[0] != 1:
            raise ValueError(f"{binary_key}: expected a 1-channel probability, got shape {prob.shape}.")
        instances = (prob[0] > 0.5).astype(np.uint64)
        if gt is not None:
            if gt.shape != instances.shape:
                raise ValueError(f"labels: expected the shape of {binary_key} {instances.shape}, got {gt.shape}.")
            p, g = torch.as_tensor(instances > 0), torch.as_tensor(gt > 0)
            p, g = (p[:, None], g[:, None]) if per == "slice" else (p[None, None], g[None, None])
            metrics["iou"] = _nanmean(binary_iou_metric(reduction="none")(p.float(), g.float()))
            metrics["f1"] = _nanmean(binary_f1_metric(reduction="none")(p.float(), g.float()))
    elif pred.get(affinity_key) is not None and (gt is not None or return_instances):
        if foreground_mask_from_gt and gt is None:
            raise ValueError("foreground_mask_from_gt: needs labels, got labels=None.")
        mask = gt != 0 if foreground_mask_from_gt else None
        affinity = _channels_4d(pred[affinity_key], affinity_key)
        instances = segment(affinity, offsets, mask=mask, **dict(mws_kwargs or {}))
        if gt is not None:
            if gt.shape != instances.shape:
                raise ValueError(f"labels: expected the shape of the prediction {instances.shape}, got {gt.shape}.")
            seg_b, gt_b = instances[None, None], gt[None, None]
            voi = VariationOfInformationMetric(mode=per, ignore_gt=ignore_gt)(seg_b, gt_b)[0]  # total, split, merge
            arand = AdaptedRandErrorMetric(mode=per, ignore_gt=ignore_gt)(seg_b, gt_b)[0]
            metrics.update(voi_split=float(voi[1]), voi_merge=float(voi[2]), voi=float(voi[0]), arand=float(arand[0]))
    if return_instances:
        metrics["instances"] = instances
    return metrics


# --------------------------------------------------------------------------------------------- output
def _plain(v):
    """JSON/CSV-friendly scalar: numpy / torch scalars -> Python numbers."""
    if isinstance(v, (torch.Tensor, np.ndarray)) and np.ndim(convert_to_numpy(v)) == 0:
        v = convert_to_numpy(v).item()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def save_metrics(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 name: str = "metrics") -> dict[str, Path]:
    """Write ``out_dir/name.json`` and ``out_dir/name.csv`` (one row per dict); returns both paths.

    The JSON keeps the structure given (a dict or a list of dicts). Non-finite values are written as
    Python's ``json`` does (``Infinity``, ``NaN``: read back by ``json.load``, e.g. PSNR = inf of a perfect
    image). The CSV has the union of the keys as columns (first-seen order), an empty cell where a row
    lacks a key, floats in their shortest round-trip form.
    """
    rows = [dict(metrics)] if isinstance(metrics, Mapping) else [dict(m) for m in metrics]
    rows = [{str(k): _plain(v) for k, v in r.items()} for r in rows]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv"}
    with open(paths["json"], "w") as f:
        json.dump(rows[0] if isinstance(metrics, Mapping) else rows, f, indent=2)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return paths
