"""Input checks shared by every component.

Each check raises ``ValueError`` naming the key, the shape (or dtype) seen and what was
expected, so that a bad input fails at the component that received it, before any work.

The volume checks (``check_volume_shape`` ... ``check_labels``, ``file_error``) are the one layer that
the readers and training datasets use on files: errors start with :func:`where` (file and key), and the
value checks run chunk by chunk along z, so that their extra memory stays bounded on large volumes.
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
    "where",
    "file_error",
    "check_volume_shape",
    "check_z_range",
    "check_same_shape",
    "check_finite_volume",
    "check_image",
    "check_labels",
    "CHUNK_BYTES",
]

CHUNK_BYTES = 64 * 2**20  # the value checks below hold at most about this much of temporary arrays


def _shape(x) -> tuple[int, ...]:
    """The shape of an array or tensor, or a shape itself."""
    return tuple(int(s) for s in getattr(x, "shape", x))


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


# ---------------------------------------------------------------------------------------------------
# Volumes read from files: the checks of read_volume, load_split, PatchDataset and the MONAI readers.


def where(path=None, key=None, roi=None) -> str:
    """``'file.h5', key 'volumes/raw', z 0-8``: the prefix of every file error, so it names what failed."""
    parts = [repr(str(path))] if path is not None else []
    if key:
        parts.append(f"key {key!r}")
    if roi is not None:
        parts.append(roi)
    return ", ".join(parts) or "volume"


def file_error(path, key, kind: str, exc: BaseException | None = None, detail: str = "") -> OSError:
    """The ``OSError`` for a file that exists but cannot be read as ``kind`` (truncated, corrupt, junk)."""
    cause = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return OSError(f"{where(path, key)}: expected a readable {kind} file{detail}, but it is truncated, corrupt "
                   f"or not {kind} at all{cause}")


def check_volume_shape(shape, name: str = "volume", ndim: int | None = 3) -> tuple[int, ...]:
    """A volume must have ``ndim`` axes (None: any) and no empty axis (a 0-slice volume has nothing to train on)."""
    shape = tuple(int(s) for s in shape)
    if ndim is not None and len(shape) != ndim:
        want = "a (Z, Y, X) volume" if ndim == 3 else f"a {ndim}-D array"
        raise ValueError(f"{name}: expected {want}, got shape {shape}.")
    if not shape or 0 in shape:
        raise ValueError(f"{name}: expected a non-empty volume, got shape {shape}.")
    return shape


def check_z_range(z_range, depth: int, name: str = "volume") -> slice:
    """``(start, stop)`` (None ends, negative ends count from the end) -> ``slice(start, stop)`` inside 0..depth.

    Python slicing would shrink a range outside the volume silently (or to nothing); this refuses it."""
    if z_range is None:
        return slice(0, int(depth))
    try:
        start, stop = z_range
    except (TypeError, ValueError):
        raise ValueError(f"z_range: expected (start, stop), got {z_range!r} for {name}.") from None
    ends = []
    for end in (start, stop):
        try:
            whole = end is None or (not isinstance(end, bool) and float(end).is_integer())
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise ValueError(f"z_range: expected integer ends (or None), got {tuple(z_range)!r} for {name}.")
        ends.append(None if end is None else int(end))
    a = 0 if ends[0] is None else ends[0] + depth if ends[0] < 0 else ends[0]
    b = depth if ends[1] is None else ends[1] + depth if ends[1] < 0 else ends[1]
    if not 0 <= a < b <= depth:
        raise ValueError(f"{name}: z_range {tuple(z_range)!r} (slices {a} to {b}) lies outside the volume's "
                         f"{depth} z slices or is empty; expected 0 <= start < stop <= {depth} (negative ends "
                         "count from the end).")
    return slice(a, b)


def check_same_shape(reference, reference_name: str = "input", **others) -> None:
    """Every one of ``others`` (name -> array, tensor or shape; None is skipped) has exactly ``reference``'s
    shape: a shifted or cropped label would train on noise, a mask of another size would weigh the wrong pixels."""
    ref = _shape(reference)
    for name, x in others.items():
        if x is not None and _shape(x) != ref:
            raise ValueError(f"{name}: expected the shape {ref} of {reference_name}, got shape {_shape(x)}.")


def _chunks(x, max_bytes: int | None = None):
    """(start, block) pieces of ``x`` (at least 1-D) along its first axis, each about ``max_bytes``
    (default :data:`CHUNK_BYTES`), at least one slice."""
    per = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * max(1, x.dtype.itemsize))
    step = max(1, int(max_bytes or CHUNK_BYTES) // per)
    for i in range(0, x.shape[0], step):
        yield i, np.asarray(x[i:i + step])


def check_finite_volume(x, name: str = "image", z_offset: int = 0) -> None:
    """No NaN or inf in a float volume (checked chunk by chunk); names the first z slice holding one
    (``z_offset``: the z of ``x[0]`` in its file, for a split)."""
    x = np.asarray(x) if not hasattr(x, "dtype") else x
    if np.dtype(x.dtype).kind not in "fc":
        return
    for i, block in _chunks(x if x.ndim else np.asarray(x).reshape(1)):
        bad = ~np.isfinite(block)
        if bad.any():
            z = z_offset + i + int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))
            raise ValueError(f"{name}: expected finite values, got NaN or inf (first at z={z}) in "
                             f"shape {_shape(x)}, dtype {x.dtype}.")


def check_image(x, name: str = "image", intensity_range=None, z_offset: int = 0) -> tuple[float, float]:
    """An image volume: finite, and uint8 0-255 or inside a declared ``intensity_range``; returns (low, high).

    The toolkit trains on the 0-255 scale, so any other dtype must declare its range (:func:`check_intensity`);
    min and max are taken without temporary copies."""
    check_finite_volume(x, name, z_offset)
    return check_intensity(x, key=name, intensity_range=intensity_range)


def check_labels(x, name: str = "label", max_id: int | None = None, z_offset: int = 0) -> np.ndarray:
    """Instance ids: non-negative integers, returned as an integer array.

    A float array is accepted only when it holds whole numbers (e.g. labels saved as float32), then converted
    to the smallest unsigned dtype that holds them; 1.2 and 1.7 would otherwise merge into one id 1. Bool
    masks pass as they are. ``max_id`` refuses larger ids (torch's int64 cannot hold uint64 ids >= 2**63).
    Checked chunk by chunk along z: every id is tested, not only those a random patch happens to meet; errors
    name the first bad z (``z_offset``: the z of ``x[0]`` in its file)."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.ndim == 0:
        return check_labels(arr.reshape(1), name, max_id).reshape(())
    kind = arr.dtype.kind
    if kind == "b":
        return arr
    if kind not in "iuf":
        raise ValueError(f"{name}: expected integer instance ids, got dtype {arr.dtype} in shape {arr.shape}.")
    top = 0
    for i, block in _chunks(arr):
        if not block.size:
            continue
        flat = block.reshape(block.shape[0], -1)
        if kind == "f":
            bad = ~np.isfinite(flat) | (flat != np.round(flat))
            if bad.any():
                z = z_offset + i + int(np.argmax(bad.any(axis=1)))
                example = flat[bad][:3]
                raise ValueError(f"{name}: expected integer instance ids, got non-integer {arr.dtype} values "
                                 f"(e.g. {', '.join(f'{v:g}' for v in example)}; first at z={z}) in shape "
                                 f"{arr.shape}; float labels are accepted only when they hold whole numbers.")
        low = block.min()
        if low < 0:
            z = z_offset + i + int(np.argmax((flat < 0).any(axis=1)))
            raise ValueError(f"{name}: expected non-negative instance ids, got {low:g} (first negative at z={z}) "
                             f"in shape {arr.shape}, dtype {arr.dtype}.")
        top = max(top, block.max().item())
    if max_id is not None and top > max_id:
        raise ValueError(f"{name}: expected instance ids <= {max_id}, got {top} in shape {arr.shape}, dtype "
                         f"{arr.dtype}; relabel them (torch's int64 cannot hold uint64 ids >= 2**63).")
    if kind != "f":
        return arr
    if top >= 2**53:
        raise ValueError(f"{name}: float ids up to {top:g} in shape {arr.shape} are not exact; store labels as integers.")
    out = np.empty(arr.shape, np.min_scalar_type(int(top)))
    for i, block in _chunks(arr):
        out[i:i + block.shape[0]] = block
    return out
