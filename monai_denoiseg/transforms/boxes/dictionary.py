"""Dictionary twin of :class:`LabelToBoxes`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from .array import LabelToBoxes

__all__ = ["LabelToBoxesd", "LabelToBoxesD", "LabelToBoxesDict"]


class LabelToBoxesd(MapTransform):
    """Dictionary-based :class:`LabelToBoxes`: ``d[key]`` (a label image) -> ``d[box_key]``, ``d[box_label_key]``.

    Args:
        keys: label-image keys.
        box_keys, box_label_keys: where the boxes and their classes go, one per key (default ``"boxes"`` and
            ``"labels"``, the names MONAI's detection transforms and torchvision's detectors read).
        spatial_dims, binary, connectivity, min_size, class_label: see :class:`LabelToBoxes`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(self, keys: KeysCollection, box_keys: KeysCollection = "boxes", box_label_keys: KeysCollection = "labels",
                 spatial_dims: int = 2, binary: bool = False, connectivity: int | None = None, min_size: int = 0,
                 class_label: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = ensure_tuple_rep(box_keys, len(self.keys))
        self.box_label_keys = ensure_tuple_rep(box_label_keys, len(self.keys))
        self.converter = LabelToBoxes(spatial_dims, binary, connectivity, min_size, class_label)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, box_key, label_key in self.key_iterator(d, self.box_keys, self.box_label_keys):
            d[box_key], d[label_key] = self.converter(d[key])
        return d


LabelToBoxesD = LabelToBoxesDict = LabelToBoxesd
