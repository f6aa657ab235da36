"""Any 2-D metric scored per slice of a volume, one value per volume: the EM-DenoiSeg per-slice protocol.

The paper (Wang et al., MICCAI 2024) reports every metric as the mean over the 2-D slices of a test
stack. MONAI's metrics score each *sample* of a batch; :class:`SliceAveragedMetric` feeds a wrapped
metric the D slices of each (B, C, D, H, W) volume as a batch of (B * D, C, H, W) images and keeps, per
volume, the NaN-ignoring mean of the slices' values (float64): one row per volume in its buffer, so an
``IgniteMetricHandler`` reports the mean over volumes of the per-volume slice means and its
``metric_details`` hold one value per volume. ``mode="volume"`` scores the volumes whole instead.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option

__all__ = ["SliceAveragedMetric", "reduce_values"]


def reduce_values(data: torch.Tensor, reduction: MetricReduction | str) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI's ``do_metric_reduction`` of (B, C) values, with ``"mean"`` kept in their precision (float64: MONAI's
    returns float32) and NaN, not 0, when no value is counted (as ``np.nanmean``, so an all-NaN VOI never looks
    perfect). Returns (values, not_nans) as MONAI."""
    f, not_nans = do_metric_reduction(data.clone(), reduction)
    if look_up_option(reduction, MetricReduction) == MetricReduction.MEAN:
        per_sample = data.reshape(data.shape[0], -1).nanmean(dim=1)  # channels, then samples, NaN left out
        f = per_sample.nanmean().reshape(f.shape).to(data.dtype)
    return f, not_nans


class SliceAveragedMetric(CumulativeIterationMetric):
    """Per-volume value of ``metric_fn``: the mean over the 2-D slices (``mode="slice"``) or the whole volume.

    Args:
        metric_fn: a MONAI ``CumulativeIterationMetric`` of (N, C, H, W) images returning (N, K) values,
            e.g. :class:`UnitRangePSNRMetric`, :class:`UnitRangeSSIMMetric` (``spatial_dims=2``), MONAI's
            ``MeanIoU(reduction="none")``; only its per-sample values are used (its buffer is emptied).
        mode: ``"slice"``: inputs (B, C, D, H, W) are scored slice by slice along D and averaged per volume,
            NaN values (e.g. IoU of a slice without foreground) left out; ``"volume"``: each volume is
            scored whole by ``volume_metric_fn`` (default ``metric_fn``).
        volume_metric_fn: the 3-D metric of ``mode="volume"`` (e.g. a 3-D SSIM).
        min_depth: in ``"volume"`` mode, volumes thinner than this (D < ``min_depth``, e.g. 7 for a 7x7x7 SSIM
            window) are scored per slice by ``metric_fn`` instead.
        reduction, get_not_nans: of ``aggregate`` over the volumes, as MONAI's metrics (NaN values left out).

    Inputs 4-D (B, C, H, W) are single slices (D = 1).
    """

    def __init__(
        self,
        metric_fn: CumulativeIterationMetric,
        mode: str = "slice",
        volume_metric_fn: CumulativeIterationMetric | None = None,
        min_depth: int = 1,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric_fn = metric_fn
        self.mode = look_up_option(mode, ("slice", "volume"))
        self.volume_metric_fn = volume_metric_fn if volume_metric_fn is not None else metric_fn
        self.min_depth = int(min_depth)
        self.reduction, self.get_not_nans = reduction, get_not_nans

    @staticmethod
    def _values(metric: CumulativeIterationMetric, y_pred: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        values = torch.as_tensor(metric(y_pred, y))  # batch-first per-sample values
        metric.reset()  # they are kept here, per volume
        return values.reshape(values.shape[0], -1).double()

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y_pred.ndim == 4:
            y_pred, y = y_pred[:, :, None], None if y is None else y[:, :, None]
        if y_pred.ndim != 5 or (y is not None and y.shape != y_pred.shape):
            raise ValueError(
                f"y_pred: expected volumes (B, C, D, H, W) shaped like y, got {tuple(y_pred.shape)} and "
                f"{None if y is None else tuple(y.shape)}."
            )
        batch, depth = y_pred.shape[0], y_pred.shape[2]
        if self.mode == "volume" and depth >= self.min_depth:
            return self._values(self.volume_metric_fn, y_pred, y)

        def slices(x):
            return x.movedim(2, 1).reshape(batch * depth, x.shape[1], *x.shape[3:])

        values = self._values(self.metric_fn, slices(y_pred), None if y is None else slices(y))
        return values.reshape(batch, depth, -1).nanmean(dim=1)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """The per-volume values reduced over volumes (``"mean"``: a scalar, NaN volumes left out)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__}: nothing to aggregate, call the metric on a batch first.")
        f, not_nans = reduce_values(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
