"""Lazy volumes in, chunked OME-Zarr out: nothing here reads a whole volume into memory.

- :func:`open_volume`: a (Z, Y, X) volume of zarr (v2 or v3, an array or an OME-Zarr image group), N5,
  HDF5 (h5py dataset), a TIFF stack (tifffile as a zarr store) or NIfTI (nibabel's lazy proxy), as a ``funlib.persistence.Array`` whose
  reads touch only the chunks asked for. Voxel size comes from the file (OME-Zarr scale, CREMI
  ``resolution``, funlib's ``voxel_size``) or is given.
- :func:`prepare_array`: an output array (zarr v3, blosc-compressed, chunks = one block, so that workers
  never write the same chunk).
- :func:`write_ome_metadata`: OME-NGFF 0.5 ``multiscales`` of the denoised pyramid and the ``labels``
  group of the instances, so napari and neuroglancer open the output folder as an image with labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from funlib.geometry import Coordinate
from funlib.persistence import Array, open_ds, prepare_ds

__all__ = ["open_volume", "open_source", "prepare_array", "write_ome_metadata", "volume_format", "ZARR_SUFFIXES"]

ZARR_SUFFIXES = (".zarr", ".n5", ".ome.zarr")
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_TIFF_SUFFIXES = (".tif", ".tiff")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def volume_format(path: str | os.PathLike) -> str:
    """``"zarr"``, ``"n5"``, ``"hdf5"`` or ``"tiff"`` from the path; ValueError for anything else."""
    name = str(path).rstrip("/").lower()
    if name.endswith(".n5"):
        return "n5"
    if name.endswith(".zarr") or (Path(path).is_dir() and any((Path(path) / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))):
        return "zarr"
    if name.endswith(_H5_SUFFIXES):
        return "hdf5"
    if name.endswith(_TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    raise ValueError(f"{str(path)!r}: expected a zarr/OME-Zarr folder, an N5 folder, an HDF5 file, a TIFF stack "
                     "or a NIfTI file.")


class _ZYXProxy:
    """A NIfTI image's lazy ``dataobj`` (x, y, z) seen as (z, y, x): slices are reversed, then the block transposed."""

    def __init__(self, dataobj) -> None:
        self.dataobj = dataobj
        self.shape = tuple(int(s) for s in dataobj.shape)[::-1]
        self.dtype = np.dtype(dataobj.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        return np.asarray(self.dataobj[tuple(reversed(index))]).T


def _zarr_keys(group) -> list[str]:
    return sorted(k for k, _ in group.arrays()) + sorted(f"{k}/" for k, _ in group.groups())


def _ome_first_dataset(node) -> tuple[object, Sequence[float] | None]:
    """An OME-Zarr image group -> its full-resolution array and scale (NGFF 0.4 or 0.5 metadata)."""
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        raise KeyError("no multiscales")
    first = multiscales[0]["datasets"][0]
    scale = next((t["scale"] for t in first.get("coordinateTransformations", ()) if t.get("type") == "scale"), None)
    return node[first["path"]], scale


def open_source(path: Path, key: str | None, fmt: str):
    """(array-like, voxel size or None) of ``path[key]``, opened lazily; errors name the file and key.

    The one reader of zarr/OME-Zarr containers: :func:`open_volume` here and the training data
    (:func:`monai_denoiseg.data.datasets.read_volume`) both use it."""
    if fmt == "hdf5":
        import h5py

        from monai_denoiseg.data.datasets import _h5_datasets

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise OSError(f"{str(path)!r}: not a readable HDF5 file (truncated or corrupt?): {e}") from e
        if key is None or key not in f or not hasattr(f[key], "shape"):
            raise KeyError(f"{str(path)!r}: no dataset {key!r}; the file holds {_h5_datasets(f)}.")
        ds = f[key]
        res = ds.attrs.get("resolution", f.attrs.get("resolution"))
        return ds, None if res is None else [float(r) for r in np.ravel(res)]
    if fmt == "tiff":
        import tifffile

        try:
            store = tifffile.imread(path, aszarr=True)
            arr = zarr.open_array(store, mode="r") if not key else zarr.open_group(store, mode="r")[key]
        except Exception as e:  # tifffile raises several types for junk files
            raise OSError(f"{str(path)!r}: not a readable TIFF stack: {e}") from e
        return arr, None
    if fmt == "nifti":
        import nibabel as nib

        try:
            img = nib.load(path)
        except Exception as e:
            raise OSError(f"{str(path)!r}: not a readable NIfTI file: {e}") from e
        return _ZYXProxy(img.dataobj), [float(v) for v in img.header.get_zooms()[:3]][::-1]
    store = zarr.storage.LocalStore(path, read_only=True) if fmt == "zarr" else _n5_store(path)
    try:
        node = zarr.open(store, mode="r")
    except Exception as e:
        raise OSError(f"{str(path)!r}: not a readable {fmt} container: {e}") from e
    if key:
        try:
            node = node[key]
        except KeyError:
            raise KeyError(f"{str(path)!r}: no array {key!r}; it holds {_zarr_keys(node)}.") from None
    if isinstance(node, zarr.Group):
        try:
            return _ome_first_dataset(node)
        except (KeyError, IndexError):
            raise KeyError(f"{str(path)!r}: {key or '/'} is a group, not an array or OME-Zarr image; it holds "
                           f"{_zarr_keys(node)}.") from None
    attrs = dict(node.attrs)
    vs = attrs.get("voxel_size", attrs.get("resolution"))
    return node, None if vs is None else [float(v) for v in vs]


def _n5_store(path: Path):
    try:
        from zarr.n5 import N5FSStore  # zarr 2 only
    except ImportError:
        raise OSError(
            f"{str(path)!r}: N5 needs zarr 2's N5 store, not available with zarr {zarr.__version__}; convert it "
            "to zarr (e.g. with `n5-to-zarr` or tensorstore) first."
        ) from None
    return N5FSStore(str(path), mode="r")


def open_volume(path: str | os.PathLike, key: str | None = None,
                voxel_size: Sequence[int] | None = None) -> Array:
    """A lazy (Z, Y, X) ``funlib.persistence.Array`` over ``path[key]`` (``key`` None for a TIFF stack or a
    zarr array path). Refuses missing files and keys (listing what the file holds), non-3-D arrays and
    empty volumes, naming file, key and shape."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such volume: {str(p)!r}")
    fmt = volume_format(p)
    src, file_voxel_size = open_source(p, key, fmt)
    shape = tuple(int(s) for s in src.shape)
    where = f"{str(p)!r}" + (f", key {key!r}" if key else "")
    if len(shape) != 3:
        raise ValueError(f"{where}: expected a (Z, Y, X) volume, got shape {shape}.")
    if 0 in shape:
        raise ValueError(f"{where}: the volume is empty, shape {shape}.")
    if voxel_size is not None and (len(voxel_size) != 3 or not all(float(v) >= 1 for v in voxel_size)):
        raise ValueError(f"voxel_size: expected (z, y, x) in whole nm >= 1, got {tuple(voxel_size)!r}.")
    vs = voxel_size if voxel_size is not None else file_voxel_size
    vs = (1, 1, 1) if vs is None or len(vs) != 3 else vs  # the file's, when it states one for these 3 axes
    vs = tuple(max(1, int(round(float(v)))) for v in vs)
    chunks = getattr(src, "chunks", None) or "auto"
    return Array(src, offset=(0, 0, 0), voxel_size=vs, axis_names=["z", "y", "x"], units=["nm"] * 3, chunks=chunks)


def prepare_array(store: Path, shape: Sequence[int], chunks: Sequence[int], voxel_size: Sequence[int],
                  dtype, channels: int | None = None, attrs: dict | None = None) -> Array:
    """An output array of ``shape`` (z, y, x), with a leading channel axis when ``channels`` is given."""
    full = ((channels,) if channels else ()) + tuple(int(s) for s in shape)
    chunk = ((1,) if channels else ()) + tuple(int(min(c, s)) for c, s in zip(chunks, shape))
    names = (["c^"] if channels else []) + ["z", "y", "x"]
    types = (["channel"] if channels else []) + ["space"] * 3
    arr = prepare_ds(store, shape=full, offset=Coordinate(0, 0, 0), voxel_size=Coordinate(voxel_size),
                     axis_names=names, units=["nm"] * 3, types=types, chunk_shape=chunk, dtype=dtype, mode="a")
    if attrs:
        zarr.open_array(store, mode="r+").attrs.update(attrs)
    return arr


def _axes() -> list[dict]:
    return [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]


def write_ome_metadata(root: Path, levels: Sequence[tuple[str, Sequence[float]]], labels: Sequence[str] = (),
                       name: str = "denoised") -> None:
    """OME-NGFF 0.5 ``multiscales`` on ``root`` (the denoised pyramid: ``(path, voxel size)`` per level) and
    a ``labels`` group listing ``labels`` (each ``labels/<name>`` an image-label with one level ``s0``)."""
    group = zarr.open_group(root, mode="a")

    def multiscales(datasets, title):
        return [{"version": "0.5", "name": title, "axes": _axes(), "datasets": [
            {"path": p, "coordinateTransformations": [{"type": "scale", "scale": [float(v) for v in vs]}]}
            for p, vs in datasets]}]

    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales(levels, name)}
    if labels:
        lab = zarr.open_group(root / "labels", mode="a")
        lab.attrs["ome"] = {"version": "0.5", "labels": list(labels)}
        for label in labels:
            g = zarr.open_group(root / "labels" / label, mode="a")
            g.attrs["ome"] = {"version": "0.5", "multiscales": multiscales([("s0", levels[0][1])], label),
                              "image-label": {"version": "0.5", "source": {"image": "../../"}}}


def read_array(path: Path) -> Array:
    """An output array written by :func:`prepare_array`."""
    return open_ds(path, mode="r")
