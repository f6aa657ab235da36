"""Dictionary twin of :class:`LabelToAffinity`: writes affinity, class-balance weight and validity mask keys."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from .array import PAPER_OFFSETS_2D, LabelToAffinity

__all__ = ["LabelToAffinityd", "LabelToAffinityD", "LabelToAffinityDict"]


class LabelToAffinityd(MapTransform):
    """Dictionary-based :class:`LabelToAffinity`: a label ``d[key]`` -> affinity, weight and mask keys.

    Place it after every spatial augmentation of the label (flips, rotations, crops): affinities of a flipped
    label are not the flipped affinities. The label itself is left in place.

    Args:
        keys: label keys.
        affinity_keys, weight_keys, mask_keys: output key(s), one per label key (a single name is used for a
            single label key). ``weight_keys`` / ``mask_keys`` may be ``None`` to skip that output. The weight is
            the class-balance weight times the validity mask, ready for a weighted BCE.
        offsets, background_label, ignore_label, weight_clip: see :class:`LabelToAffinity`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = LabelToAffinity.backend

    def __init__(
        self,
        keys: KeysCollection,
        offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
        background_label: int | None = None,
        ignore_label: int | None = None,
        weight_clip: tuple[float, float] = (0.05, 0.99),
        affinity_keys: KeysCollection = "affinity",
        weight_keys: KeysCollection | None = "affinity_weight",
        mask_keys: KeysCollection | None = "affinity_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToAffinity(offsets, background_label, ignore_label, weight_clip)
        n = len(self.keys)
        self.affinity_keys = ensure_tuple_rep(affinity_keys, n)
        self.weight_keys = ensure_tuple_rep(weight_keys, n)
        self.mask_keys = ensure_tuple_rep(mask_keys, n)
        outputs = [k for k in self.affinity_keys + self.weight_keys + self.mask_keys if k is not None]
        if len(set(outputs)) != len(outputs) or set(outputs) & set(self.keys):
            raise ValueError(
                f"affinity_keys/weight_keys/mask_keys: expected distinct output keys, one per label key {self.keys}, "
                f"not overwriting a label, got {self.affinity_keys}, {self.weight_keys}, {self.mask_keys}."
            )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, aff_key, w_key, m_key in self.key_iterator(d, self.affinity_keys, self.weight_keys, self.mask_keys):
            affinity, weight, mask = self.converter.compute(d[key], key=str(key))
            for out_key, value in ((aff_key, affinity), (w_key, weight), (m_key, mask)):
                if out_key is not None:
                    d[out_key] = value
        return d


LabelToAffinityD = LabelToAffinityDict = LabelToAffinityd
