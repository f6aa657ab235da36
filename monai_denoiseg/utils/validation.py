"""Input checks shared by every component.

Each check raises ``ValueError`` naming the key, the shape (or dtype) seen and what was
expected, so that a bad input fails at the component that received it, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "check_spatial_ndim",
    "check_finite",
    "check_instance_labels",
    "check_same_spatial_shape",
    "check_offsets",
    "check_intensity",
]


def _shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def check_spatial_ndim(x, spatial_dims: int | Sequence[int], key: str = "image", extra_dims: int = 1) -> int:
    """Check that ``x`` has ``extra_dims`` leading (channel/batch) dims plus 2 or 3 spatial dims.

    ``spatial_dims`` is the allowed number of spatial dimensions (an int or a set of ints).
    Returns the number of spatial dimensions found.
    """
    allowed = (spatial_dims,) if isinstance(spatial_dims, int) else tuple(spatial_dims)
    nd = x.ndim - extra_dims
    if nd not in allowed:
        lead = {0: "", 1: "C, ", 2: "B, C, "}.get(extra_dims, f"{extra_dims} leading dims, ")
        wanted = " or ".join(f"({lead}{', '.join('DHW'[3 - d:])})" for d in allowed)
        raise ValueError(f"{key}: expected a {'/'.join(map(str, allowed))}-D array shaped {wanted}, got shape {_shape(x)}.")
    return nd


def check_finite(x, key: str = "image") -> None:
    """Reject NaN and infinite values (they poison losses and metrics silently)."""
    finite = torch.isfinite(x).all() if isinstance(x, torch.Tensor) else np.isfinite(np.asarray(x)).all()
    if not bool(finite):
        raise ValueError(f"{key}: expected finite values, got NaN or inf in an array of shape {_shape(x)}.")


def check_instance_labels(x, key: str = "label") -> None:
    """Instance ids must be non-negative integers (an integer dtype, or a float array holding whole numbers)."""
    dtype = x.dtype
    is_float = dtype.is_floating_point if isinstance(x, torch.Tensor) else np.issubdtype(dtype, np.floating)
    if is_float:
        arr = x if isinstance(x, torch.Tensor) else np.asarray(x)
        whole = (arr == torch.round(arr)).all() if isinstance(arr, torch.Tensor) else (arr == np.round(arr)).all()
        if not bool(whole):
            raise ValueError(
                f"{key}: expected integer instance ids, got non-integer {dtype} values in shape {_shape(x)}."
            )
    elif dtype == torch.bool or dtype == np.bool_:
        return
    if x.numel() if isinstance(x, torch.Tensor) else x.size:
        if bool((x < 0).any()):
            raise ValueError(f"{key}: expected non-negative instance ids, got negative values in shape {_shape(x)}.")


def check_same_spatial_shape(a, b, key_a: str = "image", key_b: str = "label") -> None:
    """Two channel-first arrays must share their spatial shape."""
    if _shape(a)[1:] != _shape(b)[1:]:
        raise ValueError(
            f"{key_b}: expected spatial shape {_shape(a)[1:]} matching {key_a!r} (shape {_shape(a)}), "
            f"got shape {_shape(b)}."
        )


def check_offsets(offsets, spatial_dims: int | None = None, key: str = "offsets") -> tuple[tuple[int, ...], ...]:
    """Offsets must be a non-empty list of integer vectors of one length (2 or 3, or ``spatial_dims``)."""
    offs = tuple(tuple(int(v) for v in o) for o in (offsets if offsets is not None else ()))
    if len(offs) == 0:
        raise ValueError(f"{key}: expected a non-empty list of offset vectors, got {offsets!r}.")
    lengths = {len(o) for o in offs}
    want = {spatial_dims} if spatial_dims else {2, 3}
    if len(lengths) != 1 or not lengths <= want:
        raise ValueError(
            f"{key}: expected every offset to have {' or '.join(map(str, sorted(want)))} components, got {offsets!r}."
        )
    return offs


def check_intensity(x, key: str = "image", intensity_range=None) -> tuple[float, float]:
    """The (low, high) range that maps an image to [0, 1]: uint8 is 0-255; any other dtype needs a declared
    ``intensity_range`` (e.g. (0, 1) for float images, (0, 65535) for uint16), and every value inside it."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype.kind not in "uif":
        raise ValueError(f"{key}: expected a uint8, integer or float image, got dtype {arr.dtype} in shape {arr.shape}.")
    if intensity_range is None:
        if arr.dtype == np.uint8:
            return 0.0, 255.0
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (float("nan"),) * 2
        raise ValueError(
            f"{key}: expected uint8 0-255, got dtype {arr.dtype} in shape {arr.shape} (values {lo:g} to {hi:g}); "
            "declare intensity_range=(low, high), e.g. (0, 1) for float images in [0, 1] or (0, 65535) for uint16."
        )
    low, high = (float(v) for v in intensity_range)
    if not high > low:
        raise ValueError(f"intensity_range: expected low < high, got {tuple(intensity_range)!r}.")
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < low or hi > high:
            raise ValueError(f"{key}: values {lo:g} to {hi:g} in shape {arr.shape} lie outside the declared "
                             f"intensity_range ({low:g}, {high:g}) (or are NaN/inf).")
    return low, high
