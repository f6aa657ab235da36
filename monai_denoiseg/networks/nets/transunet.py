"""TransUNet-style segmenter (Chen et al. 2021, "TransUNet: Transformers Make Strong Encoders for
Medical Image Segmentation", arXiv:2102.04306), for 2-D and 3-D.

Hybrid encoder: a ResNet-like CNN (strided stem conv, then stages of MONAI ``ResNetBottleneck``
blocks, each stage halving the resolution) down to ``1 / 2**len(encoder_channels)``; the last
feature map becomes one token per pixel (patch size 1, as in R50-ViT), plus a learned positional
embedding, through ``num_layers`` MONAI ``TransformerBlock``s and a LayerNorm. Cascaded upsampler
(CUP) decoder: a 3x3 conv, then per level a 2x (bi/tri)linear upsampling, concatenation with the
CNN feature of that resolution and two conv-norm-act (MONAI ``UpCat``), up to full resolution;
a 3x3 conv gives ``out_channels`` logits (no activation).

Any input size: inputs are padded (replicate) to a multiple of the total stride and the logits
cropped back; when the token grid differs from the one of ``img_size`` the positional embedding
is resized by (bi/tri)linear interpolation. So ``img_size=256`` serves 250x250 (padded to 256,
the same grid) and 1024x1024 slices (interpolated grid) alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, TransformerBlock
from monai.networks.nets.basic_unet import UpCat
from monai.networks.nets.resnet import ResNetBottleneck
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_denoiseg.networks.utils import crop_spatial, pad_to_multiple
from monai_denoiseg.utils.validation import check_spatial_ndim

__all__ = ["TransUNet", "TRANSUNET_PAPER_CONFIG"]

#: Keyword arguments close to the paper's R50-ViT-B/16 (ResNet-50 stages 1-3, ViT-Base); the
#: class defaults are a reduced version that trains on a CPU.
TRANSUNET_PAPER_CONFIG = {
    "encoder_channels": (64, 256, 512, 1024),
    "encoder_blocks": (3, 4, 9),
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "mlp_dim": 3072,
    "decoder_channels": (512, 256, 128, 64, 16),
}


def _stage(spatial_dims: int, in_ch: int, out_ch: int, blocks: int, act, norm) -> nn.Sequential:
    """A ResNet stage of bottleneck blocks (expansion 4); the first block halves the resolution."""
    shortcut = Convolution(spatial_dims, in_ch, out_ch, strides=2, kernel_size=1, act=None, norm=norm, bias=False)
    layers = [ResNetBottleneck(in_ch, out_ch // 4, spatial_dims, stride=2, downsample=shortcut, act=act, norm=norm)]
    layers += [ResNetBottleneck(out_ch, out_ch // 4, spatial_dims, act=act, norm=norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class TransUNet(nn.Module):
    """Hybrid CNN-Transformer UNet, (B, in_channels, *spatial) -> (B, out_channels, *spatial) logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits, no activation).
        img_size: training input size (int or per-axis); sizes the positional embedding and must be
            a multiple of the total stride ``2**len(encoder_channels)``.
        encoder_channels: CNN widths, one per halving of the resolution: the stem conv, then one
            bottleneck stage each (stage widths must be multiples of 4).
        encoder_blocks: bottleneck blocks per stage (an int for all, or one per stage).
        hidden_size, num_layers, num_heads, mlp_dim: the Transformer (ViT) bottleneck.
        decoder_channels: the conv after the Transformer, then one width per upsampling
            (``len(encoder_channels) + 1`` values).
        dropout_rate: dropout after the positional embedding and inside the Transformer.
        act, norm: activation and normalisation of the CNN parts (MONAI factory names or tuples).
        qkv_bias: bias of the attention projections (True in ViT).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        img_size: int | Sequence[int] = 256,
        encoder_channels: Sequence[int] = (32, 64, 128, 256),
        encoder_blocks: int | Sequence[int] = 1,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 8,
        mlp_dim: int = 1024,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout_rate: float = 0.0,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        levels = len(encoder_channels)
        if levels < 1 or len(decoder_channels) != levels + 1:
            raise ValueError(
                f"decoder_channels: expected len(encoder_channels) + 1 = {levels + 1} values, "
                f"got {tuple(decoder_channels)}."
            )
        if any(c % ResNetBottleneck.expansion for c in encoder_channels[1:]):
            raise ValueError(
                f"encoder_channels: stage widths (after the first) must be multiples of 4, "
                f"got {tuple(encoder_channels)}."
            )
        blocks = ensure_tuple_rep(encoder_blocks, levels - 1)
        img_size = ensure_tuple_rep(img_size, spatial_dims)
        self.spatial_dims = spatial_dims
        self.multiple = 2**levels  # total stride; read by JointDenoiSegNet to pad all stages alike
        if any(s % self.multiple for s in img_size):
            raise ValueError(f"img_size: expected multiples of the total stride {self.multiple}, got {img_size}.")

        stem = Convolution(
            spatial_dims, in_channels, encoder_channels[0], strides=2, kernel_size=7, act=act, norm=norm, bias=False
        )
        self.encoder = nn.ModuleList(
            [stem]
            + [
                _stage(spatial_dims, encoder_channels[i - 1], encoder_channels[i], blocks[i - 1], act, norm)
                for i in range(1, levels)
            ]
        )
        self.embed = Convolution(spatial_dims, encoder_channels[-1], hidden_size, kernel_size=1, conv_only=True)
        grid = tuple(s // self.multiple for s in img_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, hidden_size, *grid))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.dropout = nn.Dropout(dropout_rate)
        self.transformer = nn.Sequential(
            *(
                TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=qkv_bias)
                for _ in range(num_layers)
            )
        )
        self.transformer_norm = nn.LayerNorm(hidden_size)
        self.conv_more = Convolution(spatial_dims, hidden_size, decoder_channels[0], act=act, norm=norm, bias=False)
        skip_channels = list(encoder_channels[-2::-1]) + [0]  # deepest skip first, none at full resolution
        self.decoder = nn.ModuleList(
            UpCat(
                spatial_dims, decoder_channels[j], skip_channels[j], decoder_channels[j + 1], act, norm, bias=False,
                upsample="nontrainable", pre_conv=None, interp_mode="linear", align_corners=True, is_pad=False,
            )
            for j in range(levels)
        )
        self.head = Convolution(spatial_dims, decoder_channels[-1], out_channels, conv_only=True)

    def positional_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """The learned embedding, resized (bi/tri)linearly to a token grid other than the training one."""
        pos = self.position_embedding
        if tuple(pos.shape[2:]) != tuple(grid):
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            pos = F.interpolate(pos, size=tuple(grid), mode=mode, align_corners=False)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_ndim(x, self.spatial_dims, key="input", extra_dims=2)
        shape = x.shape[2:]
        x = pad_to_multiple(x, self.multiple)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips = skips[-2::-1] + [None]  # the deepest feature map feeds the Transformer, not a skip

        x = self.embed(x)
        grid = x.shape[2:]
        tokens = self.dropout(x + self.positional_embedding(grid)).flatten(2).transpose(1, 2)  # (B, N, hidden)
        tokens = self.transformer_norm(self.transformer(tokens))
        x = tokens.transpose(1, 2).reshape(x.shape)

        x = self.conv_more(x)
        for up, skip in zip(self.decoder, skips):
            x = up(x, skip)
        return crop_spatial(self.head(x), shape)
