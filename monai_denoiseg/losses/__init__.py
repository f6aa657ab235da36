"""Losses of joint denoising and segmentation, as torch modules in MONAI's style."""

from .affinity import WeightedAffinityBCELoss
from .joint import JointDenoiSegLoss, N2VSegLoss, WeightedTermsLoss
from .n2v import N2VLoss, masked_reduce

__all__ = [
    "JointDenoiSegLoss",
    "N2VLoss",
    "N2VSegLoss",
    "WeightedAffinityBCELoss",
    "WeightedTermsLoss",
    "masked_reduce",
]
