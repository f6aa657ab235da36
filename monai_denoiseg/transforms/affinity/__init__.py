"""Instance labels -> affinity targets (array and dictionary transforms)."""

from .array import (
    DEFAULT_OFFSETS_3D,
    PAPER_OFFSETS_2D,
    LabelToAffinity,
    class_balance_weight,
    label_to_affinity,
    offsets_for_ndim,
    pair_slices,
)
from .dictionary import LabelToAffinityD, LabelToAffinityd, LabelToAffinityDict
