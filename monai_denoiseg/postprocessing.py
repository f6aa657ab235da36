"""Post-processing of predictions: instances from affinities (mutex watershed), as in the EM-DenoiSeg paper.

:func:`segment` is what the evaluator, the in-memory inference and the blockwise 2-D protocol
(:class:`~monai_denoiseg.blockwise.tasks.SliceInstances`) all run; the blockwise 3-D protocol uses volara's
fragments + graph mutex watershed (see ``docs/scale.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.utils import convert_to_numpy

from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D
from monai_denoiseg.transforms.instances import AffinityToInstances

__all__ = ["segment"]


def segment(
    affinity_prob,
    offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
    strides: Sequence[int] | None = None,
    mask=None,
    randomize_strides: bool = False,
    num_attractive: int | None = None,
    min_size: int = 0,
) -> np.ndarray:
    """Mutex-watershed instances of "same instance" probabilities (C, D, H, W) (or one slice (C, H, W)).

    A thin wrapper over :class:`~monai_denoiseg.transforms.instances.AffinityToInstances`: 2-D offsets
    segment every z-slice on its own (ids disjoint across slices), 3-D offsets the volume in 3-D.
    ``strides=None`` is the reference's (5, 5) (``(1, 5, 5)`` in 3-D). ``mask`` (D, H, W) or (1, D, H, W),
    nonzero = foreground: edges touching the background are dropped, background gets 0. Returns uint64
    labels (D, H, W) (or (H, W) for a single slice), 1..n, never cast to a narrower type.
    """
    aff = np.asarray(convert_to_numpy(affinity_prob), dtype=np.float32)
    single = aff.ndim == 3 and len(offsets[0]) == 2
    aff = aff[:, None] if single else aff
    if aff.ndim != 4:
        raise ValueError(f"affinity_prob: expected (C, D, H, W) or (C, H, W), got shape {aff.shape}.")
    fg = None
    if mask is not None:
        m = convert_to_numpy(mask)
        m = m[None] if m.ndim == 2 else (m[0] if m.ndim == 4 and m.shape[0] == 1 else m)
        fg = m[None] != 0
    mws = AffinityToInstances(offsets, strides=strides, randomize_strides=randomize_strides,
                              num_attractive=num_attractive, min_size=min_size)
    labels = np.asarray(mws(aff, mask=fg, key="affinity_prob"))[0].astype(np.uint64)
    return labels[0] if single else labels
