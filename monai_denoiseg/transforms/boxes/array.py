"""Boxes of the objects in a label image, in MONAI's detection conventions (second paper, Section 3.5).

The second paper judges a denoiser by what a detector finds in its output (plaques; here the public
stand-in, mitochondria). A detector trains on boxes: :class:`LabelToBoxes` turns instance ids, or the
connected components of a binary mask, into ``StandardMode`` boxes of ``monai.data.box_utils``:
``[x0, y0, x1, y1]`` (2-D) or ``[x0, y0, z0, x1, y1, z1]`` (3-D), ``x`` the first spatial axis of the
array, the upper corner exclusive (MONAI's ``TO_REMOVE = 0``: a one-pixel object at 3 spans [3, 4]) —
exactly what ``monai.apps.detection.transforms.box_ops.convert_mask_to_box`` gives for one object.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data.box_utils import TO_REMOVE
from monai.transforms import Transform
from monai.utils import convert_to_dst_type
from skimage.measure import label as connected_components

from monai_denoiseg.utils.validation import check_finite, check_instance_labels, check_spatial_ndim

__all__ = ["LabelToBoxes", "label_to_boxes"]


def label_to_boxes(labels: np.ndarray, binary: bool = False, connectivity: int | None = None,
                   min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (N, 2 * ndim) float32, object ids (N,) int64)`` of the nonzero objects of a (*spatial) array,
    ordered by id. ``binary``: objects are the connected components of ``labels != 0`` (``connectivity``
    as scikit-image's, default full); otherwise each id is one object. Objects under ``min_size`` pixels
    are left out."""
    labels = np.asarray(labels)
    ndim = labels.ndim
    if binary:
        labels = connected_components(labels != 0, connectivity=connectivity)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids, inverse, sizes = np.unique(flat[where], return_inverse=True, return_counts=True)
    lo = np.full((len(ids), ndim), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((len(ids), ndim), -1, dtype=np.int64)
    for axis, coord in enumerate(np.unravel_index(where, labels.shape)):
        np.minimum.at(lo[:, axis], inverse, coord)
        np.maximum.at(hi[:, axis], inverse, coord)
    keep = sizes >= min_size
    boxes = np.concatenate([lo, hi + 1 - TO_REMOVE], axis=1)[keep].astype(np.float32)
    return boxes.reshape(-1, 2 * ndim), ids[keep].astype(np.int64)


class LabelToBoxes(Transform):
    """Label image ``(1, *spatial)`` -> ``(boxes (N, 2 * spatial_dims), class labels (N,))``.

    Args:
        spatial_dims: 2 or 3 (a (1, H, W) slice or a (1, D, H, W) volume).
        binary: the label image is a mask (e.g. mitochondria): objects are its connected components;
            otherwise every nonzero id is one object.
        connectivity: of the connected components (scikit-image's; default: full, 8 / 26 neighbours).
        min_size: objects smaller than this many pixels get no box.
        class_label: the class of every box (MONAI's detectors count classes from 0).

    Boxes are float32 in the input's type (numpy or torch); no object gives ``(0, 2 * spatial_dims)``.
    """

    def __init__(self, spatial_dims: int = 2, binary: bool = False, connectivity: int | None = None,
                 min_size: int = 0, class_label: int = 0) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims, self.binary, self.connectivity = spatial_dims, bool(binary), connectivity
        self.min_size, self.class_label = int(min_size), int(class_label)

    def __call__(self, label: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        check_spatial_ndim(label, self.spatial_dims, key="label")
        array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if array.shape[0] != 1:
            raise ValueError(f"label: expected one channel (1, *spatial), got shape {array.shape}.")
        check_finite(array, key="label")
        if not self.binary:
            check_instance_labels(array, key="label")
        boxes, _ = label_to_boxes(array[0], self.binary, self.connectivity, self.min_size)
        classes = np.full(len(boxes), self.class_label, dtype=np.int64)
        out_boxes, *_ = convert_to_dst_type(boxes, label, dtype=torch.float32 if isinstance(label, torch.Tensor)
                                            else np.float32)
        out_classes, *_ = convert_to_dst_type(classes, label, dtype=torch.int64 if isinstance(label, torch.Tensor)
                                              else np.int64)
        return out_boxes, out_classes
