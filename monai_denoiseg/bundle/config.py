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
           "loader_workers", "validation_interval", "detect_layout", "default_splits", "noise_model"]

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


def split_keys(strategy: str, split: str = "train", noise: str | None = "synthetic", labels: bool = True) -> tuple[str, ...]:
    """Keys a split loads: training under a Noise2Void strategy never loads the clean image, and with
    real noise (``noise=None``: the raw image is the noisy input) there is no clean image to load.
    A strategy whose pretraining stage needs it (Sequential pretrains its denoiser with DN-only) loads it.
    ``labels=False``: the volume has none (noisy images only). A strategy that cannot train on what the data
    hold (clean images under real noise, labels that are absent) is refused here, naming the strategies that can."""
    s = get_strategy(strategy)
    chain = (s, *(get_strategy(p) for p in s.pretrain.values()))
    needs_clean = any(x.needs_clean for x in chain)
    if split == "train" and noise is None and needs_clean:
        raise ValueError(f"strategy: {strategy!r} trains on clean images, but noise is none (the images are the "
                         "noisy input, there is no clean image); use a Noise2Void strategy: n2v_joint_supervised (labels), "
                         "n2v_only (no labels), or give clean images with a synthetic noise.")
    if split == "train" and not labels and any(x.needs_labels for x in chain):
        raise ValueError(f"strategy: {strategy!r} trains a segmenter on labels, but the volume has none (no "
                         "label_key found, no train_label_file); pass --label_key / --train_label_file, or use "
                         "n2v_only (denoising without labels).")
    keys = ("noisy",) if noise is None or (split == "train" and not needs_clean) else ("noisy", "clean")
    return (*keys, "label") if labels else keys


def noise_model(noise: str | None) -> str | None:
    """The bundle key ``noise`` as :func:`~monai_denoiseg.data.datasets.load_split` takes it: ``none`` / ``null``
    (the images are already noisy: real noise) is None, anything else a synthetic noise name."""
    return None if noise is None or str(noise).lower() in ("none", "null", "real") else str(noise)


#: Dataset names tried, in order, when a user's HDF5 / zarr file is given without ``raw_key`` / ``label_key``.
RAW_KEYS = ("volumes/raw", "raw", "image", "images", "data", "em", "volume")
LABEL_KEYS = ("volumes/labels/neuron_ids", "volumes/labels/mitochondria", "volumes/labels", "labels", "label",
              "segmentation", "seg", "gt", "groundtruth", "neuron_ids", "instances")


def _arrays(path: Path) -> tuple[str, list[str], dict]:
    """(format, the 3-D arrays a container holds, its root attributes); TIFF / NIfTI files hold one unnamed array."""
    from monai_denoiseg.blockwise.storage import volume_format

    fmt = volume_format(path)
    if fmt == "hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if getattr(o, "ndim", 0) == 3 else None)
                return fmt, names, dict(f.attrs)
        except OSError as e:
            raise OSError(f"{str(path)!r}: not a readable HDF5 file (truncated or corrupt?): {e}") from e
    if fmt == "zarr":
        import zarr

        try:
            node = zarr.open(zarr.storage.LocalStore(path, read_only=True), mode="r")
        except Exception as e:
            raise OSError(f"{str(path)!r}: not a readable zarr container: {e}") from e
        if isinstance(node, zarr.Array):
            return fmt, [], {}
        return fmt, sorted(k for k, a in node.members(max_depth=None) if isinstance(a, zarr.Array) and a.ndim == 3), \
            dict(node.attrs)
    return fmt, [], {}


def _ome_labels(path: Path, attrs: dict) -> str | None:
    """The first label image of an OME-Zarr image group (NGFF ``labels/`` group), or None."""
    if "multiscales" not in attrs.get("ome", attrs):
        return None
    import zarr

    try:
        group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), path="labels", mode="r")
    except Exception:
        return None
    names = dict(group.attrs).get("ome", dict(group.attrs)).get("labels") or []
    return f"labels/{names[0]}" if names else None


def detect_layout(path, raw_key: str | None = None, label_key: str | None = None,
                  label_file: str | None = None, name: str = "train_file") -> dict:
    """Where the image and the labels of a user's volume are: ``{"raw_key", "label_key", "label_file", "labels",
    "shape"}`` for :func:`~monai_denoiseg.data.datasets.load_split`.

    HDF5 / zarr: a given key must exist; a missing one is looked up by the usual names (:data:`RAW_KEYS`,
    :data:`LABEL_KEYS`; CREMI's ``volumes/raw`` + ``volumes/labels/neuron_ids``, an OME-Zarr image with its
    ``labels/`` group, or the only 3-D array as the image). Labels live inside the file (``label_key``) or
    beside it (``label_file``, e.g. a TIFF stack of ids); none found means a volume without labels. Errors
    name the file (the bundle key ``name`` it came from) and list the datasets it holds."""
    from monai_denoiseg.data.datasets import _open_volume

    if not path:
        raise ValueError(f"{name}: required: --{name} /path/to/volume (CREMI-layout HDF5, zarr / OME-Zarr, "
                         "TIFF stack or NIfTI, z-y-x).")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}: no file or folder at {str(path)!r}.")
    fmt, arrays, attrs = _arrays(path)
    ome = "multiscales" in attrs.get("ome", attrs)
    if fmt in ("tiff", "nifti") and (raw_key or (label_key and not label_file)):
        raise ValueError(f"raw_key / label_key: given, but {str(path)!r} is a {fmt} file holding one unnamed volume; "
                         "leave them null (labels of a TIFF stack come as --train_label_file).")
    raw = raw_key or next((k for k in RAW_KEYS if k in arrays), None)
    if raw is None and fmt in ("hdf5", "zarr") and not ome and arrays:
        if len(images := [a for a in arrays if a not in LABEL_KEYS and not a.startswith("labels/")]) != 1:
            raise KeyError(f"raw_key: cannot tell which dataset of {str(path)!r} is the image; it holds {arrays}. "
                           "Pass --raw_key <name>.")
        raw = images[0]
    label_path = Path(label_file).expanduser() if label_file else path
    if label_file and not label_path.exists():
        raise FileNotFoundError(f"train_label_file: no file or folder at {str(label_path)!r}.")
    larrays, lattrs = _arrays(label_path)[1:] if label_file else (arrays, attrs)
    label = label_key or next((k for k in LABEL_KEYS if k in larrays), None)
    if label is None and label_file and len(larrays) == 1:
        label = larrays[0]
    if label is None and "multiscales" in lattrs.get("ome", lattrs):
        label = _ome_labels(label_path, lattrs)
    with _open_volume(path, raw) as src:  # headers only: a wrong key fails here, listing what the file holds
        shape = src.shape
    has_labels = bool(label_file) or label is not None
    if has_labels:
        with _open_volume(label_path, label):
            pass
    return {"raw_key": raw, "label_key": label, "label_file": str(label_file) if label_file else None,
            "labels": has_labels, "shape": shape}


def default_splits(depth: int, splits: dict | None = None) -> dict:
    """``splits`` as given, or contiguous z blocks of a volume of ``depth`` slices: the first 70 % train, the
    next 10 % validation, the last 20 % test (never overlapping, each at least one slice)."""
    if splits:
        return dict(splits)
    depth = int(depth)
    if depth < 3:
        raise ValueError(f"splits: a volume of {depth} slice(s) cannot give train, validation and test slices; "
                         "pass --splits \"{'train': [0, n], 'val': [n, m], 'test': [m, k]}\" over other volumes "
                         "(--test_file) or use a deeper volume.")
    val = min(max(1, round(0.7 * depth)), depth - 2)
    test = min(max(val + 1, round(0.8 * depth)), depth - 1)
    return {"train": [0, val], "val": [val, test], "test": [test, depth]}


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
