"""Dictionary twin of :class:`AffinityToInstances`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

from monai_denoiseg.transforms.affinity.array import PAPER_OFFSETS_2D

from .array import AffinityToInstances

__all__ = ["AffinityToInstancesd", "AffinityToInstancesD", "AffinityToInstancesDict"]


class AffinityToInstancesd(Randomizable, MapTransform):
    """Dictionary-based :class:`AffinityToInstances`: ``d[key]`` (affinities) -> instance labels.

    Args:
        keys: affinity keys.
        mask_key: optional key of a foreground mask ``(1, *spatial)`` (nonzero = foreground; e.g. the ground-truth
            foreground, as the reference evaluation did); masked-out pixels get label 0.
        output_keys: where to write the labels, one per key; default ``None`` overwrites ``d[key]`` (MONAI's
            post-transform convention).
        offsets, strides, randomize_strides, num_attractive, min_size: see :class:`AffinityToInstances`.
        allow_missing_keys: don't raise an exception if a key is missing.

    With ``randomize_strides`` one draw is shared by all keys of a call.
    """

    backend = AffinityToInstances.backend

    def __init__(
        self,
        keys: KeysCollection,
        offsets: Sequence[Sequence[int]] = PAPER_OFFSETS_2D,
        strides: Sequence[int] | None = None,
        randomize_strides: bool = False,
        num_attractive: int | None = None,
        min_size: int = 0,
        mask_key: str | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.segmenter = AffinityToInstances(offsets, strides, randomize_strides, num_attractive, min_size)
        self.mask_key = mask_key
        self.output_keys = self.keys if output_keys is None else ensure_tuple_rep(output_keys, len(self.keys))
        if len(set(self.output_keys)) != len(self.keys):
            raise ValueError(f"output_keys: expected one distinct key per key {self.keys}, got {self.output_keys}.")

    def set_random_state(self, seed: int | None = None, state=None) -> AffinityToInstancesd:
        super().set_random_state(seed, state)
        self.segmenter.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.segmenter.randomize()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        mask = None if self.mask_key is None else d[self.mask_key]
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.segmenter(d[key], mask, randomize=False, key=str(key), mask_key=str(self.mask_key))
        return d


AffinityToInstancesD = AffinityToInstancesDict = AffinityToInstancesd
