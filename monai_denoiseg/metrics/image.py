"""PSNR and SSIM as the EM-DenoiSeg evaluation computes them: on images mapped to [0, 1].

The reference (MICCAI 2024) trains on images scaled to [-1, 1], clamps the prediction to [-1, 1],
maps both images with ``(x + 1) / 2`` and reports ``PSNR = 20 log10(1 / sqrt(MSE))`` and scikit-image's
``structural_similarity(..., win_size=7, data_range=1)`` (7x7 uniform window, sample covariance).
These are thin subclasses of MONAI's ``PSNRMetric`` and ``SSIMMetric`` that do the mapping; the
SSIM subclass reproduces scikit-image's sample covariance exactly through MONAI's ``k2`` (see
:class:`UnitRangeSSIMMetric`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.utils import MetricReduction, ensure_tuple_rep

__all__ = ["to_unit_range", "UnitRangePSNRMetric", "UnitRangeSSIMMetric"]


def _interval(data_range: float | Sequence[float]) -> tuple[float, float]:
    lo, hi = (0.0, float(data_range)) if isinstance(data_range, numbers.Real) else map(float, data_range)
    if not hi > lo:
        raise ValueError(
            f"data_range: expected a span > 0 or an interval (low, high) with high > low, got {data_range!r}."
        )
    return lo, hi


def to_unit_range(x: torch.Tensor, data_range: float | Sequence[float] = 1.0, clip: bool = True) -> torch.Tensor:
    """Map intensities from ``data_range`` (a span ``r`` meaning [0, r], or an interval ``(low, high)``) to [0, 1].

    ``clip`` clamps the result to [0, 1], as the reference clamps its prediction to [-1, 1] before scoring.
    """
    lo, hi = _interval(data_range)
    out = (x.to(torch.promote_types(x.dtype, torch.float32)) - lo) / (hi - lo)
    return out.clamp(0.0, 1.0) if clip else out


class UnitRangePSNRMetric(PSNRMetric):
    """PSNR in dB of images in ``data_range`` after mapping to [0, 1]: ``20 log10(1 / sqrt(MSE))`` per sample.

    ``data_range=(-1, 1)`` scores the [-1, 1] images of the EM-DenoiSeg training exactly as its
    evaluation does. Inputs (B, C, *spatial); the MSE runs over channels and space of each sample.
    """

    def __init__(
        self,
        data_range: float | Sequence[float] = 1.0,
        clip: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(max_val=1.0, reduction=reduction, get_not_nans=get_not_nans)
        self.intensity_range, self.clip = _interval(data_range), clip

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super()._compute_metric(
            to_unit_range(y_pred, self.intensity_range, self.clip), to_unit_range(y, self.intensity_range, self.clip)
        )


class UnitRangeSSIMMetric(SSIMMetric):
    """SSIM of images in ``data_range`` after mapping to [0, 1], defaults matching scikit-image's
    ``structural_similarity(win_size=7, data_range=1)`` as the EM-DenoiSeg evaluation uses it.

    MONAI's ``SSIMMetric`` uses population (co)variances; scikit-image divides by ``n - 1``
    (``use_sample_covariance=True``), i.e. multiplies every (co)variance by ``k = n / (n - 1)`` with
    ``n = win_size ** spatial_dims``. Scaling all (co)variances by ``k`` in the contrast-structure term
    ``(2 s_xy + c2) / (s_x + s_y + c2)`` is the same as dividing ``c2`` by ``k``, so
    ``sample_covariance=True`` passes ``k2 / sqrt(k)`` to MONAI: the result equals scikit-image's
    up to float32 round-off. Both crop the border (MONAI: valid convolution; scikit-image: ``(win_size - 1) // 2``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        data_range: float | Sequence[float] = 1.0,
        clip: bool = True,
        kernel_type: str = "uniform",
        win_size: int = 7,
        kernel_sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        sample_covariance: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        n = math.prod(ensure_tuple_rep(win_size, spatial_dims))
        k2_effective = k2 * ((n - 1) / n) ** 0.5 if sample_covariance else k2
        super().__init__(
            spatial_dims=spatial_dims,
            data_range=1.0,
            kernel_type=kernel_type,
            win_size=win_size,
            kernel_sigma=kernel_sigma,
            k1=k1,
            k2=k2_effective,
            reduction=reduction,
            get_not_nans=get_not_nans,
        )
        self.intensity_range, self.clip = _interval(data_range), clip

    def _compute_metric(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super()._compute_metric(
            to_unit_range(y_pred, self.intensity_range, self.clip), to_unit_range(y, self.intensity_range, self.clip)
        )
