"""Small helpers that MONAI bundle configs of this toolkit call (``$monai_denoiseg.bundle.x(...)``).

They keep the configs declarative: where the bundle lives (MONAI's ``bundle_root`` would otherwise be
the current directory), where the data are (a local folder, ``$MONAI_DENOISEG_DATA``, or a verified
download), which checkpoint a killed run resumes from, and which image keys a strategy may read.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_denoiseg.engines.strategies import get_strategy

__all__ = ["find_bundle_root", "locate_data", "split_keys", "load_unlabelled", "selection_metric", "resolve_device", "rank_zero_only",
           "loader_workers", "validation_interval"]

DATA_ENV = "MONAI_DENOISEG_DATA"


def find_bundle_root(name: str) -> str:
    """The default of the configs' ``bundle_root`` (MONAI's convention: an override, ``--bundle_root``): the
    current directory when run from inside bundle ``name`` (as MONAI expects), ``./bundles/<name>`` when run
    from a checkout's root, else this installation's ``bundles/<name>``. The command line is never parsed."""
    candidates = [Path.cwd(), Path.cwd() / "bundles" / name, Path(__file__).resolve().parents[2] / "bundles" / name]
    for folder in candidates:
        if folder.name == name and (folder / "configs" / "metadata.json").is_file():
            return str(folder)
    raise FileNotFoundError(
        f"bundle_root: could not find the bundle {name!r} (looked in {[str(c) for c in candidates]}); "
        f"run from inside it or pass --bundle_root <path to {name}>."
    )


def locate_data(filename: str, data_dir: str | None = None, bundle_root: str | None = None,
                download: str | None = None, keys: list[str] | None = None) -> str:
    """Path of a dataset file: ``data_dir``, then ``$MONAI_DENOISEG_DATA``, then ``<bundle_root>/data``.

    If absent everywhere and ``download`` names a dataset (``"medulla"``, ``"cremi_A"``, ``"cremi_B"``,
    ``"cremi_C"``), it is downloaded and verified into ``<bundle_root>/data``. An HDF5 file found locally
    must open and hold ``keys`` (a truncated copy is reported, never trained on). Raises a
    ``FileNotFoundError`` saying where to put the file otherwise.
    """
    from monai_denoiseg.data import download as dl

    folders = [d for d in (data_dir, os.environ.get(DATA_ENV), bundle_root and str(Path(bundle_root) / "data")) if d]
    for folder in folders:
        path = Path(folder).expanduser() / filename
        if path.is_file():
            if keys and path.suffix.lower() in (".h5", ".hdf5", ".hdf") and (problem := dl.check_cremi_file(path, keys)):
                raise ValueError(f"{path}: unusable ({problem}); replace it, or delete it to download it again.")
            return str(path)
    if download and bundle_root:
        target = Path(bundle_root) / "data"
        if download == "medulla":
            return str(dl.download_medulla(target))
        if download in {f"cremi_{s}" for s in dl.CREMI_SAMPLES}:
            return str(dl.download_cremi(download[-1], target))
        raise ValueError(f"download: expected 'medulla', 'cremi_A', 'cremi_B', 'cremi_C' or None, got {download!r}.")
    raise FileNotFoundError(
        f"{filename}: not found in {folders}. Put the file in one of them, or point the bundle key "
        f"'data_dir' (--data_dir /path) or the environment variable {DATA_ENV} to the folder that holds it."
    )


def split_keys(strategy: str, split: str = "train", noise: str | None = "synthetic") -> tuple[str, ...]:
    """Keys a split loads: training under a Noise2Void strategy never loads the clean image, and with
    real noise (``noise=None``: the raw image is the noisy input) there is no clean image to load.
    A strategy whose pretraining stage needs it (Sequential pretrains its denoiser with DN-only) loads it."""
    s = get_strategy(strategy)
    needs_clean = s.needs_clean or any(get_strategy(p).needs_clean for p in s.pretrain.values())
    if noise is None or (split == "train" and not needs_clean):
        return ("noisy", "label")
    return ("noisy", "clean", "label")


def load_unlabelled(key: str | None, strategy: str, path, **split_kwargs) -> dict | None:
    """The noisy-only volume ``key`` of ``path`` (all of it, e.g. medulla's ``volumes/raw_unlabelled``) for
    :class:`~monai_denoiseg.data.datasets.PatchDataset`'s ``unlabelled``, with the noise of the labelled
    splits (``split_kwargs``: :func:`load_split`'s noise, crop and cache arguments); None when ``key`` is None."""
    if key is None:
        return None
    s = get_strategy(strategy)
    if not s.uses_blind_spots:
        raise ValueError(f"unlabelled_key: {key!r} given, but strategy {strategy!r} has no Noise2Void term to learn "
                         "from images without labels; use an n2v_* strategy or unlabelled_key: null.")
    from monai_denoiseg.data.datasets import load_split

    return load_split(path, raw_key=key, label_key=None, keys=("noisy",), **split_kwargs)


def selection_metric(strategy: str, binary: bool = False, labels: bool | None = None) -> tuple[str, bool]:
    """``(metric, lower_is_better)`` that validation keeps the best model by.

    A self-supervised strategy (trained without clean images or labels: ``n2v_only``,
    ``n2v_joint_unsupervised``) selects on its validation ``self_supervised_loss`` unless ``labels=True``
    declares labels available for selection; the others by VOI (binary task: IoU) when they segment, else
    by the PSNR of their last image (a denoiser alone has no VOI)."""
    s = get_strategy(strategy)
    if s.self_supervised and not labels:
        return "self_supervised_loss", True
    if "segmenter" in s.stages:
        return ("iou", False) if binary else ("voi", True)
    return ("psnr_final", False) if "fusion" in s.stages else ("psnr_coarse", False)


def resolve_device(device: str = "auto"):
    """``"auto"``: CUDA when available, else the CPU."""
    import torch

    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def loader_workers(cap: int = 4) -> int:
    """Data-loader processes for this machine: half the cores this process may use (the other half computes),
    at most ``cap``; 0 (load in the main process) with a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(int(cap), cores // 2))


def validation_interval(epochs: int, preferred: int = 5) -> int:
    """Epochs between validations: ``preferred``, but at most half the run, so that a run validates at least
    twice and the best checkpoint is chosen, not just the last one taken."""
    return max(1, min(int(preferred), int(epochs) // 2))


def rank_zero_only(handlers: list) -> list:
    """On ranks > 0 of a distributed run, drop the handlers that validate, save or log (rank 0 does)."""
    import torch.distributed as dist
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler, ValidationHandler

    from monai_denoiseg.engines.handlers import ProgressBarHandler

    if not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    rank0 = (CheckpointSaver, StatsHandler, TensorBoardStatsHandler, ValidationHandler, ProgressBarHandler)
    return [h for h in handlers if not isinstance(h, rank0)]
