"""The toolkit's own volara blockwise tasks (plugins, registered under ``volara.blockwise_tasks``).

- :class:`DenoiSegPredict`: the joint network over one block with the context its sliding window needs
  (:class:`~monai_denoiseg.inferers.BlockInferer`): the denoised image (uint8), the affinities (uint8,
  ``neighborhood`` attribute, as volara's ``Affs``) and, for a binary task, the mask.
- :class:`SliceInstances`: the papers' 2-D protocol: mutex watershed of every z-slice on its own
  (:class:`~monai_denoiseg.transforms.AffinityToInstances`, the evaluator's), blocks of whole slices, ids made
  unique across slices by offsetting them with ``z * H * W``.
- :class:`Downsample`: one level of the denoised image's pyramid (2x2 in-plane mean; z too when isotropic).

3-D segmentation uses volara's own ExtractFrags -> AffAgglom -> GraphMWS -> Relabel (see ``pipeline.py``).
Every task is a pydantic model, so cluster workers (``volara-cli blockwise-worker``) rebuild it from JSON.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds
from volara.blockwise import BlockwiseTask
from volara.utils import PydanticCoordinate

from monai_denoiseg.blockwise.storage import open_volume, prepare_array
from monai_denoiseg.inferers import BlockInferer

__all__ = ["DenoiSegPredict", "SliceInstances", "Downsample", "register_network"]

#: live networks handed to local (forked) workers by token; cluster workers build theirs from the spec
_LIVE_NETWORKS: dict[str, torch.nn.Module] = {}


def register_network(network: torch.nn.Module, token: str | None = None) -> str:
    """Keep ``network`` for this process and the workers it forks; returns the token a task refers to it by."""
    token = token or f"live-{id(network):x}"
    _LIVE_NETWORKS[token] = network
    return token


def _import(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint(x.numpy() * 255.0), 0, 255).astype(np.uint8)


def _worker_device(device: str) -> torch.device:
    """``"auto"``: one GPU per worker (round robin over the visible GPUs by daisy's worker id), else the CPU."""
    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    worker = 0
    with contextlib.suppress(Exception):
        import daisy

        worker = int(daisy.Context.from_env()["worker_id"])
    return torch.device(f"cuda:{worker % torch.cuda.device_count()}")


class _ZYXTask(BlockwiseTask):
    """Shared geometry: a (z, y, x) volume of ``shape`` voxels of ``voxel_size``, blocks of ``block_size``."""

    shape: PydanticCoordinate
    voxel_size: PydanticCoordinate
    block_size: PydanticCoordinate
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def write_roi(self) -> Roi:
        roi = Roi((0, 0, 0), self.shape * self.voxel_size)
        return roi if self.roi is None else roi.intersect(self.roi)

    @property
    def write_size(self) -> Coordinate:
        return self.block_size * self.voxel_size

    @property
    def context_size(self) -> Coordinate | tuple[Coordinate, Coordinate]:
        return Coordinate((0, 0, 0))

    def _voxels(self, roi: Roi) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(roi.offset / self.voxel_size), tuple(roi.shape / self.voxel_size)


class DenoiSegPredict(_ZYXTask):
    """Predict the denoised image and the affinities (or the mask) of every block of ``input_store``."""

    task_type: Literal["denoiseg-predict"] = "denoiseg-predict"
    input_store: Path
    input_key: str | None = None
    intensity_range: tuple[float, float] | None = None
    out_root: Path
    network_target: str | None = None
    """import path of a network factory (e.g. ``monai_denoiseg.networks.paper_joint_net``)"""
    network_kwargs: dict[str, Any] = {}
    network_token: str | None = None
    """a network given as a live module (:func:`register_network`); local workers only"""
    checkpoint: Path | None = None
    stages: list[str] | None = None
    offsets: list[list[int]] = []
    binary: bool = False
    roi_size: list[int]
    overlap: float = 0.25
    sw_batch_size: int = 4
    device: str = "auto"
    amp: bool = False
    threads: int = 1

    @property
    def task_name(self) -> str:
        return f"{self.out_root.stem}-predict"

    @property
    def inferer(self) -> BlockInferer:
        return BlockInferer(self.roi_size, overlap=self.overlap, sw_batch_size=self.sw_batch_size, amp=self.amp)

    @property
    def context_size(self) -> tuple[Coordinate, Coordinate]:
        before, after = self.inferer.context
        return Coordinate(before) * self.voxel_size, Coordinate(after) * self.voxel_size

    @property
    def outputs(self) -> dict[str, Path]:
        """output key of the network -> array written"""
        out = {"denoised": self.out_root / "s0"}
        if self.binary:
            out["affinity_prob"] = self.out_root / "labels" / "mask" / "s0"
        elif self.offsets:
            out["affinity_prob"] = self.out_root / "affinities"
        return out

    def drop_artifacts(self):
        import shutil

        for path in self.outputs.values():
            shutil.rmtree(path, ignore_errors=True)

    def init(self):
        for key, path in self.outputs.items():
            channels = len(self.offsets) if key == "affinity_prob" and not self.binary else None
            attrs = {"neighborhood": self.offsets} if channels else None
            prepare_array(path, self.shape, self.block_size, self.voxel_size, np.uint8, channels=channels, attrs=attrs)

    def build_network(self, device: torch.device) -> torch.nn.Module:
        if self.network_token is not None:
            if self.network_token not in _LIVE_NETWORKS:
                raise RuntimeError(f"network {self.network_token!r} is a live module of another process: cluster "
                                   "workers need network_target + network_kwargs + checkpoint.")
            network = _LIVE_NETWORKS[self.network_token]
        elif self.network_target:
            network = _import(self.network_target)(**self.network_kwargs)
            if self.checkpoint is not None:
                from monai_denoiseg.engines.trainer import load_network_weights

                load_network_weights(network, self.checkpoint)
        else:
            raise ValueError("DenoiSegPredict: expected network_target (+ network_kwargs, checkpoint) or network_token.")
        return network.to(device).eval()

    @contextlib.contextmanager
    def process_block_func(self):
        from monai_denoiseg.utils.validation import check_intensity

        torch.set_num_threads(max(1, int(self.threads)))
        device = _worker_device(self.device)
        network = self.build_network(device)
        inferer = BlockInferer(self.roi_size, overlap=self.overlap, sw_batch_size=self.sw_batch_size,
                               device=device, amp=self.amp)
        source = open_volume(self.input_store, self.input_key, voxel_size=self.voxel_size)
        where = f"{self.input_store}" + (f"[{self.input_key}]" if self.input_key else "")
        targets = {k: open_ds(p, mode="r+") for k, p in self.outputs.items()}
        stages = tuple(self.stages) if self.stages else None
        network_kwargs = {"stages": stages} if stages else {}

        def read(begin, end):
            roi = Roi(Coordinate(begin) * self.voxel_size, (Coordinate(end) - Coordinate(begin)) * self.voxel_size)
            try:
                data = source.to_ndarray(roi)
            except Exception as e:  # a truncated or corrupt file: say which file and where
                raise OSError(f"{where} block {begin}-{end}: could not read ({type(e).__name__}: {e}); the file "
                              "may be truncated or corrupt.") from e
            check_intensity(data, key=f"{where} block {begin}-{end}", intensity_range=self.intensity_range)
            return data

        intensity = (0.0, 255.0) if self.intensity_range is None else self.intensity_range

        def process_block(block):
            offset, size = self._voxels(block.write_roi)
            pred = inferer.predict_block(network, read, offset, size, tuple(self.shape), intensity, **network_kwargs)
            for key, target in targets.items():
                if key not in pred:
                    raise KeyError(f"network output {key!r}: the strategy's stages {stages} give {sorted(pred)}.")
                value = pred[key] > 0.5 if self.binary and key == "affinity_prob" else pred[key]
                value = value.to(torch.uint8).numpy() if value.dtype == torch.bool else _to_uint8(value)
                target[block.write_roi] = value if target.channel_dims else value[0]

        yield process_block


class SliceInstances(_ZYXTask):
    """Mutex watershed of every z-slice on its own; ``block_size`` spans whole slices."""

    task_type: Literal["denoiseg-slice-instances"] = "denoiseg-slice-instances"
    affinities: Path
    instances: Path
    offsets: list[list[int]]
    mws_kwargs: dict[str, Any] = {}

    @property
    def task_name(self) -> str:
        return f"{self.instances.parent.name}-slice-instances"

    def drop_artifacts(self):
        import shutil

        shutil.rmtree(self.instances, ignore_errors=True)

    def init(self):
        prepare_array(self.instances, self.shape, self.block_size, self.voxel_size, np.uint64)

    @contextlib.contextmanager
    def process_block_func(self):
        from monai_denoiseg.postprocessing import segment

        affs = open_ds(self.affinities, mode="r")
        out = open_ds(self.instances, mode="r+")
        plane = int(self.shape[1]) * int(self.shape[2])

        def process_block(block):
            prob = affs[block.write_roi].astype(np.float32) / 255.0
            labels = segment(prob, [tuple(o) for o in self.offsets], **self.mws_kwargs)  # (D, H, W)
            z0 = int(block.write_roi.offset[0] // self.voxel_size[0])
            unique = np.empty(labels.shape, dtype=np.uint64)
            for i, sl in enumerate(labels):  # ids 1..n of slice z become z * H * W + (1..n): unique in the volume
                ids, local = np.unique(sl, return_inverse=True)
                local = local.reshape(sl.shape).astype(np.uint64) + np.uint64(ids[0] != 0)
                unique[i] = np.where(local > 0, local + np.uint64((z0 + i) * plane), 0)
            out[block.write_roi] = unique

        yield process_block


class Downsample(_ZYXTask):
    """``target`` = ``source`` averaged over ``factor`` (z, y, x); ``shape``/``voxel_size`` are the target's."""

    task_type: Literal["denoiseg-downsample"] = "denoiseg-downsample"
    source: Path
    target: Path
    factor: PydanticCoordinate

    @property
    def task_name(self) -> str:
        return f"{self.target.parent.name}-{self.target.name}-downsample"

    def drop_artifacts(self):
        import shutil

        shutil.rmtree(self.target, ignore_errors=True)

    def init(self):
        prepare_array(self.target, self.shape, self.block_size, self.voxel_size, np.uint8)

    @contextlib.contextmanager
    def process_block_func(self):
        src = open_ds(self.source, mode="r")
        dst = open_ds(self.target, mode="r+")
        f = tuple(int(v) for v in self.factor)

        def process_block(block):
            roi = block.write_roi
            data = src.to_ndarray(roi, fill_value=0).astype(np.float32)  # the source voxels of the target block
            valid = src.roi.intersect(roi).shape / src.voxel_size
            shape = tuple(int(v) // k for v, k in zip(valid, f))
            data = data[tuple(slice(0, s * k) for s, k in zip(shape, f))]
            pooled = data.reshape(shape[0], f[0], shape[1], f[1], shape[2], f[2]).mean(axis=(1, 3, 5))
            dst[Roi(roi.offset, Coordinate(shape) * dst.voxel_size).intersect(dst.roi)] = np.rint(pooled).astype(np.uint8)

        yield process_block

