"""Weighted binary cross entropy on affinity maps (MICCAI 2024 EM-DenoiSeg, eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction, look_up_option
from torch import nn

from monai_denoiseg.utils.validation import check_same_shape

from .n2v import masked_reduce

__all__ = ["WeightedAffinityBCELoss"]


class WeightedAffinityBCELoss(nn.Module):
    """``w * BCE(input, target)`` per affinity, averaged over the valid affinities.

    Shapes: ``input``, ``target`` and the optional ``weight`` and ``mask`` are all (B, C, *spatial),
    C = number of offsets (e.g. the ``affinity``, ``affinity_weight`` and ``affinity_mask`` outputs of
    the affinity transform). ``sigmoid=True`` (default) takes logits and uses the numerically stable
    ``binary_cross_entropy_with_logits``; ``sigmoid=False`` takes probabilities (``binary_cross_entropy``,
    whose log is clamped at -100).

    Normalisation (``reduction="mean"``): ``sum(w * bce * mask) / sum(mask)``, the mean over the valid
    affinities; without a mask, the mean over all elements. The paper's loss
    ``-1/N sum w [y log p + (1 - y) log(1 - p)]`` and its code ``binary_cross_entropy(p, y, w)`` are the
    latter: pass the weight map and no mask to reproduce them (a weight map that is zero at invalid
    pairs then gives ``sum over valid / all elements``). ``"sum"`` and ``"none"`` return the masked
    sum and the masked element-wise loss.
    """

    def __init__(self, sigmoid: bool = True, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__()
        self.sigmoid = sigmoid
        self.reduction = look_up_option(reduction, LossReduction).value

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input.ndim < 3:
            raise ValueError(f"input: expected affinities shaped (B, C, *spatial), got shape {tuple(input.shape)}.")
        check_same_shape(input, target=target, weight=weight, mask=mask)
        target = target.to(input.dtype)
        weight = None if weight is None else weight.to(input.dtype)
        bce = F.binary_cross_entropy_with_logits if self.sigmoid else F.binary_cross_entropy
        return masked_reduce(bce(input, target, weight=weight, reduction="none"), mask, self.reduction)
