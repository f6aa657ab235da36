"""Inference on any volume file: the blockwise pipeline (OME-Zarr out), optionally exported to the input's format.

``run_inference`` is what every bundle's ``inference.yaml`` runs. It always predicts and segments blockwise
(:func:`monai_denoiseg.blockwise.run_blockwise`: bounded memory, resumable, any number of workers) into
``<output_dir>/<name>.zarr``; ``output_format="input"`` then also writes the denoised image and the
instances (or mask) in the input's own format (HDF5 / TIFF / NIfTI), for volumes small enough to hold in RAM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from monai_denoiseg.blockwise import run_blockwise
from monai_denoiseg.blockwise.storage import volume_format
from monai_denoiseg.engines.strategies import Strategy, get_strategy
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D

logger = logging.getLogger(__name__)

__all__ = ["run_inference", "output_paths", "narrowest_uint"]

_SUFFIXES = (".nii.gz", ".hdf5", ".tiff", ".nii", ".hdf", ".h5", ".tif", ".he5")


def output_paths(input_file: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Path]:
    """``{"denoised", "instances", "mask"}`` paths in ``output_dir`` for an export in the input's format: one HDF5
    file for an HDF5 input (``volumes/raw_denoised``, ``volumes/labels/instances`` or ``volumes/labels/mask``),
    files of the input's type otherwise."""
    name = Path(input_file).name
    suffix = next((s for s in _SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(f"input_file: expected an HDF5, TIFF or NIfTI file to export to, got {str(input_file)!r}.")
    stem, out = name[: -len(suffix)], Path(output_dir)
    if suffix in (".hdf5", ".hdf", ".h5", ".he5"):
        return dict.fromkeys(("denoised", "instances", "mask"), out / f"{stem}_prediction{suffix}")
    return {k: out / f"{stem}_{k}{suffix}" for k in ("denoised", "instances", "mask")}


#: exports in the input's format (HDF5/TIFF/NIfTI, written whole) only up to this size (1024^3 / 4)
EXPORT_MAX_VOXELS = 2**28

_KEYS = {"denoised": "volumes/raw_denoised", "instances": "volumes/labels/instances", "mask": "volumes/labels/mask"}


def narrowest_uint(ids: np.ndarray) -> np.ndarray:
    """Instance ids in the narrowest unsigned type that holds them (uint32 opens in Fiji/ImageJ, uint64 does not)."""
    top = int(ids.max()) if ids.size else 0
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)
    return ids.astype(dtype, copy=False)


def run_inference(
    network: torch.nn.Module | str,
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
    output_format: str = "input",
    overwrite: bool = False,
    **blockwise_kwargs,
) -> dict[str, Path]:
    """Denoise and segment a whole (Z, Y, X) volume; returns the paths written.

    ``network`` is a module or a factory's import path (then ``network_kwargs=`` and ``checkpoint=`` go through
    ``blockwise_kwargs``, as do ``num_workers``, ``block_shape``, ``intensity_range``, ``db``, ``worker_config``).
    The OME-Zarr output is always written (``"zarr"``, ``"denoised"``, ``"instances"`` or ``"mask"`` arrays
    inside it); ``output_format="input"`` adds the input's format (``<stem>_denoised.tif``, ... or one
    ``<stem>_prediction.h5``): the denoised image uint8 0-255, the instances in the narrowest unsigned integer
    type, a binary segmenter's mask uint8 0/1 — for volumes up to ``EXPORT_MAX_VOXELS`` (exports are written
    whole; larger ones stay OME-Zarr only, with a warning). Existing exports are refused unless ``overwrite``.
    """
    if output_format not in ("input", "zarr"):
        raise ValueError(f"output_format: expected 'input' or 'zarr', got {output_format!r}.")
    dev = "auto" if device is None or str(device) == "cuda" else str(device)  # "auto": one GPU per worker
    stages = get_strategy(strategy).stages
    if not {"denoiser", "fusion"} & set(stages):
        raise ValueError(f"strategy: {get_strategy(strategy).name!r} (stages {stages}) predicts no denoised image, "
                         "which blockwise inference writes; use a strategy with a denoiser (joint, sequential, ...).")
    segments = "segmenter" in stages  # a denoiser alone (dn_only, n2v_only): the denoised image only
    paths = run_blockwise(network, input_file, output_dir, input_key, stages=stages,
                          offsets=offsets if segments else None, binary=binary and segments, roi_size=roi_size, sw_batch_size=sw_batch_size,
                          overlap=overlap, device=dev, amp=amp, mws_kwargs=mws_kwargs, overwrite=overwrite,
                          **blockwise_kwargs)
    if output_format == "zarr" or volume_format(input_file) in ("zarr", "n5"):
        return paths
    voxels = int(np.prod(zarr.open_array(paths["denoised"], mode="r").shape))
    if voxels > EXPORT_MAX_VOXELS:  # the exports are written whole: keep memory bounded, the OME-Zarr has it all
        logger.warning("%s: %d voxels, more than %d: no %s export, the outputs are in %s", input_file, voxels,
                       EXPORT_MAX_VOXELS, volume_format(input_file), paths["zarr"])
        return paths
    from monai_denoiseg.data.datasets import write_volume
    from monai_denoiseg.utils.atomic import refuse_existing

    targets = output_paths(input_file, output_dir)
    exports = [k for k in ("denoised", "instances", "mask") if k in paths]
    for k in exports:  # check all before writing any: a refused export leaves nothing half-written
        if targets[k].suffix.lower() not in (".h5", ".hdf5", ".hdf", ".he5") or k == "denoised":
            refuse_existing(targets[k], overwrite, what=f"{k} export")
    written = dict(paths)
    for k in exports:
        array = zarr.open_array(paths[k], mode="r")[...]
        array = narrowest_uint(array) if k == "instances" else array
        written[f"{k}_export"] = write_volume(targets[k], array, _KEYS[k], overwrite=overwrite)
    return written
