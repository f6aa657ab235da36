"""Evaluation metrics as MONAI cumulative metrics: VOI and adapted Rand error for instances, PSNR/SSIM
on the reference's [0, 1] scale, IoU/F1 for binary masks, detection F1/IoU of boxes;
:class:`SliceAveragedMetric` scores any of them per 2-D slice of a volume (the papers' protocol)."""

from .binary import binary_f1_metric, binary_iou_metric
from .detection import DetectionMetric, match_boxes
from .image import UnitRangePSNRMetric, UnitRangeSSIMMetric, to_unit_range
from .segmentation import (
    AdaptedRandError,
    AdaptedRandErrorMetric,
    VariationOfInformation,
    VariationOfInformationMetric,
    adapted_rand_error,
    variation_of_information,
)
from .slicewise import SliceAveragedMetric

__all__ = [
    "AdaptedRandError",
    "AdaptedRandErrorMetric",
    "DetectionMetric",
    "UnitRangePSNRMetric",
    "UnitRangeSSIMMetric",
    "VariationOfInformation",
    "SliceAveragedMetric",
    "VariationOfInformationMetric",
    "adapted_rand_error",
    "binary_f1_metric",
    "binary_iou_metric",
    "match_boxes",
    "to_unit_range",
    "variation_of_information",
]
