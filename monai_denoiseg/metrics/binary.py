"""IoU and F1 (Dice) of binary masks, e.g. mitochondria (the second paper scores segmentation with IoU and F1).

MONAI's ``MeanIoU`` and ``DiceMetric`` already compute ``|P & G| / |P | G|`` and ``2 |P & G| / (|P| + |G|)``
per sample over all spatial positions; for a single-channel binary mask they must keep that channel
(``include_background=True``: with one channel it *is* the foreground). These constructors fix that
setting so the metric cannot silently score the wrong channel. Inputs: binarised (B, 1, *spatial)
masks, e.g. after ``monai.transforms.AsDiscrete(threshold=0.5)`` on probabilities. F1 equals Dice
for binary masks.
"""

from __future__ import annotations

from monai.metrics import DiceMetric, MeanIoU
from monai.utils import MetricReduction

__all__ = ["binary_iou_metric", "binary_f1_metric"]


def binary_iou_metric(
    reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False, ignore_empty: bool = True
) -> MeanIoU:
    """MONAI ``MeanIoU`` for (B, 1, *spatial) binary masks: foreground IoU per sample.

    ``ignore_empty=True`` gives NaN (left out of the mean) for a sample without foreground in the
    ground truth; ``False`` gives 1 when the prediction is empty too, else 0.
    """
    return MeanIoU(include_background=True, reduction=reduction, get_not_nans=get_not_nans, ignore_empty=ignore_empty)


def binary_f1_metric(
    reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False, ignore_empty: bool = True
) -> DiceMetric:
    """MONAI ``DiceMetric`` for (B, 1, *spatial) binary masks: foreground F1 (= Dice) per sample.

    ``ignore_empty`` as in :func:`binary_iou_metric`.
    """
    return DiceMetric(
        include_background=True, reduction=reduction, get_not_nans=get_not_nans, ignore_empty=ignore_empty
    )
