"""Noise2Void loss: mean squared error over the blind spots only (Krull et al. 2019; CAREamics' normalisation)."""

from __future__ import annotations

import torch
from monai.utils import LossReduction, look_up_option
from torch import nn

from monai_denoiseg.utils.validation import check_same_shape

__all__ = ["masked_reduce", "N2VLoss"]


def masked_reduce(values: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce element-wise loss ``values`` over the elements where ``mask`` is set (all when None).

    ``"mean"``: ``sum(values * mask) / sum(mask)``, i.e. the mean over the masked elements of the whole
    batch (not over all elements like MONAI's ``MaskedLoss``); an empty mask gives 0 with a (zero)
    gradient instead of NaN. ``"sum"``: ``sum(values * mask)``. ``"none"``: ``values * mask``.
    """
    reduction = look_up_option(reduction, LossReduction).value
    masked = values if mask is None else values * mask.to(values.dtype)
    if reduction == "none":
        return masked
    if reduction == "sum":
        return masked.sum()
    if mask is None:
        return values.mean()
    count = mask.to(torch.promote_types(values.dtype, torch.float32)).sum()
    return masked.sum() / count.clamp_min(torch.finfo(count.dtype).tiny)


class N2VLoss(nn.Module):
    """Noise2Void loss ``sum((input - target)^2 * mask) / sum(mask)``.

    ``input``: the network's prediction on the masked image, ``target``: the noisy image before
    masking, ``mask``: 1 at the blind spots (the masked coordinates), all of shape (B, C, *spatial).
    The mean runs over the blind spots of the whole batch, as CAREamics does; MONAI's ``MaskedLoss``
    would average over all pixels and shrink the loss by the masked fraction (~1/500 at 0.2 %).
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__()
        self.reduction = look_up_option(reduction, LossReduction).value

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_same_shape(input, target=target, mask=mask)
        return masked_reduce((input - target.to(input.dtype)) ** 2, mask, self.reduction)
