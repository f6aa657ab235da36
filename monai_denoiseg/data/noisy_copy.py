"""Fixed noisy copies of EM volumes, generated once and reused, like the paper's stored uint8 noisy data.

Wang et al. (MICCAI 2024) pre-computed one noisy realisation per volume ("the noisy images are
pre-processed to ensure all experimental noisy images are the same"), stored as uint8 and aligned
slice by slice with the clean data. ``make_noisy_copy`` reproduces that step with this package's
documented noise formulas (``docs/noise.md``): parameters drawn per z-slice, the result rounded and
clipped to uint8, identical bytes for the same seed. ``write_noisy_copy`` reads a volume (CREMI HDF5,
TIFF stack or NIfTI), writes the copy, and records the noise, seed and per-slice parameters with it.

Command line::

    python -m monai_denoiseg.data.noisy_copy sample_A.hdf sample_A.hdf --key volumes/raw --seed 0
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_denoiseg.transforms.noise.array import RandClippedGaussianNoise, RandFilmNoise, RandGaussianPoissonNoise

__all__ = ["NOISES", "FORMULAS", "make_noisy_copy", "write_noisy_copy", "default_dst_key", "main"]

NOISES = {"gaussian_poisson": RandGaussianPoissonNoise, "film": RandFilmNoise, "gaussian": RandClippedGaussianNoise}
FORMULAS = {
    "gaussian_poisson": "y = round(clip(Poisson(lam*x)/lam + sigma*N(0,1), 0, 255)); "
    "sigma~U(sigma_range), lam~U(lam_range) per z-slice",
    "gaussian": "y = round(clip(x + sigma*N(0,1), 0, 255)); sigma~U(sigma_range) per z-slice",
    "film": "y = round(clip(x + 255*a*boxmean_k(N(0,1)), 0, 255)); a~U(intensity_range) per z-slice, k = kernel_size",
}
SHORT_NAMES = {"gaussian_poisson": "gp", "film": "film", "gaussian": "gauss"}
H5_SUFFIXES, TIFF_SUFFIXES, NIFTI_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5"), (".tif", ".tiff"), (".nii", ".nii.gz")
_FIXED = {"prob", "per_slice", "value_range"}  # set by the copy itself, not by the caller


def _noise_transform(noise: str, params: dict[str, Any]):
    if noise not in NOISES:
        raise ValueError(f"noise: expected one of {sorted(NOISES)}, got {noise!r}.")
    allowed = set(inspect.signature(NOISES[noise]).parameters) - _FIXED
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a parameter of noise {noise!r}; expected some of {sorted(allowed)}.")
    return NOISES[noise](prob=1.0, per_slice=True, value_range=(0.0, 255.0), **params)


def _noisy_copy(volume: np.ndarray, noise: str, seed: int, **params) -> tuple[np.ndarray, Any]:
    """(uint8 noisy copy, the noise transform, whose ``params`` hold the values drawn for each z-slice)."""
    vol = np.asarray(volume)
    if vol.ndim not in (2, 3):
        raise ValueError(f"volume: expected a (Y, X) image or a (Z, Y, X) stack, got shape {vol.shape}.")
    if vol.size and (np.min(vol) < 0 or np.max(vol) > 255):
        raise ValueError(
            f"volume: expected 0-255 intensities (uint8 scale), got range [{np.min(vol)}, {np.max(vol)}] "
            f"in shape {vol.shape}; rescale it to 0-255 first."
        )
    transform = _noise_transform(noise, params)
    transform.set_random_state(seed=seed)
    noisy = transform(vol[None].astype(np.float32))[0]
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), transform


def make_noisy_copy(volume: np.ndarray, noise: str = "gaussian_poisson", seed: int = 0, **params) -> np.ndarray:
    """One fixed noisy realisation of a 0-255 ``volume`` ((Z, Y, X) or (Y, X)), as uint8 of the same shape.

    Noise parameters are drawn per z-slice (the paper's "randomly set" per image); ``params`` override
    the noise's ranges (``sigma_range``, ``lam_range`` for "gaussian_poisson"; ``kernel_size``,
    ``intensity_range`` for "film"). Values are rounded half to even and clipped to 0-255. The same
    seed gives identical bytes (for a given numpy version: the noise comes from numpy's PCG64).
    """
    return _noisy_copy(volume, noise, seed, **params)[0]


def default_dst_key(key: str, noise: str) -> str:
    """HDF5 dataset of a noisy copy: ``volumes/raw`` -> ``volumes/raw_noisy_gp`` (or ``_noisy_film``)."""
    return f"{key}_noisy_{SHORT_NAMES[noise]}"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in H5_SUFFIXES + TIFF_SUFFIXES + NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(
        f"{str(path)!r}: unsupported file type; expected HDF5 {H5_SUFFIXES}, TIFF {TIFF_SUFFIXES} "
        f"or NIfTI {NIFTI_SUFFIXES}."
    )


def _read_volume(src: Path, key: str) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """(volume in z-y-x order, spacing in that order or None, NIfTI affine or None)."""
    suffix = _suffix(src)
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        if not src.is_file():
            raise FileNotFoundError(f"no such file: {str(src)!r}")
        img = nib.load(src)
        return np.asanyarray(img.dataobj).T, np.asarray(img.header.get_zooms())[::-1], img.affine
    from .readers import CremiH5Reader, TiffStackReader

    reader = CremiH5Reader(key=key) if suffix in H5_SUFFIXES else TiffStackReader()
    array, meta = reader.get_data(reader.read(src))
    spacing = meta["spacing"] if suffix in H5_SUFFIXES else None
    return array, spacing, None


def _check_target(dst: Path, dst_key: str | None, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing file (or, for HDF5, dataset) unless ``overwrite``."""
    if overwrite or not dst.exists():
        return
    if dst_key is None:
        raise FileExistsError(f"file {str(dst)!r} exists; pass overwrite=True (--overwrite) to replace it.")
    import h5py

    with h5py.File(dst, "r") as f:
        if dst_key in f:
            raise FileExistsError(
                f"dataset {dst_key!r} in {str(dst)!r} exists; pass overwrite=True (--overwrite) to replace it."
            )


def write_noisy_copy(
    src: str | Path,
    dst: str | Path,
    key: str = "volumes/raw",
    noise: str = "gaussian_poisson",
    seed: int = 0,
    dst_key: str | None = None,
    overwrite: bool = False,
    **params,
) -> Path:
    """Read a volume, make its fixed noisy copy (``make_noisy_copy``) and write it with its provenance.

    ``src``/``dst`` may be HDF5 (``key``/``dst_key`` name the datasets; ``dst_key`` defaults to
    ``key + "_noisy_gp"`` or ``"_noisy_film"``, e.g. ``volumes/raw_noisy_gp``; ``dst`` may be ``src``
    itself, the copy is then added next to the raw data), a TIFF stack (one page per z-slice) or NIfTI
    (z = third voxel axis). The noise name, formula, seed, ranges and per-slice parameters are stored
    as HDF5 attributes, as JSON in the TIFF ImageDescription, or as a NIfTI comment extension; the
    HDF5 ``resolution`` attribute is carried over. An existing ``dst`` (HDF5: dataset) is only replaced
    when ``overwrite``. Returns the path written.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    dst_suffix = _suffix(dst)
    if dst_suffix in H5_SUFFIXES:
        dst_key = dst_key or default_dst_key(key, noise)
    _check_target(dst, dst_key if dst_suffix in H5_SUFFIXES else None, overwrite)
    volume, spacing, nifti_affine = _read_volume(src, key)
    noisy, transform = _noisy_copy(volume, noise, seed, **params)
    provenance: dict[str, Any] = {
        "noise": noise,
        "formula": FORMULAS[noise],
        "seed": int(seed),
        **{f"{name}_range": list(r) for name, r in transform.ranges.items()},
        **({"kernel_size": transform.kernel_size} if noise == "film" else {}),
        **{f"{name}_per_slice": values.tolist() for name, values in transform.params.items()},
        "source": str(src),
        "source_key": key if _suffix(src) in H5_SUFFIXES else "",
        "numpy_version": np.__version__,
    }
    if dst_suffix in H5_SUFFIXES:
        import h5py

        with h5py.File(dst, "a") as f:
            if dst_key in f:
                del f[dst_key]
            dataset = f.create_dataset(dst_key, data=noisy, chunks=True, track_times=False)
            if spacing is not None:
                dataset.attrs["resolution"] = np.asarray(spacing, dtype=np.float64)
            for name, value in provenance.items():
                dataset.attrs[name] = np.asarray(value) if isinstance(value, list) else value
        return dst
    if dst_suffix in TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(dst, noisy, description=json.dumps(provenance), metadata=None)
    else:
        import nibabel as nib

        if nifti_affine is None:  # x-y-z voxel sizes from the source's z-y-x spacing
            zooms = np.ones(4)
            zooms[: noisy.ndim] = spacing[::-1] if spacing is not None else 1.0
            nifti_affine = np.diag(zooms)
        img = nib.Nifti1Image(noisy.T, nifti_affine)
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps(provenance).encode()))
        nib.save(img, dst)
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_denoiseg.data.noisy_copy",
        description="Write a fixed, reproducible noisy copy (uint8) of an EM volume, with its noise "
        "parameters and seed recorded alongside (Wang et al., MICCAI 2024 noise models).",
    )
    parser.add_argument("src", help="input volume: HDF5 (CREMI layout), TIFF stack or NIfTI")
    parser.add_argument("dst", help="output file (HDF5, TIFF or NIfTI); may equal src for HDF5")
    parser.add_argument("--key", default="volumes/raw", help="HDF5 dataset to read (default: %(default)s)")
    parser.add_argument("--dst-key", help="HDF5 dataset to write (default: KEY_noisy_gp / KEY_noisy_film)")
    parser.add_argument("--noise", choices=sorted(NOISES), default="gaussian_poisson", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    pair = {"type": float, "nargs": 2, "metavar": ("MIN", "MAX")}
    parser.add_argument("--sigma-range", **pair, help="gaussian_poisson / gaussian: sigma in grey levels (default 55 85 / 25 25)")
    parser.add_argument("--lam-range", **pair, help="gaussian_poisson: Poisson lambda (default 0.6 0.8)")
    parser.add_argument("--kernel-size", type=int, help="film: box kernel side in pixels (default 5)")
    parser.add_argument("--intensity-range", **pair, help="film: amplitude a (default 0 1.5)")
    args = parser.parse_args(argv)
    params = {
        name: value
        for name in ("sigma_range", "lam_range", "kernel_size", "intensity_range")
        if (value := getattr(args, name)) is not None
    }
    try:
        path = write_noisy_copy(
            args.src, args.dst, args.key, args.noise, args.seed, args.dst_key, args.overwrite, **params
        )
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if _suffix(path) in H5_SUFFIXES:
        path = f"{path}:{args.dst_key or default_dst_key(args.key, args.noise)}"
    print(f"wrote {args.noise} noisy copy (seed {args.seed}) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
