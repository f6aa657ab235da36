"""Inference on any volume file: the denoised image and the instance labels, written in the input's format."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from monai_denoiseg.data.datasets import read_volume, write_volume
from monai_denoiseg.engines.evaluation import predict_volume, segment
from monai_denoiseg.engines.strategies import Strategy, get_strategy
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D

__all__ = ["run_inference", "output_paths"]

_SUFFIXES = (".nii.gz", ".hdf5", ".tiff", ".nii", ".hdf", ".h5", ".tif", ".he5")


def output_paths(input_file: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
    """``{"denoised", "instances", "mask"}`` paths in ``output_dir``: one HDF5 file for an HDF5 input
    (``volumes/raw_denoised``, ``volumes/labels/instances`` or ``volumes/labels/mask``), files of the
    input's type otherwise."""
    name = Path(input_file).name
    suffix = next((s for s in _SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(f"input_file: expected an HDF5, TIFF or NIfTI file, got {str(input_file)!r}.")
    stem, out = name[: -len(suffix)], Path(output_dir)
    if suffix in (".hdf5", ".hdf", ".h5", ".he5"):
        return dict.fromkeys(("denoised", "instances", "mask"), out / f"{stem}_prediction{suffix}")
    return {k: out / f"{stem}_{k}{suffix}" for k in ("denoised", "instances", "mask")}


def run_inference(
    network: torch.nn.Module,
    input_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    input_key: str | None = "volumes/raw",
    strategy: str | Strategy = "joint",
    offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
    roi_size: Sequence[int] = (256, 256),
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    device: str | torch.device | None = None,
    mws_kwargs: Mapping | None = None,
    amp: bool = False,
    binary: bool = False,
) -> dict[str, Path]:
    """Denoise and segment a whole uint8 (Z, Y, X) volume; returns the paths written (see :func:`output_paths`).

    The denoised image is written as uint8 0-255 (the input's scale), the instances as uint64 ids; a
    ``binary`` segmenter (one probability channel, e.g. mitochondria) gives a uint8 0/1 mask (p > 0.5) instead.
    """
    volume = read_volume(input_file, input_key)
    if volume.ndim != 3:
        raise ValueError(f"{input_key or 'volume'}: expected a (Z, Y, X) volume, got shape {volume.shape}.")
    if not np.isfinite(volume).all():
        raise ValueError(f"{input_key or 'volume'}: the volume of shape {volume.shape} contains NaN or inf.")
    stages = get_strategy(strategy).stages
    noisy = torch.as_tensor(volume.astype(np.float32) / 255.0)
    pred = predict_volume(lambda x: network(x, stages=stages), noisy, roi_size, sw_batch_size=sw_batch_size,
                          overlap=overlap, spatial_dims=len(roi_size), device=device, amp=amp)
    paths = output_paths(input_file, output_dir)
    written: dict[str, Path] = {}
    if "denoised" in pred:
        denoised = np.clip(np.rint(pred["denoised"][0].numpy() * 255.0), 0, 255).astype(np.uint8)
        written["denoised"] = write_volume(paths["denoised"], denoised, "volumes/raw_denoised")
    if "affinity_prob" in pred and binary:
        mask = (pred["affinity_prob"][0].numpy() > 0.5).astype(np.uint8)
        written["mask"] = write_volume(paths["mask"], mask, "volumes/labels/mask")
    elif "affinity_prob" in pred:
        instances = segment(pred["affinity_prob"], offsets, **dict(mws_kwargs or {})).astype(np.uint64)
        written["instances"] = write_volume(paths["instances"], instances, "volumes/labels/instances")
    return written
