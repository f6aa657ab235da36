"""Losses of joint denoising and segmentation, as torch modules in MONAI's style."""

from .affinity import WeightedAffinityBCELoss
from .joint import LOSS_TERMS, REFERENCE_INTENSITY_SCALE, DenoiSegLoss, JointDenoiSegLoss, N2VSegLoss
from .n2v import N2VLoss, masked_reduce

__all__ = [
    "LOSS_TERMS",
    "REFERENCE_INTENSITY_SCALE",
    "DenoiSegLoss",
    "JointDenoiSegLoss",
    "N2VLoss",
    "N2VSegLoss",
    "WeightedAffinityBCELoss",
    "masked_reduce",
]
