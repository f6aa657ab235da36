"""DnCNN: a plain deep CNN that learns the noise (Zhang et al. 2017, "Beyond a Gaussian Denoiser:
Residual Learning of Deep CNN for Image Denoising", IEEE TIP 26(7)).

``num_layers`` 3x3 convolutions at ``features`` channels, no stride: Conv+ReLU, then
``num_layers - 2`` x Conv+BN+ReLU, then a linear Conv that predicts the noise ``R(y)``; the
denoised image is ``y - R(y)`` (residual learning). Fully convolutional, so any input size works.
The MICCAI 2024 EM-DenoiSeg paper compares the 17-layer, 64-channel version (0.56 M parameters).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn

from monai_denoiseg.utils.validation import check_spatial_ndim

__all__ = ["DnCNN"]


class DnCNN(nn.Module):
    """DnCNN denoiser for 2-D or 3-D images, (B, in_channels, *spatial) -> (B, out_channels, *spatial).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels; must equal ``in_channels`` when ``residual`` is True.
        num_layers: total number of convolutions (17 in the paper's Gaussian denoiser).
        features: channels of the hidden convolutions (64 in the paper).
        act: activation, a MONAI factory name or ``(name, kwargs)``.
        norm: normalisation of the hidden layers (batch norm in the paper).
        residual: return ``input - body(input)`` (the paper) instead of ``body(input)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_layers: int = 17,
        features: int = 64,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        residual: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers: expected at least 2 (first and last convolution), got {num_layers}.")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"out_channels: residual learning (input - noise) needs out_channels == in_channels, "
                f"got in_channels={in_channels}, out_channels={out_channels}."
            )
        self.spatial_dims = spatial_dims
        self.residual = residual
        layers = [Convolution(spatial_dims, in_channels, features, act=act, norm=None)]
        layers += [
            Convolution(spatial_dims, features, features, act=act, norm=norm, bias=False) for _ in range(num_layers - 2)
        ]
        layers.append(Convolution(spatial_dims, features, out_channels, conv_only=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_ndim(x, self.spatial_dims, key="input", extra_dims=2)
        noise = self.body(x)
        return x - noise if self.residual else noise
