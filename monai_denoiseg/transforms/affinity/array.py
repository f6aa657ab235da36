"""Instance labels -> affinity targets with arbitrary (long-range) offsets.

Affinities (Turaga et al. 2010; long-range offsets of Lee et al. 2017 and Wolf et al. 2018,
the mutex watershed) are what the segmenter of Wang et al., MICCAI 2024 ("Joint EM image
denoising and segmentation with instance-aware interaction") predicts: channel ``c`` at pixel
``p`` is 1 where ``p`` and ``p + offsets[c]`` belong to the same instance, 0 otherwise.
See ``docs/affinities.md`` for the conventions and how they differ from the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type, convert_to_tensor

from monai_denoiseg.utils import check_instance_labels, check_offsets, check_spatial_ndim

__all__ = [
    "PAPER_OFFSETS_2D",
    "DEFAULT_OFFSETS_3D",
    "pair_slices",
    "offsets_for_ndim",
    "label_to_affinity",
    "class_balance_weight",
    "LabelToAffinity",
]

#: The ten 2-D offsets (y, x) of Wang et al. 2024: (-s, 0), (0, -s) for s = 1, 3, 5, 9, 15, in this
#: channel order. The first two are the nearest neighbours (the attractive channels of the mutex watershed).
PAPER_OFFSETS_2D: tuple[tuple[int, int], ...] = (
    (-1, 0), (0, -1), (-3, 0), (0, -3), (-5, 0), (0, -5), (-9, 0), (0, -9), (-15, 0), (0, -15),
)

#: A 3-D default (z, y, x): the three nearest neighbours first (attractive), then z at 2 and 3
#: slices, then the paper's in-plane ranges 3, 5, 9, 15 along y and x (13 channels).
DEFAULT_OFFSETS_3D: tuple[tuple[int, int, int], ...] = (
    (-1, 0, 0), (0, -1, 0), (0, 0, -1),
    (-2, 0, 0), (-3, 0, 0),
    (0, -3, 0), (0, 0, -3), (0, -5, 0), (0, 0, -5), (0, -9, 0), (0, 0, -9), (0, -15, 0), (0, 0, -15),
)


def pair_slices(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(src, dst)`` such that ``x[dst]`` is ``x[p + offset]`` for every ``p`` in ``x[src]``.

    ``src`` selects exactly the pixels whose partner ``p + offset`` lies inside ``shape``; both are
    empty when ``|offset|`` reaches the size of an axis.
    """
    src = tuple(slice(min(n, max(0, -o)), max(0, n - max(0, o))) for n, o in zip(shape, offset))
    dst = tuple(slice(min(n, max(0, o)), max(0, n + min(0, o))) for n, o in zip(shape, offset))
    return src, dst


def offsets_for_ndim(
    offsets: Sequence[Sequence[int]], ndim: int, key: str = "label", shape: Sequence[int] = ()
) -> tuple[tuple[int, ...], ...]:
    """Offsets for an array with ``ndim`` spatial dims: 2-D offsets on 3-D data become ``(0, y, x)``
    (in-plane, every z-slice on its own); any other mismatch is a ``ValueError`` naming ``key`` and ``shape``."""
    offsets = check_offsets(offsets)
    if len(offsets[0]) == ndim:
        return offsets
    if len(offsets[0]) == 2 and ndim == 3:
        return tuple((0, *o) for o in offsets)
    raise ValueError(
        f"{key}: {len(offsets[0])}-component offsets need {len(offsets[0])}-D data (or 2-D offsets on 3-D data), "
        f"got a {ndim}-D array of shape {tuple(shape)}."
    )


def label_to_affinity(
    label: np.ndarray,
    offsets: Sequence[Sequence[int]],
    background_label: int | None = None,
    ignore_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 affinities and validity mask of a spatial label array (no channel dim), both ``(len(offsets), *shape)``.

    ``affinity[c, p] = 1`` iff ``label[p] == label[p + offsets[c]]``, the partner is inside the array, neither
    end is ``ignore_label`` and the label is not ``background_label``. ``mask[c, p] = 1`` iff the partner is
    inside the array and neither end is ``ignore_label``. Labels are compared in their own dtype (uint64 too).
    """
    affinity = np.zeros((len(offsets), *label.shape), dtype=np.float32)
    mask = np.zeros_like(affinity)
    for c, offset in enumerate(offsets):
        src, dst = pair_slices(label.shape, offset)
        a, b = label[src], label[dst]
        same = a == b
        if background_label is not None:
            same &= a != background_label
        if ignore_label is None:
            mask[c][src] = 1
        else:
            valid = (a != ignore_label) & (b != ignore_label)
            same &= valid
            mask[c][src] = valid
        affinity[c][src] = same
    return affinity, mask


def class_balance_weight(
    affinity: np.ndarray, mask: np.ndarray, clip: tuple[float, float] = (0.05, 0.99)
) -> np.ndarray:
    """Per-channel class-balance weights of Wang et al. 2024 (the reference ``weight_binary_ratio``).

    For each channel (axis 0), ``f`` = fraction of ones among the *valid* pairs (``mask == 1``), clipped to
    ``clip``; the minority class gets ``max(f, 1-f) / min(f, 1-f)``, the majority class 1, invalid pairs 0.
    """
    dims = tuple(range(1, affinity.ndim))
    n_valid = np.maximum(mask.sum(dims, keepdims=True, dtype=np.float64), 1.0)
    f = np.clip((affinity * mask).sum(dims, keepdims=True, dtype=np.float64) / n_valid, *clip)
    w_pos = np.where(f < 0.5, (1 - f) / f, 1.0).astype(np.float32)
    w_neg = np.where(f > 0.5, f / (1 - f), 1.0).astype(np.float32)
    weight = np.where(affinity > 0.5, w_pos, w_neg)
    weight *= mask
    return weight


def _check_label_id(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if int(value) != value or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer label id or None, got {value!r}.")
    return int(value)


class LabelToAffinity(Transform):
    """Channel-first instance labels ``(1, H, W)`` / ``(1, D, H, W)`` -> float32 affinities ``(n_offsets, *spatial)``.

    Channel ``c`` at pixel ``p`` compares ``label[p]`` with ``label[p + offsets[c]]`` (negative offsets look
    backwards, as in affogato / elf / torch-em). 2-D offsets on a 3-D label give in-plane affinities of each
    z-slice. Compute it *after* spatial augmentation: a flip does not commute with this transform.

    Args:
        offsets: one (y, x) or (z, y, x) vector per output channel; default the paper's 10 offsets.
        background_label: id whose pixels belong to no instance: every pair touching it has affinity 0
            (e.g. 0 = membrane in ISBI 2012). ``None``: every id, 0 included, is an ordinary instance.
        ignore_label: id of unlabelled pixels: pairs touching it are masked out (mask 0, weight 0, affinity 0).
        weight_clip: clip range of the positive fraction in :func:`class_balance_weight`.
    """

    backend = [TransformBackends.NUMPY]  # computed in numpy: ~10x faster than torch slicing on CPU, native uint64

    def __init__(
        self,
        offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
        background_label: int | None = None,
        ignore_label: int | None = None,
        weight_clip: tuple[float, float] = (0.05, 0.99),
    ) -> None:
        self.offsets = check_offsets(offsets)
        self.background_label = _check_label_id(background_label, "background_label")
        self.ignore_label = _check_label_id(ignore_label, "ignore_label")
        if self.ignore_label is not None and self.ignore_label == self.background_label:
            raise ValueError(f"ignore_label and background_label must differ, got {ignore_label} for both.")
        lo, hi = weight_clip
        if not 0 < lo <= hi < 1:
            raise ValueError(f"weight_clip: expected 0 < low <= high < 1, got {weight_clip!r}.")
        self.weight_clip = (float(lo), float(hi))

    def compute(self, img: NdarrayOrTensor, key: str = "label") -> tuple[NdarrayOrTensor, ...]:
        """``(affinity, weight, mask)``, each float32 ``(n_offsets, *spatial)`` of the type of ``img``.

        ``weight`` is :func:`class_balance_weight` (zero wherever ``mask`` is zero). ``key`` names the input in errors.
        """
        label = convert_data_type(img, np.ndarray)[0]  # ids stay in their own dtype (uint64 included): never cast
        nd = check_spatial_ndim(label, (2, 3), key)
        if label.shape[0] != 1:
            want = ", ".join("DHW"[3 - nd :])
            raise ValueError(f"{key}: expected a single-channel label (1, {want}), got shape {label.shape}.")
        check_instance_labels(label, key)
        offsets = offsets_for_ndim(self.offsets, nd, key, label.shape)
        affinity, mask = label_to_affinity(label[0], offsets, self.background_label, self.ignore_label)
        weight = class_balance_weight(affinity, mask, self.weight_clip)
        dst = convert_to_tensor(img, track_meta=get_track_meta()) if isinstance(img, torch.Tensor) else img
        return tuple(convert_to_dst_type(x, dst=dst, dtype=torch.float32)[0] for x in (affinity, weight, mask))

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self.compute(img)[0]
