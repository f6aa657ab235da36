"""Training and evaluation data: aligned (noisy, clean, label) volumes and reproducible random patches.

Following the paper, one fixed noisy realisation of the whole volume is generated once (seeded) and
cached; train/validation/test are disjoint z ranges of it. :class:`PatchDataset` samples random 2-D
slices or 3-D patches; item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a run resumed
from a checkpoint sees exactly the batches of an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, RandFlipd, RandRotate90d

from monai_denoiseg.data.noisy_copy import NOISES, make_noisy_copy
from monai_denoiseg.data.readers import INT64_MAX, to_torch_safe_ids
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D, LabelToAffinityd
from monai_denoiseg.utils.validation import (
    check_image,
    check_labels,
    check_same_shape,
    check_volume_shape,
    check_z_range,
    file_error,
    where,
)

__all__ = ["read_volume", "write_volume", "fixed_noisy_volume", "load_split", "PatchDataset", "train_transforms", "IMAGE_KEYS"]

IMAGE_KEYS = ("noisy", "clean")


_H5 = (".h5", ".hdf5", ".hdf", ".he5")
_TIFF = (".tif", ".tiff")
_NIFTI = (".nii", ".nii.gz")


class _Source:
    """A volume opened without reading its voxels: ``shape``, ``dtype`` and ``read(roi)``."""

    def __init__(self, shape, dtype, read) -> None:
        self.shape, self.dtype, self.read = tuple(int(s) for s in shape), np.dtype(dtype), read


@contextlib.contextmanager
def _open_volume(path: str | os.PathLike, key: str | None = None):
    """Open ``path[key]`` (HDF5 dataset, zarr / OME-Zarr array, TIFF stack, NIfTI) lazily; every failure names
    the file and key: FileNotFoundError, KeyError (listing the datasets the file holds), OSError (truncated,
    corrupt, junk)."""
    path = Path(path).expanduser()
    name = path.name.lower().rstrip("/")
    if name.endswith(".zarr") or (path.is_dir() and any((path / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))):
        if not path.is_dir():
            raise FileNotFoundError(f"{key or 'volume'}: no zarr folder at {str(path)!r}.")
        from monai_denoiseg.blockwise.storage import open_source

        arr, _ = open_source(path, key, "zarr")

        def read(roi):
            try:
                return np.asarray(arr[roi])
            except (OSError, ValueError, RuntimeError) as e:  # a damaged chunk
                raise file_error(path, key, "zarr", e) from e

        yield _Source(arr.shape, arr.dtype, read)
        return
    if not path.is_file():
        raise FileNotFoundError(f"{key or 'volume'}: no file at {str(path)!r}.")
    if name.endswith(_H5):
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise file_error(path, key, "HDF5", e) from e
        with f:
            ds = f.get(key) if key else None
            if not isinstance(ds, h5py.Dataset):
                raise KeyError(f"{key!r}: no such dataset in {str(path)!r}; it has {sorted(_h5_datasets(f))}.")

            def read(roi):
                try:
                    return np.asarray(ds[roi])
                except (OSError, RuntimeError) as e:  # a damaged chunk
                    raise file_error(path, key, "HDF5", e) from e

            yield _Source(ds.shape, ds.dtype, read)
        return
    if name.endswith(_TIFF):
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except MemoryError:
            raise
        except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error... for junk
            raise file_error(path, None, "TIFF", e) from e
        with tif:
            series = tif.series[0] if tif.series else None
            shape = tuple(series.shape) if series is not None else ()
            if not shape or 0 in shape:  # junk after a valid header: no pages, nothing to read
                raise file_error(path, None, "TIFF", detail=f" with image pages (found {len(tif.series)} series, "
                                 f"shape {shape})")

            def read(roi):
                try:
                    return _read_tiff(series, shape, roi)
                except MemoryError:
                    raise
                except Exception as e:  # truncated strips, bad compression
                    raise file_error(path, None, "TIFF", e) from e

            yield _Source(shape, series.dtype, read)
        return
    if name.endswith(_NIFTI):
        import nibabel as nib

        try:
            img = nib.load(path)
            shape = tuple(img.shape)[::-1]
        except MemoryError:
            raise
        except Exception as e:
            raise file_error(path, None, "NIfTI", e) from e

        def read(roi):
            try:
                return np.asarray(img.dataobj).T[roi]  # NIfTI x-y-z -> z-y-x
            except MemoryError:
                raise
            except Exception as e:
                raise file_error(path, None, "NIfTI", e) from e

        yield _Source(shape, img.get_data_dtype(), read)
        return
    raise ValueError(f"{str(path)!r}: expected an HDF5 (.h5/.hdf), zarr / OME-Zarr (.zarr), TIFF (.tif) or NIfTI "
                     "(.nii[.gz]) volume.")


def _read_tiff(series, shape: tuple[int, ...], roi: tuple) -> np.ndarray:
    """Only the pages of the z range when the stack has one page per slice (ISBI/SNEMI), else the whole series."""
    pages = series.pages
    z = roi[0] if roi else slice(None)
    if (len(shape) == 3 and isinstance(z, slice) and z != slice(None) and len(pages) == shape[0]
            and all(p is not None for p in pages) and tuple(pages[0].shape) == shape[1:]):
        index = range(shape[0])[z]
        if not len(index):
            return np.empty((0, *shape[1:]), series.dtype)[(slice(None), *roi[1:])]
        return np.stack([pages[i].asarray() for i in index])[(slice(None), *roi[1:])]
    return np.asarray(series.asarray())[roi]


def read_volume(path: str | os.PathLike, key: str | None = None, roi: Sequence[slice] | None = None) -> np.ndarray:
    """A (Z, Y, X) array from a CREMI-layout HDF5 or a zarr / OME-Zarr container (``key`` = dataset or array;
    an OME-Zarr image group gives its full resolution), a TIFF stack or a NIfTI file.

    ``roi`` reads a crop (HDF5 and one-page-per-slice TIFF stacks read only that). Errors name the file and
    key: a missing key lists the file's datasets; a truncated, corrupt or junk file raises ``OSError``."""
    roi = tuple(roi) if roi is not None else (slice(None),)
    with _open_volume(path, key) as src:
        return src.read(roi)


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
    intensity_range: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Aligned ``{"noisy", "clean", "label"}`` (Z, Y, X) arrays for the slices ``z_range = (start, stop)``.

    The noisy image is read from ``noisy_path``/``noisy_key`` (real noise, or a stored copy) or made by
    :func:`fixed_noisy_volume` over the *whole* volume (then cut, so every split shares one realisation).
    ``noise=None`` uses the raw image itself as the noisy input (real noise, no clean image). ``keys``
    selects what is returned: the Noise2Void strategies leave out ``"clean"``. ``crop = (H, W)`` keeps the
    centre of every slice (CREMI's 1024 x 1024 protocol); ``z_range`` accepts negative ends (``[-50, None]``).

    Inputs are checked before training sees them (:mod:`monai_denoiseg.utils.validation`), errors naming file,
    key and shape: from the headers, before any voxel is read, volumes are 3-D and non-empty, ``z_range`` lies
    inside the volume, noisy and label volumes have the raw shape; on the data read, images are finite uint8
    (any other dtype declares ``intensity_range = (low, high)`` and is rescaled to uint8 0-255, the scale
    the toolkit trains on) and labels non-negative integer ids (whole-number float labels are converted).
    Only the split is read, except the raw volume when a noisy copy of the whole volume is made.
    """
    out: dict[str, np.ndarray] = {}
    raw_name = where(path, raw_key)
    if "clean" in keys and noise is None and noisy_path is None:
        raise ValueError("clean: requested, but noise=None makes the raw image the noisy input (no clean image).")
    make_noise = "noisy" in keys and noisy_path is None and noise is not None
    need_raw = make_noise or "clean" in keys or ("noisy" in keys and noisy_path is None)
    with _open_volume(path, raw_key) as src:
        shape = check_volume_shape(src.shape, raw_name)
        z = check_z_range(z_range, shape[0], raw_name)
        roi = (z, *_centre_crop(shape, crop))
        raw = src.read((slice(None),) if make_noise else roi) if need_raw else None
    span = f"z {z.start}-{z.stop}"
    if raw is not None:  # the whole volume when it is read whole (the noisy copy covers it), else the split
        name, z0 = (where(path, raw_key), 0) if make_noise else (where(path, raw_key, span), z.start)
        raw = _to_uint8(raw, check_image(raw, name, intensity_range, z0))
        split = raw[roi] if make_noise else raw
    if "noisy" in keys:
        if noisy_path is not None:
            noisy_name = where(noisy_path, noisy_key)
            with _open_volume(noisy_path, noisy_key) as nsrc:
                check_same_shape(shape, raw_name, **{noisy_name: nsrc.shape})
                noisy = nsrc.read(roi)
            out["noisy"] = _to_uint8(noisy, check_image(noisy, f"{noisy_name}, {span}", intensity_range, z.start))
        elif noise is None:
            out["noisy"] = split
        else:
            tag = f"{Path(path).resolve()}:{raw_key}" + (f":{list(intensity_range)}" if intensity_range else "")
            noisy = fixed_noisy_volume(raw, noise, noise_seed, cache_dir, tag=tag, **dict(noise_params or {}))
            out["noisy"] = np.ascontiguousarray(noisy[roi])  # a copy: the whole noisy volume is freed
    if "clean" in keys:
        out["clean"] = np.ascontiguousarray(split)
    if "label" in keys:
        label_name = where(label_path or path, label_key)
        with _open_volume(label_path or path, label_key) as lsrc:
            check_same_shape(shape, raw_name, **{label_name: lsrc.shape})
            label = lsrc.read(roi)
        out["label"] = check_labels(label, f"{label_name}, {span}", z_offset=z.start)
    return out


def _to_uint8(x: np.ndarray, intensity: tuple[float, float]) -> np.ndarray:
    """``x`` with its checked range ``(low, high)`` mapped to uint8 0-255 (uint8 0-255 passes as it is)."""
    low, high = intensity
    if x.dtype == np.uint8 and (low, high) == (0.0, 255.0):
        return x
    out = np.empty(x.shape, np.uint8)
    step = max(1, (16 * 2**20) // max(1, x[:1].size))  # float32 temporaries of about 64 MiB
    for i in range(0, x.shape[0], step):
        block = (x[i:i + step].astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
        out[i:i + step] = np.clip(np.rint(block), 0, 255)
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


def describe(obj, depth: int = 4) -> str:
    """A stable description of a (composed) transform: class names and settings, recursively, no addresses."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(describe(o, depth) for o in obj) + "]"
    if isinstance(obj, np.ndarray):
        return repr(obj.tolist())
    if depth == 0 or not hasattr(obj, "__dict__"):
        return type(obj).__name__
    settings = {k: v for k, v in sorted(vars(obj).items()) if k != "R" and not k.startswith("_")
                and (v is None or isinstance(v, (bool, int, float, str, list, tuple, np.ndarray))
                     or type(v).__module__.startswith("monai"))}
    return f"{type(obj).__name__}(" + ", ".join(f"{k}={describe(v, depth - 1)}" for k, v in settings.items()) + ")"


class PatchDataset(torch.utils.data.Dataset):
    """``samples_per_epoch`` random patches of aligned (Z, Y, X) volumes, reproducible per (seed, epoch, index).

    Args:
        volumes: arrays of one shape, e.g. :func:`load_split`'s dict; images (``image_keys``) are scaled
            to [0, 1] float32 (uint8 / 255), the label stays an integer id map (int64). In-memory arrays are
            checked whole here (finite uint8 images, non-negative integer ids below 2**63; whole-number float
            labels are converted), so a bad voxel fails at once, not when a random patch meets it; other
            array-likes (e.g. h5py datasets) are checked patch by patch.
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
        intensity_range: (low, high) of non-uint8 images, mapped to [0, 1]; None: images must be uint8.
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
        intensity_range: Sequence[float] | None = None,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3):
            raise ValueError(f"patch_size: expected (H, W) or (D, H, W), got {patch_size!r}.")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch: expected >= 1, got {samples_per_epoch}.")
        self.volumes, self.shape = dict(volumes), self._check_volumes("volumes", volumes)
        self.samples_per_epoch, self.transform, self.seed = int(samples_per_epoch), transform, int(seed)
        self.image_keys = tuple(k for k in image_keys if k in volumes)
        self.intensity_range = None if intensity_range is None else tuple(float(v) for v in intensity_range)
        self.volumes = self._check_values("volumes", self.volumes)
        self.unlabelled, self.unlabelled_fraction = None, float(unlabelled_fraction)
        if unlabelled is not None:
            if not 0.0 <= self.unlabelled_fraction <= 1.0:
                raise ValueError(f"unlabelled_fraction: expected a probability in [0, 1], got {unlabelled_fraction}.")
            missing = [k for k in self.image_keys if k not in unlabelled]
            if missing:
                raise ValueError(f"unlabelled: has keys {sorted(unlabelled)}, but every item needs the images "
                                 f"{missing} (only strategies that never read the clean image can use unlabelled data).")
            shape = self._check_volumes("unlabelled", {k: unlabelled[k] for k in self.image_keys})
            images = self._check_values("unlabelled", {k: unlabelled[k] for k in self.image_keys})
            zeros = {k: np.broadcast_to(np.zeros((), np.asarray(v[:0]).dtype), shape)  # labels: zeros, no memory
                     for k, v in self.volumes.items() if k not in self.image_keys}
            self.unlabelled = ({**images, **zeros}, shape)
        self.epoch = 0

    def _check_volumes(self, name: str, volumes: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        shapes = {k: np.shape(v) for k, v in volumes.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"{name}: expected one shape for every key, got {shapes}.")
        shape = next(iter(shapes.values()))
        if len(shape) != 3:
            raise ValueError(f"{name}: expected (Z, Y, X) arrays, got shapes {shapes}.")
        if 0 in shape:  # else numpy's "high <= 0" when the first patch is drawn
            raise ValueError(f"{name}: expected non-empty (Z, Y, X) arrays, got shapes {shapes}.")
        if any(p > s for p, s in zip(self.patch_size[::-1], shape[::-1])):
            raise ValueError(f"patch_size: {self.patch_size} does not fit in the {name} shape {shape}.")
        return shape

    def _check_values(self, name: str, volumes: Mapping) -> dict:
        """In-memory arrays checked whole (labels converted); lazy array-likes pass, checked per patch."""
        checked = {}
        for key, vol in volumes.items():
            if not isinstance(vol, np.ndarray):
                checked[key] = vol
            elif key in self.image_keys:
                check_image(vol, f"{name}[{key!r}]", self.intensity_range)
                checked[key] = vol
            else:
                checked[key] = check_labels(vol, f"{name}[{key!r}]", max_id=INT64_MAX)
        return checked

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def fingerprint(self) -> str:
        """Hash of everything that determines the items (volumes' bytes or file and key, patch size, epoch
        length, seed, transform, unlabelled data): caches of runs trained on them (pretrained stages) key on it."""
        h = hashlib.sha256(repr((self.patch_size, self.samples_per_epoch, self.seed, self.image_keys,
                                 self.intensity_range, self.unlabelled_fraction, describe(self.transform))).encode())
        groups = [self.volumes] + ([self.unlabelled[0]] if self.unlabelled is not None else [])
        for volumes in groups:
            for key in sorted(volumes):
                vol = volumes[key]
                h.update(f"{key}{np.shape(vol)}{np.asarray(vol[:0]).dtype}".encode())
                if isinstance(vol, np.ndarray):
                    for z in range(vol.shape[0]):  # slice by slice: never a second copy of the volume
                        h.update(np.ascontiguousarray(vol[z]).data)
                else:  # lazy (h5py): its file and dataset name
                    h.update(repr((getattr(getattr(vol, "file", None), "filename", None), getattr(vol, "name", None)))
                             .encode())
        return h.hexdigest()[:16]

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
        low, high = self.intensity_range or (0.0, 255.0)
        for key, vol in volumes.items():
            patch = np.asarray(vol[roi]).reshape((1,) + self.patch_size)  # (1, *patch): channel first
            if not isinstance(vol, np.ndarray):  # lazy: checked where it is read
                file = getattr(getattr(vol, "file", None), "filename", None)  # an h5py dataset names its file
                name = f"{where(file, getattr(vol, 'name', key))} ({key!r})" if file else repr(key)
                name += f", patch at {tuple(start)}"
                if key in self.image_keys:
                    check_image(patch, name, self.intensity_range)
                else:
                    patch = check_labels(patch, name, max_id=INT64_MAX)
            if key in self.image_keys:
                item[key] = torch.from_numpy((patch.astype(np.float32) - low) / (high - low))
            else:
                item[key] = torch.from_numpy(to_torch_safe_ids(patch, name=key).astype(np.int64))  # ids >= 2**63 raise
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            item = self.transform(item)
        if labelled is not None:
            item["labelled"] = torch.tensor([float(labelled)])
        return {k: torch.as_tensor(v).as_subclass(torch.Tensor) for k, v in item.items()}
