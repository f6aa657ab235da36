"""Data access for EM volumes: MONAI readers (TIFF stacks, CREMI HDF5) and fixed noisy copies."""

from .readers import CremiH5Reader, TiffStackReader, to_torch_safe_ids

__all__ = ["TiffStackReader", "CremiH5Reader", "to_torch_safe_ids", "make_noisy_copy", "write_noisy_copy", "NOISES"]


def __getattr__(name: str):
    # noisy_copy is imported on first use, so that `python -m monai_denoiseg.data.noisy_copy` runs it fresh
    if name in ("make_noisy_copy", "write_noisy_copy", "NOISES"):
        from . import noisy_copy

        return getattr(noisy_copy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
