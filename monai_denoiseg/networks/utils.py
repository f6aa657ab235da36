"""Run any network on inputs whose sides are not multiples of its total stride.

The reference UNet crashes on CREMI's 1250x1250 slices; wrapping a network in
:class:`PadToMultiple` pads the input (replicate border) up to the next multiple and crops
every tensor output (a tensor, a tuple/list or a dict of tensors) back to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["pad_to_multiple", "crop_spatial", "PadToMultiple"]


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int], mode: str = "replicate") -> torch.Tensor:
    """Pad the spatial dims of a (B, C, *spatial) tensor at their end up to a multiple of ``multiple``."""
    spatial = x.shape[2:]
    mult = [multiple] * len(spatial) if isinstance(multiple, int) else list(multiple)
    extra = [(-s) % m for s, m in zip(spatial, mult)]
    if not any(extra):
        return x
    pads = []
    for e in reversed(extra):  # F.pad lists the last dim first
        pads += [0, e]
    return F.pad(x, pads, mode=mode)


def crop_spatial(out, spatial_shape: Sequence[int]):
    """Crop a tensor, or every tensor inside a tuple/list/dict, to ``spatial_shape`` (trailing dims)."""
    if isinstance(out, torch.Tensor):
        index = (Ellipsis,) + tuple(slice(0, s) for s in spatial_shape)
        return out[index]
    if isinstance(out, dict):
        return type(out)((k, crop_spatial(v, spatial_shape)) for k, v in out.items())
    if isinstance(out, (tuple, list)):
        return type(out)(crop_spatial(v, spatial_shape) for v in out)
    return out


class PadToMultiple(nn.Module):
    """Wrap ``net`` so that it accepts any spatial size: pad to a multiple of ``multiple``, crop outputs back."""

    def __init__(self, net: nn.Module, multiple: int | Sequence[int], mode: str = "replicate") -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.mode = mode

    def forward(self, x: torch.Tensor, *args, **kwargs):
        shape = x.shape[2:]
        return crop_spatial(self.net(pad_to_multiple(x, self.multiple, self.mode), *args, **kwargs), shape)
