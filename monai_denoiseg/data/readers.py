"""MONAI image readers for the EM formats the field uses: TIFF stacks (SNEMI3D/ISBI) and CREMI-layout HDF5.

Both return arrays in the order the file stores them, z-y-x (no transposition, unlike MONAI's ITK,
NIfTI and PIL readers, which return x-y-z or transposed 2-D arrays), with an affine whose diagonal is
the voxel spacing in that same order, so that ``MetaTensor.pixdim`` reads (z, y, x). They plug into
``LoadImage(reader=...)``/``LoadImaged``; ``ensure_channel_first=True`` adds the channel axis in front.

torch has no full uint64 type and MONAI's ``LoadImage`` casts uint64 to int64 silently (an id of
2**63 or more, such as CREMI's ``uint64(-1)`` background marker, wraps to a negative number). These
readers make the cast explicit: see ``uint64_mode``. Note that ``LoadImage`` casts to float32 unless
it is given ``dtype=None``: always pass ``dtype=None`` for label volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from monai_denoiseg.utils.validation import check_volume_shape, file_error, where

__all__ = ["TiffStackReader", "CremiH5Reader", "to_torch_safe_ids", "UINT64_MODES"]

PathLike = str | Path
UINT64_MODES = ("check", "view")
INT64_MAX = np.iinfo(np.int64).max


def to_torch_safe_ids(array: np.ndarray, mode: str = "check", name: str = "array") -> np.ndarray:
    """Return a uint64 array as int64 (torch has no full uint64); other dtypes pass unchanged.

    ``mode="check"`` converts only when every id is below 2**63 and raises ``ValueError`` listing the
    offending ids otherwise; ``mode="view"`` reinterprets the bits, which is lossless and reversible
    (``.view(np.uint64)``): ids below 2**63 are unchanged, ``2**64 - k`` becomes ``-k`` (CREMI's
    ``uint64(-1)`` marker becomes -1).
    """
    if mode not in UINT64_MODES:
        raise ValueError(f"uint64_mode: expected one of {UINT64_MODES}, got {mode!r}.")
    if array.dtype != np.uint64:
        return array
    if mode == "view":
        return array.view(np.int64)
    too_large = array > INT64_MAX
    if too_large.any():
        ids = np.unique(array[too_large])
        raise ValueError(
            f"{name}: uint64 ids above 2**63-1 cannot be held by torch int64, got {ids.size} such ids "
            f"(e.g. {', '.join(map(str, ids[:3]))}) in shape {array.shape}; relabel them, or pass "
            "uint64_mode='view' to keep their bits as negative int64 ids."
        )
    return array.astype(np.int64)


def _require_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    return p


def _roi_tuple(roi: Sequence[slice] | None) -> tuple[slice, ...]:
    roi = tuple(roi or ())
    if not all(isinstance(s, slice) and s.step in (None, 1) and (s.start or 0) >= 0 for s in roi):
        raise ValueError(f"roi: expected slices with non-negative starts and step 1 (z, y, x order), got {roi!r}.")
    return roi


class _ZYXReader(ImageReader):
    """Common part: arrays as stored (z-y-x), spacing-diagonal affine, explicit uint64 handling."""

    suffixes: tuple[str, ...] = ()

    def __init__(self, roi: Sequence[slice] | None, channel_dim: int | None, uint64_mode: str) -> None:
        if uint64_mode not in UINT64_MODES:
            raise ValueError(f"uint64_mode: expected one of {UINT64_MODES}, got {uint64_mode!r}.")
        self.roi = _roi_tuple(roi)
        self.channel_dim = channel_dim
        self.uint64_mode = uint64_mode

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return is_supported_format(filename, list(self.suffixes))

    def _read_one(self, path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
        """(array cropped to ``roi``, spacing, origin of the full array (array order, None = unknown), extra meta)."""
        raise NotImplementedError

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> list[Path]:
        """Resolve the file names only; ``get_data`` reads, so that its errors reach the caller of
        ``LoadImage`` directly instead of making it fall back to MONAI's other readers."""
        return [Path(name).expanduser() for name in ensure_tuple(data)]

    def get_data(self, img: Sequence[PathLike] | PathLike) -> tuple[np.ndarray, dict]:
        """(array in file order, meta with ``spatial_shape``, ``affine``, ``spacing``, ``pixdim``, ...);
        several files are stacked along a new first (channel) axis."""
        arrays: list[np.ndarray] = []
        compatible_meta: dict = {}
        for path in ensure_tuple(img):
            array, spacing, origin, extra = self._read_one(_require_file(path))
            array = to_torch_safe_ids(array, self.uint64_mode, name=extra["filename_or_obj"])
            shape = np.asarray(array.shape)
            spatial_shape = shape if self.channel_dim is None else np.delete(shape, self.channel_dim)
            nd = len(spatial_shape)
            spacing = np.ones(nd) if spacing is None else np.asarray(spacing, dtype=np.float64)[-nd:]
            origin = np.zeros(nd) if origin is None else np.asarray(origin, dtype=np.float64)[-nd:]
            start = np.array([s.start or 0 for s in self.roi[:nd]] + [0] * (nd - len(self.roi[:nd])))
            affine = np.eye(nd + 1)
            affine[:nd, :nd] = np.diag(spacing)
            affine[:nd, nd] = origin + start * spacing
            header = {
                **extra,
                MetaKeys.SPATIAL_SHAPE: spatial_shape,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if self.channel_dim is None else self.channel_dim,
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.PIXDIM: spacing,
                "spacing": spacing.copy(),
            }
            arrays.append(array)
            _copy_compatible_dict(header, compatible_meta)
        return _stack_images(arrays, compatible_meta), compatible_meta


class TiffStackReader(_ZYXReader):
    """Read a multi-page TIFF stack whole, as (Z, Y, X) in page order, with tifffile.

    MONAI's ``PILReader`` reads only the first page (and transposes it). A single-page TIFF gives
    (Y, X). The dtype is kept (for uint64 see ``uint64_mode``).

    Args:
        roi: optional crop (z, y, x slices with non-negative starts, step 1); only the pages in the
            z range are decoded. The affine's translation is shifted to the crop's corner.
        spacing: voxel size in array order, e.g. (50, 4, 4) nm for ISBI 2012; default 1 per axis.
        channel_dim: axis holding channels (e.g. -1 for RGB pages); default: no channel axis.
        uint64_mode: "check" (int64 if all ids < 2**63, else ValueError) or "view" (bit reinterpretation).
    """

    suffixes = ("tif", "tiff")

    def __init__(
        self,
        roi: Sequence[slice] | None = None,
        spacing: Sequence[float] | None = None,
        channel_dim: int | None = None,
        uint64_mode: str = "check",
    ) -> None:
        super().__init__(roi, channel_dim, uint64_mode)
        self.spacing = None if spacing is None else np.asarray(spacing, dtype=np.float64)

    def _read_one(self, path: Path) -> tuple:
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except MemoryError:
            raise
        except Exception as e:  # junk: TiffFileError, ValueError, struct.error, ...
            raise file_error(path, None, "TIFF", e) from e
        with tif:
            n_pages = len(tif.pages)
            if n_pages == 0 or not tif.series:  # a valid header, then junk: tifffile would return shape (0,)
                raise file_error(path, None, "TIFF", detail=" with image pages (found none)")
            pages = list(range(n_pages)[self.roi[0]]) if n_pages > 1 and self.roi else None
            if pages == []:
                raise ValueError(f"roi: z range {self.roi[0]} selects no page of the {n_pages} in {str(path)!r}.")
            try:
                if pages:  # decode only the selected pages, keep the z axis
                    array = np.stack([tif.pages[i].asarray() for i in pages])[(slice(None),) + self.roi[1:]]
                else:
                    array = tif.asarray()[self.roi]
            except MemoryError:
                raise
            except Exception as e:  # truncated strips, bad compression
                raise file_error(path, None, "TIFF", e) from e
        check_volume_shape(array.shape, f"{where(path)} (roi {self.roi!r})" if self.roi else where(path), ndim=None)
        return np.ascontiguousarray(array), self.spacing, None, {"filename_or_obj": str(path)}


class CremiH5Reader(_ZYXReader):
    """Read one dataset of a CREMI-layout HDF5 file (``volumes/raw``, ``volumes/labels/neuron_ids``, ...).

    The dataset's ``resolution`` attribute (nm, z-y-x) becomes the spacing (affine diagonal,
    ``spacing`` and ``pixdim`` meta keys) and its ``offset`` attribute (nm, z-y-x; CREMI writes it for
    cropped volumes) the affine translation. ``roi`` is read lazily: only that block leaves the file.

    Args:
        key: dataset path inside the file.
        roi: optional crop (z, y, x slices with non-negative starts, step 1), read lazily by h5py.
        channel_dim: axis holding channels; default: no channel axis.
        uint64_mode: "check" (int64 if all ids < 2**63, else ValueError) or "view" (bit reinterpretation,
            CREMI's ``uint64(-1)`` background becomes -1).
    """

    suffixes = ("h5", "hdf5", "hdf", "he5")

    def __init__(
        self,
        key: str = "volumes/raw",
        roi: Sequence[slice] | None = None,
        channel_dim: int | None = None,
        uint64_mode: str = "check",
    ) -> None:
        super().__init__(roi, channel_dim, uint64_mode)
        self.key = key

    def _read_one(self, path: Path) -> tuple:
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise file_error(path, self.key, "HDF5", e) from e
        with f:
            dataset = f.get(self.key)
            if not isinstance(dataset, h5py.Dataset):
                available: list[str] = []
                f.visititems(lambda name, obj: available.append(name) if isinstance(obj, h5py.Dataset) else None)
                listing = ", ".join(available) or "none"
                raise ValueError(f"key: no dataset {self.key!r} in {str(path)!r}; available datasets: {listing}.")
            try:
                array = dataset[self.roi] if self.roi else dataset[()]
            except (OSError, RuntimeError) as e:  # a damaged chunk
                raise file_error(path, self.key, "HDF5", e) from e
            spacing, origin = dataset.attrs.get("resolution"), dataset.attrs.get("offset")
        name = where(path, self.key) + (f" (roi {self.roi!r})" if self.roi else "")
        check_volume_shape(np.shape(array), name, ndim=None)
        return np.asarray(array), spacing, origin, {"filename_or_obj": str(path), "key": self.key}
