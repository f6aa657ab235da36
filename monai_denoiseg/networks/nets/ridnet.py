"""RIDNet: real image denoising with feature attention (Anwar & Barnes, ICCV 2019).

A head convolution, a chain of Enhancement Attention Modules (EAM) and a tail convolution whose
output is added to the input (global skip: the network predicts the residual). Each EAM is

1. a merge-and-run unit: two branches of two dilated 3x3 convs (dilations 1, 2 and 3, 4), their
   concatenation merged by a 3x3 conv, plus a local skip;
2. a residual block: conv-ReLU-conv, skip, ReLU;
3. an enhanced residual block: conv-ReLU-conv-ReLU-1x1 conv, skip, ReLU;
4. feature attention: channel attention (global average pool, bottleneck by ``reduction``,
   sigmoid gate), i.e. squeeze-and-excitation, taken from MONAI.

No stride: fully convolutional, any input size. The EM-DenoiSeg comparison (MICCAI 2024) uses
128 channels and 4 EAMs: 5.98 M parameters in 2-D with one channel.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_denoiseg.utils.validation import check_spatial_ndim

__all__ = ["RIDNet", "EnhancementAttentionModule", "MergeAndRun", "ResidualConvBlock"]


def _conv(spatial_dims: int, in_ch: int, out_ch: int, act, kernel_size: int = 3, dilation: int = 1) -> Convolution:
    """A same-size convolution followed by ``act`` (no normalisation, as in RIDNet); ``act=None``: linear."""
    return Convolution(
        spatial_dims, in_ch, out_ch, kernel_size=kernel_size, dilation=dilation, act=act, norm=None,
        conv_only=act is None,
    )


class MergeAndRun(nn.Module):
    """Two dilated branches (dilations 1-2 and 3-4), concatenated, merged by a conv, plus the input."""

    def __init__(self, spatial_dims: int, channels: int, act) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(*(_conv(spatial_dims, channels, channels, act, dilation=d) for d in (1, 2)))
        self.branch2 = nn.Sequential(*(_conv(spatial_dims, channels, channels, act, dilation=d) for d in (3, 4)))
        self.merge = _conv(spatial_dims, 2 * channels, channels, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.merge(torch.cat([self.branch1(x), self.branch2(x)], dim=1))


class ResidualConvBlock(nn.Module):
    """``act(x + body(x))``; body = conv-act-conv (residual block) or conv-act-conv-act-1x1 conv (enhanced)."""

    def __init__(self, spatial_dims: int, channels: int, act, enhanced: bool = False) -> None:
        super().__init__()
        layers = [_conv(spatial_dims, channels, channels, act)]
        if enhanced:
            layers += [_conv(spatial_dims, channels, channels, act), _conv(spatial_dims, channels, channels, None, 1)]
        else:
            layers.append(_conv(spatial_dims, channels, channels, None))
        self.body = nn.Sequential(*layers)
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class EnhancementAttentionModule(nn.Sequential):
    """EAM: merge-and-run, residual block, enhanced residual block, channel (feature) attention."""

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 16, act: str | tuple = "relu") -> None:
        super().__init__(
            MergeAndRun(spatial_dims, channels, act),
            ResidualConvBlock(spatial_dims, channels, act),
            ResidualConvBlock(spatial_dims, channels, act, enhanced=True),
            ChannelSELayer(spatial_dims, channels, r=reduction, acti_type_1=act, acti_type_2="sigmoid"),
        )


class RIDNet(nn.Module):
    """RIDNet denoiser for 2-D or 3-D images: ``output = input + tail(EAMs(head(input)))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels; must equal ``in_channels`` (global skip).
        features: channels of every hidden layer (128 in the EM-DenoiSeg comparison, 64 in the
            original RIDNet).
        num_blocks: number of EAMs (4).
        reduction: channel-attention bottleneck ratio (16).
        act: activation, a MONAI factory name or ``(name, kwargs)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: int = 128,
        num_blocks: int = 4,
        reduction: int = 16,
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                f"out_channels: the global skip (input + residual) needs out_channels == in_channels, "
                f"got in_channels={in_channels}, out_channels={out_channels}."
            )
        if features // reduction < 1:
            raise ValueError(f"reduction: expected at most features={features}, got {reduction}.")
        self.spatial_dims = spatial_dims
        self.head = _conv(spatial_dims, in_channels, features, act)
        self.blocks = nn.Sequential(
            *(EnhancementAttentionModule(spatial_dims, features, reduction, act) for _ in range(num_blocks))
        )
        self.tail = _conv(spatial_dims, features, out_channels, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_ndim(x, self.spatial_dims, key="input", extra_dims=2)
        return x + self.tail(self.blocks(self.head(x)))
