"""Inference: sliding windows over blocks that tile a volume of any size (see ``docs/scale.md``)."""

from .block import BlockInferer, predict_volume, unit_range

__all__ = ["BlockInferer", "predict_volume", "unit_range"]
