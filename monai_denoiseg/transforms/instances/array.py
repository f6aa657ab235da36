"""Predicted affinities -> instance labels by the mutex watershed (Wolf et al., TPAMI 2020).

The post-processing of Wang et al., MICCAI 2024. Input: "probability that ``p`` and ``p + offset`` are the
same instance" for every channel, as :class:`~monai_denoiseg.transforms.affinity.LabelToAffinity` writes
and a sigmoid segmenter predicts. See ``docs/mutex_watershed.md`` for the weight convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import bioimage_cpp as bic
import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type, convert_to_tensor
from scipy.ndimage import generate_binary_structure
from skimage.segmentation import relabel_sequential, watershed

from monai_denoiseg.transforms.affinity.array import PAPER_OFFSETS_2D, offsets_for_ndim
from monai_denoiseg.utils import check_finite, check_offsets, check_same_spatial_shape, check_spatial_ndim

__all__ = ["mutex_watershed", "merge_small_segments", "AffinityToInstances"]


@contextmanager
def _numpy_seed(seed: int):
    """bioimage-cpp draws randomised strides from numpy's global RNG: seed it, then restore its state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def mutex_watershed(
    affinity: np.ndarray,
    offsets: Sequence[Sequence[int]],
    num_attractive: int,
    strides: Sequence[int] | None = None,
    randomize_strides: bool = False,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Mutex watershed of "same instance" probabilities ``(C, *spatial)``; uint64 labels ``(*spatial)``, 0 = ~mask.

    Edge weights (priorities, processed from the highest): the first ``num_attractive`` channels are merge
    edges weighted by the affinity itself, the others mutex edges weighted by ``1 - affinity``. This is what
    ``elf.segmentation.mutex_watershed.mutex_watershed(1 - affinity, ...)`` does for ``num_attractive = ndim``
    (elf expects boundary probabilities and flips its first ``ndim`` channels); here the engine elf calls,
    bioimage-cpp, is called directly so that ``num_attractive`` can differ from ``ndim``.
    """
    weights = np.concatenate([affinity[:num_attractive], 1.0 - affinity[num_attractive:]]).astype(np.float32)
    return bic.segmentation.mutex_watershed(
        weights, [list(o) for o in offsets], num_attractive,
        strides=None if strides is None else list(strides), randomized_strides=randomize_strides, mask=mask,
    )


def merge_small_segments(
    seg: np.ndarray, height: np.ndarray, min_size: int, mask: np.ndarray | None = None, in_plane: bool = False
) -> np.ndarray:
    """Merge segments under ``min_size`` pixels into their neighbours by a seeded watershed on ``height``.

    The remaining segments flood the removed ones (``skimage.segmentation.watershed``, face connectivity,
    only inside ``mask``; with ``in_plane`` not across z, so per-slice segments stay per slice). A small
    segment with no neighbouring segment to merge into keeps its id.
    """
    ids, counts = np.unique(seg, return_counts=True)
    small = np.isin(seg, ids[(counts < min_size) & (ids != 0)])
    if not small.any():
        return seg
    connectivity = generate_binary_structure(seg.ndim, 1)
    if in_plane:
        connectivity[0] = connectivity[-1] = False
    filled = watershed(height, np.where(small, 0, seg), connectivity=connectivity, mask=mask)
    return np.where(small & (filled == 0), seg, filled)


class AffinityToInstances(Randomizable, Transform):
    """Affinities ``(C, H, W)`` / ``(C, D, H, W)`` -> int64 instance labels ``(1, *spatial)`` by mutex watershed.

    ``img[c, p]`` is the probability that ``p`` and ``p + offsets[c]`` belong to the same instance (the
    segmenter's sigmoid output, the convention of :class:`LabelToAffinity`), in [0, 1]. 2-D offsets on a
    ``(C, D, H, W)`` stack segment every z-slice on its own (no edge crosses z), with ids disjoint across
    slices. Labels are 1, 2, ... consecutive; 0 only where ``mask`` is False.

    Args:
        offsets: the offset of each channel; default the paper's 10 2-D offsets.
        strides: keep mutex (long-range) edges only at pixels on this grid, one int per offset component.
            Default ``None``: the reference's ``(5, 5)``, ``(1, 5, 5)`` for 3-D offsets (3.5-5.5x faster than
            ``(1, 1)`` and as good on noisy predictions; ``(1, 1)`` recovers exact affinities exactly).
        randomize_strides: keep each mutex edge with probability ``1 / prod(strides)`` instead of on a grid
            (drawn with ``self.R``: set_random_state makes it reproducible).
        num_attractive: number of leading attractive (merge) channels; default the number of offset
            components (the nearest neighbours), as in elf.
        min_size: segments smaller than this are merged into neighbours (:func:`merge_small_segments`,
            flooding the boundary map ``1 - mean(attractive channels)``); 0 = off, as in the reference.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
        strides: Sequence[int] | None = None,
        randomize_strides: bool = False,
        num_attractive: int | None = None,
        min_size: int = 0,
    ) -> None:
        self.offsets = check_offsets(offsets)
        n_dims, n_channels = len(self.offsets[0]), len(self.offsets)
        self.num_attractive = n_dims if num_attractive is None else int(num_attractive)
        if not 1 <= self.num_attractive <= n_channels:
            raise ValueError(f"num_attractive: expected 1..{n_channels} (the offsets), got {num_attractive!r}.")
        strides = (1,) * (n_dims - 2) + (5, 5) if strides is None else strides
        if len(strides) != n_dims or any(int(s) != s or s < 1 for s in strides):
            raise ValueError(f"strides: expected {n_dims} positive ints (one per offset component), got {strides!r}.")
        self.strides = tuple(int(s) for s in strides)
        self.randomize_strides = bool(randomize_strides)
        if int(min_size) != min_size or min_size < 0:
            raise ValueError(f"min_size: expected a non-negative int, got {min_size!r}.")
        self.min_size = int(min_size)
        self._seed = 0

    def randomize(self, data=None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(
        self,
        img: NdarrayOrTensor,
        mask: NdarrayOrTensor | None = None,
        randomize: bool = True,
        key: str = "affinity",
        mask_key: str = "mask",
    ) -> NdarrayOrTensor:
        """Segment ``img``; ``mask`` ``(1, *spatial)`` is the foreground (nonzero), everything else gets label 0.

        ``key`` / ``mask_key`` name the inputs in error messages.
        """
        if randomize:
            self.randomize()
        affinity = convert_data_type(img, np.ndarray, dtype=np.float32)[0]
        nd = check_spatial_ndim(affinity, (2, 3), key)
        check_finite(affinity, key)
        if affinity.shape[0] != len(self.offsets):
            n = len(self.offsets)
            raise ValueError(f"{key}: expected {n} channels (one per offset), got shape {affinity.shape}.")
        if affinity.size and (affinity.min() < 0 or affinity.max() > 1):
            raise ValueError(
                f"{key}: expected 'same instance' probabilities in [0, 1] (apply a sigmoid to logits), got values in "
                f"[{affinity.min():.3g}, {affinity.max():.3g}] in shape {affinity.shape}."
            )
        offsets = offsets_for_ndim(self.offsets, nd, key, affinity.shape)
        in_plane = len(self.offsets[0]) < nd
        strides = (1,) * in_plane + self.strides
        fg = None
        if mask is not None:
            fg = convert_data_type(mask, np.ndarray)[0]
            if fg.ndim != affinity.ndim or fg.shape[0] != 1:
                raise ValueError(f"{mask_key}: expected a single-channel mask (1, *spatial), got shape {fg.shape}.")
            check_same_spatial_shape(affinity, fg, key, mask_key)
            fg = fg[0] != 0
        with _numpy_seed(self._seed):
            seg = mutex_watershed(affinity, offsets, self.num_attractive, strides, self.randomize_strides, fg)
        if self.min_size > 0:
            height = 1.0 - affinity[: self.num_attractive].mean(0)
            seg = merge_small_segments(seg, height, self.min_size, fg, in_plane)
        seg = relabel_sequential(seg)[0]  # bioimage-cpp leaves gaps where masked-out pixels were
        dst = convert_to_tensor(img, track_meta=get_track_meta()) if isinstance(img, torch.Tensor) else img
        return convert_to_dst_type(seg[None].astype(np.int64), dst=dst, dtype=torch.int64)[0]
