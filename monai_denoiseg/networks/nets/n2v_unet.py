"""The UNets of "Joint optical neuroimaging denoising with semantic tasks" (Noise2Void denoiser and
segmenter), as configurations of MONAI's ``BasicUNet`` rather than a new UNet.

Both are UNets whose every convolution is followed by batch norm and then LeakyReLU (MONAI's
``Convolution`` applies its ADN layers in the order "NDA": norm, dropout, activation). The
denoiser also adds its input to the output (the network only learns the noise to remove), the
segmenter does not. ``BasicUNet`` halves the resolution four times, so both are wrapped in
:class:`~monai_denoiseg.networks.utils.PadToMultiple` (multiple of 16) to accept any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from monai_denoiseg.networks.utils import PadToMultiple

__all__ = ["InputResidual", "n2v_denoiser_unet", "n2v_segmenter_unet", "N2V_UNET_STRIDE"]

#: Total stride of MONAI's BasicUNet (four 2x max-poolings).
N2V_UNET_STRIDE = 16


class InputResidual(nn.Module):
    """Wrap ``net`` so that it predicts a correction: ``output = input + net(input)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if y.shape != x.shape:
            raise ValueError(
                f"output: the input residual needs net(input) shaped like the input {tuple(x.shape)}, "
                f"got {tuple(y.shape)} (out_channels must equal in_channels)."
            )
        return x + y


def _bn_leaky_unet(spatial_dims, in_channels, out_channels, features, negative_slope, dropout, upsample) -> nn.Module:
    """MONAI BasicUNet with conv -> batch norm -> LeakyReLU everywhere, padded to its stride."""
    unet = BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=features,
        act=("leakyrelu", {"negative_slope": negative_slope, "inplace": True}),
        norm="batch",
        bias=False,  # a bias before batch norm is redundant
        dropout=dropout,
        upsample=upsample,
    )
    return PadToMultiple(unet, N2V_UNET_STRIDE)


def n2v_denoiser_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    negative_slope: float = 0.1,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> InputResidual:
    """Noise2Void denoiser UNet (BN before LeakyReLU, input residual); output channels = ``in_channels``.

    ``features`` are BasicUNet's six widths (four encoder levels, bottleneck, last decoder level).
    """
    unet = _bn_leaky_unet(spatial_dims, in_channels, in_channels, features, negative_slope, dropout, upsample)
    return InputResidual(unet)


def n2v_segmenter_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    negative_slope: float = 0.1,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> nn.Module:
    """The segmenter: the same UNet without the residual, ``out_channels`` logits (no activation)."""
    return _bn_leaky_unet(spatial_dims, in_channels, out_channels, features, negative_slope, dropout, upsample)
