"""Training and evaluation data: aligned (noisy, clean, label) volumes and reproducible random patches.

Following the paper, one fixed noisy realisation of the whole volume is generated once (seeded) and
cached; train/validation/test are disjoint z ranges of it. :class:`PatchDataset` samples random 2-D
slices or 3-D patches; item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a run resumed
from a checkpoint sees exactly the batches of an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, RandFlipd, RandRotate90d

from monai_denoiseg.data.noisy_copy import NOISES, make_noisy_copy
from monai_denoiseg.data.readers import to_torch_safe_ids
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D, LabelToAffinityd

__all__ = ["read_volume", "write_volume", "fixed_noisy_volume", "load_split", "PatchDataset", "train_transforms", "IMAGE_KEYS"]

IMAGE_KEYS = ("noisy", "clean")


def read_volume(path: str | os.PathLike, key: str | None = None, roi: Sequence[slice] | None = None) -> np.ndarray:
    """A (Z, Y, X) array from a CREMI-layout HDF5 (``key`` = dataset), a TIFF stack or a NIfTI file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key or 'volume'}: no file at {str(path)!r}.")
    roi = tuple(roi) if roi is not None else (slice(None),)
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5", ".hdf", ".he5")):
        import h5py

        with h5py.File(path, "r") as f:
            if key not in f:
                raise KeyError(f"{key!r}: no such dataset in {str(path)!r}; it has {sorted(_h5_datasets(f))}.")
            return np.asarray(f[key][roi])
    if name.endswith((".tif", ".tiff")):
        import tifffile

        return np.asarray(tifffile.imread(path))[roi]
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj).T[roi]  # NIfTI x-y-z -> z-y-x
    raise ValueError(f"{str(path)!r}: expected an HDF5 (.h5/.hdf), TIFF (.tif) or NIfTI (.nii[.gz]) file.")


def write_volume(path: str | os.PathLike, array: np.ndarray, key: str | None = None, overwrite: bool = False) -> Path:
    """Write a (Z, Y, X) array as HDF5 (dataset ``key``, added to an existing file), TIFF stack or NIfTI.

    Atomic (a temporary file beside the target, then ``os.replace``; an HDF5 file is copied first, so its other
    datasets survive a failed write); an existing file (TIFF/NIfTI) or dataset (HDF5) is refused unless
    ``overwrite``."""
    import shutil

    from monai_denoiseg.utils.atomic import atomic_path, refuse_existing

    path = Path(path).expanduser()
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5", ".hdf", ".he5")):
        import h5py

        if not key:
            raise ValueError(f"key: an HDF5 dataset name is required to write {str(path)!r}.")
        with atomic_path(path, suffix=path.suffix) as tmp:
            if path.exists():
                shutil.copyfile(path, tmp)
            with h5py.File(tmp, "a") as f:
                if key in f and not overwrite:
                    raise FileExistsError(f"{str(path)!r}: dataset {key!r} exists already; pass overwrite=True "
                                          "(--overwrite) to replace it.")
                if key in f:
                    del f[key]
                f.create_dataset(key, data=array, compression="gzip", chunks=True)
        return path
    refuse_existing(path, overwrite)
    if name.endswith((".tif", ".tiff")):
        import tifffile

        with atomic_path(path, suffix=".tif") as tmp:
            tifffile.imwrite(tmp, array)
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        array = np.asarray(array)  # the dtype is explicit: nibabel refuses to guess one for 64-bit ids
        with atomic_path(path, suffix=".nii.gz" if name.endswith(".gz") else ".nii") as tmp:
            nib.save(nib.Nifti1Image(array.T, np.eye(4), dtype=array.dtype), tmp)
    else:
        raise ValueError(f"{str(path)!r}: expected an HDF5 (.h5/.hdf), TIFF (.tif) or NIfTI (.nii[.gz]) file.")
    return path


def _h5_datasets(f) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, obj: names.append(n) if hasattr(obj, "shape") else None)
    return names


def fixed_noisy_volume(
    clean: np.ndarray, noise: str, seed: int, cache_dir: str | os.PathLike | None = None, tag: str = "", **params
) -> np.ndarray:
    """One fixed noisy copy of ``clean`` (uint8, :func:`make_noisy_copy`), cached as ``.npy`` in ``cache_dir``.

    The cache name holds a digest of the noise, seed, parameters, shape and ``tag`` (e.g. the source
    file and key), so a changed setting never reuses a stale copy; the copy is written atomically.
    """
    if noise not in NOISES:
        raise ValueError(f"noise: expected one of {sorted(NOISES)}, got {noise!r}.")
    if cache_dir is None:
        return make_noisy_copy(clean, noise, seed, **params)
    spec = json.dumps({"noise": noise, "seed": int(seed), "params": params, "shape": clean.shape, "tag": tag},
                      sort_keys=True, default=str)
    path = Path(cache_dir).expanduser() / f"noisy_{noise}_{hashlib.sha1(spec.encode()).hexdigest()[:12]}.npy"
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == clean.shape and cached.dtype == np.uint8:
            return np.asarray(cached)
    noisy = make_noisy_copy(clean, noise, seed, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, noisy)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(spec)
    return noisy


def load_split(
    path: str | os.PathLike,
    z_range: Sequence[int] | None = None,
    raw_key: str | None = "volumes/raw",
    label_key: str | None = "volumes/labels/neuron_ids",
    label_path: str | os.PathLike | None = None,
    noise: str | None = "gaussian_poisson",
    noise_seed: int = 0,
    noise_params: Mapping | None = None,
    noisy_path: str | os.PathLike | None = None,
    noisy_key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    keys: Sequence[str] = ("noisy", "clean", "label"),
    crop: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Aligned ``{"noisy", "clean", "label"}`` (Z, Y, X) arrays for the slices ``z_range = (start, stop)``.

    The noisy image is read from ``noisy_path``/``noisy_key`` (real noise, or a stored copy) or made by
    :func:`fixed_noisy_volume` over the *whole* volume (then cut, so every split shares one realisation).
    ``noise=None`` uses the raw image itself as the noisy input (real noise, no clean image). ``keys``
    selects what is returned: the Noise2Void strategies leave out ``"clean"``. ``crop = (H, W)`` keeps the
    centre of every slice (CREMI's 1024 x 1024 protocol); ``z_range`` accepts negative ends (``[-50, None]``).
    """
    out: dict[str, np.ndarray] = {}
    raw = read_volume(path, raw_key)
    if raw.ndim != 3:
        raise ValueError(f"{raw_key}: expected a (Z, Y, X) volume, got shape {raw.shape} in {str(path)!r}.")
    z = (slice(*z_range) if z_range is not None else slice(None), *_centre_crop(raw.shape, crop))
    if "noisy" in keys:
        if noisy_path is not None:
            noisy = read_volume(noisy_path, noisy_key)
        elif noise is None:
            noisy = raw
        else:
            tag = f"{Path(path).resolve()}:{raw_key}"
            noisy = fixed_noisy_volume(raw, noise, noise_seed, cache_dir, tag=tag, **dict(noise_params or {}))
        if noisy.shape != raw.shape:
            raise ValueError(f"noisy: expected the raw shape {raw.shape}, got {noisy.shape}.")
        out["noisy"] = noisy[z]
    if "clean" in keys:
        if noise is None and noisy_path is None:
            raise ValueError("clean: requested, but noise=None makes the raw image the noisy input (no clean image).")
        out["clean"] = raw[z]
    if "label" in keys:
        label = read_volume(label_path or path, label_key)
        if label.shape != raw.shape:
            raise ValueError(f"{label_key}: expected the raw shape {raw.shape}, got {label.shape}.")
        out["label"] = label[z]
    return out


def _centre_crop(shape: Sequence[int], crop: Sequence[int] | None) -> tuple[slice, slice]:
    if crop is None:
        return slice(None), slice(None)
    if len(crop) != 2 or any(int(c) < 1 or int(c) > n for c, n in zip(crop, shape[1:])):
        raise ValueError(f"crop: expected (H, W) no larger than the slices {tuple(shape[1:])}, got {tuple(crop)}.")
    return tuple(slice((n - int(c)) // 2, (n - int(c)) // 2 + int(c)) for c, n in zip(crop, shape[1:]))


def train_transforms(
    offsets: Sequence[Sequence[int]] | None = PAPER_OFFSETS_2D,
    spatial_dims: int = 2,
    image_keys: Sequence[str] = IMAGE_KEYS,
    label_key: str = "label",
    flips: bool = True,
    rotations: bool = True,
    background_label: int | None = None,
    ignore_label: int | None = None,
) -> Compose:
    """Flips and in-plane 90-degree rotations of images and labels, then affinities (after every spatial change).

    ``offsets=None`` skips the affinities (a binary task keeps its 0/1 label as the target).
    """
    keys = [*image_keys, label_key]
    axes = range(spatial_dims)
    t = [RandFlipd(keys, prob=0.5, spatial_axis=a, allow_missing_keys=True) for a in axes] if flips else []
    if rotations:
        t.append(RandRotate90d(keys, 0.75, 3, (spatial_dims - 2, spatial_dims - 1), allow_missing_keys=True))
    if offsets is not None:
        t.append(LabelToAffinityd(label_key, offsets, background_label=background_label, ignore_label=ignore_label))
    return Compose(t)


class PatchDataset(torch.utils.data.Dataset):
    """``samples_per_epoch`` random patches of aligned (Z, Y, X) volumes, reproducible per (seed, epoch, index).

    Args:
        volumes: arrays of one shape, e.g. :func:`load_split`'s dict; images (``image_keys``) are scaled
            to [0, 1] float32 (uint8 / 255), the label stays an integer id map (int64).
        patch_size: (H, W) for 2-D slices (a random z, then a random crop) or (D, H, W) for 3-D patches.
        samples_per_epoch: length of an epoch.
        transform: dictionary transform applied to each (1, *patch) item, e.g. :func:`train_transforms`;
            it is reseeded per item.
        seed: base seed; call :meth:`set_epoch` at each epoch start (the trainer does).
        unlabelled: noisy-only (Z, Y, X) volumes (e.g. a second, unannotated cube) for the self-supervised
            strategies: each item comes from them with probability ``unlabelled_fraction``, its label is
            all zeros, and every item carries ``"labelled"`` (1.0 or 0.0, shape (1,)) so that the trainer
            leaves unlabelled items out of the segmentation loss while the Noise2Void terms use them all
            (the second paper trains its denoiser on every noisy image, its segmenter on the annotated ones).
    """

    def __init__(
        self,
        volumes: Mapping[str, np.ndarray],
        patch_size: Sequence[int],
        samples_per_epoch: int,
        transform=None,
        seed: int = 0,
        image_keys: Sequence[str] = IMAGE_KEYS,
        unlabelled: Mapping[str, np.ndarray] | None = None,
        unlabelled_fraction: float = 0.5,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3):
            raise ValueError(f"patch_size: expected (H, W) or (D, H, W), got {patch_size!r}.")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch: expected >= 1, got {samples_per_epoch}.")
        self.volumes, self.shape = dict(volumes), self._check_volumes("volumes", volumes)
        self.samples_per_epoch, self.transform, self.seed = int(samples_per_epoch), transform, int(seed)
        self.image_keys = tuple(k for k in image_keys if k in volumes)
        self.unlabelled, self.unlabelled_fraction = None, float(unlabelled_fraction)
        if unlabelled is not None:
            if not 0.0 <= self.unlabelled_fraction <= 1.0:
                raise ValueError(f"unlabelled_fraction: expected a probability in [0, 1], got {unlabelled_fraction}.")
            missing = [k for k in self.image_keys if k not in unlabelled]
            if missing:
                raise ValueError(f"unlabelled: has keys {sorted(unlabelled)}, but every item needs the images "
                                 f"{missing} (only strategies that never read the clean image can use unlabelled data).")
            shape = self._check_volumes("unlabelled", {k: unlabelled[k] for k in self.image_keys})
            zeros = {k: np.broadcast_to(np.zeros((), np.asarray(v).dtype), shape)  # labels: zeros, no memory
                     for k, v in self.volumes.items() if k not in self.image_keys}
            self.unlabelled = ({**{k: unlabelled[k] for k in self.image_keys}, **zeros}, shape)
        self.epoch = 0

    def _check_volumes(self, name: str, volumes: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        shapes = {k: np.shape(v) for k, v in volumes.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"{name}: expected one shape for every key, got {shapes}.")
        shape = next(iter(shapes.values()))
        if len(shape) != 3:
            raise ValueError(f"{name}: expected (Z, Y, X) arrays, got shapes {shapes}.")
        if any(p > s for p, s in zip(self.patch_size[::-1], shape[::-1])):
            raise ValueError(f"patch_size: {self.patch_size} does not fit in the {name} shape {shape}.")
        return shape

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        volumes, shape, labelled = self.volumes, self.shape, None
        if self.unlabelled is not None:
            labelled = rng.random() >= self.unlabelled_fraction
            if not labelled:
                volumes, shape = self.unlabelled
        full = (1,) * (3 - len(self.patch_size)) + self.patch_size
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, full)]
        roi = tuple(slice(a, a + p) for a, p in zip(start, full))
        item = {}
        for key, vol in volumes.items():
            patch = np.asarray(vol[roi]).reshape((1,) + self.patch_size)  # (1, *patch): channel first
            if key in self.image_keys:
                item[key] = torch.from_numpy(patch.astype(np.float32) / 255.0)
            else:
                item[key] = torch.from_numpy(to_torch_safe_ids(patch, name=key).astype(np.int64))  # ids >= 2**63 raise
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            item = self.transform(item)
        if labelled is not None:
            item["labelled"] = torch.tensor([float(labelled)])
        return {k: torch.as_tensor(v).as_subclass(torch.Tensor) for k, v in item.items()}
