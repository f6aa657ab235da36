"""The UNets of Wang et al., MICCAI 2024: the plain denoiser/segmenter and the IEM fusion net.

:class:`ReferenceUNet` is the UNet of the reference implementation, generalised to 2-D/3-D and
any depth: per level [Conv3-Norm-Act] x 2, 2x max-pooling; a bottleneck
Conv(f[-2] -> f[-1]) - Conv(f[-1] -> f[-2]) - ConvTranspose(stride 2); decoder blocks
concat(upsampled, skip) - Conv - Conv - ConvTranspose; a head Conv(2 f[0] -> f[0]) - Conv(-> out)
with a linear output (no residual, no sigmoid: the segmenter's sigmoid is applied by the caller).
With the default ``features=(32, 64, 128, 256)`` it has 3 poolings, so the input sides must be
multiples of 8 (``self.multiple``; wrap it in :class:`~monai_denoiseg.networks.utils.PadToMultiple`
for other sizes). MONAI's :class:`~monai.networks.nets.BasicUNet` cannot express it (4 poolings,
upsampling before the convolutions), so it is assembled from MONAI's ``Convolution``/``TwoConv``.

:class:`IEMFusionUNet` is the same trunk (same parameter names, so a pretrained ReferenceUNet
loads into it with ``strict=False``) plus an affinity encoder (per level [Conv-Norm-Act] x 2 then
2x max-pooling, widths = the image encoder's) and an
:class:`~monai_denoiseg.networks.blocks.iem.InstanceAwareEmbedding` after the pooling of each
level in ``iem_levels`` (default 2 and 3: 1/4 and 1/8 resolution, 64 and 128 channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from monai_denoiseg.networks.blocks.iem import InstanceAwareEmbedding
from monai_denoiseg.utils.validation import check_spatial_ndim

__all__ = ["ReferenceUNet", "IEMFusionUNet"]


class ReferenceUNet(nn.Module):
    """UNet denoiser/segmenter of the reference code (3 poolings, 32-64-128, bottleneck 256 by default).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (1 for a denoiser, the number of affinity offsets for a segmenter).
        features: encoder widths followed by the bottleneck width; ``len(features) - 1`` poolings.
        act: activation, a name or (name, kwargs) for MONAI's factory.
        norm: normalisation, a name or (name, kwargs).
        bias: convolution bias.
        dropout: dropout after each convolution block's normalisation.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims}.")
        f = tuple(int(c) for c in features)
        if len(f) < 2:
            raise ValueError(f"features: expected at least 2 widths (encoder..., bottleneck), got {features!r}.")
        self.spatial_dims = spatial_dims
        self.features = f
        self.multiple = 2 ** (len(f) - 1)
        cfg = dict(act=act, norm=norm, bias=bias, dropout=dropout)

        def conv(cin, cout, **kw):
            return Convolution(spatial_dims, cin, cout, kernel_size=3, **{**cfg, **kw})

        def up(cin, cout):  # ConvTranspose(3, stride 2, padding 1, output_padding 1) + Norm + Act
            return conv(cin, cout, strides=2, is_transposed=True)

        self.encoder = nn.ModuleList(
            TwoConv(spatial_dims, cin, cout, act, norm, bias, dropout) for cin, cout in zip((in_channels,) + f, f[:-1])
        )
        self.pool = Pool["MAX", spatial_dims](kernel_size=2)
        self.bottleneck = nn.Sequential(conv(f[-2], f[-1]), conv(f[-1], f[-2]), up(f[-2], f[-2]))
        self.decoder = nn.ModuleList(  # deepest first: concat(up f[i], skip f[i]) -> f[i] -> up to f[i-1]
            nn.Sequential(TwoConv(spatial_dims, 2 * f[i], f[i], act, norm, bias, dropout), up(f[i], f[i - 1]))
            for i in range(len(f) - 2, 0, -1)
        )
        self.head = nn.Sequential(conv(2 * f[0], f[0]), conv(f[0], out_channels, conv_only=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._decode(*self._encode(x))

    def _check_input(self, x: torch.Tensor, key: str = "image") -> None:
        check_spatial_ndim(x, self.spatial_dims, key=key, extra_dims=2)
        if any(s % self.multiple for s in x.shape[2:]):
            raise ValueError(
                f"{key}: expected spatial sides divisible by {self.multiple} ({len(self.features) - 1} poolings), "
                f"got shape {tuple(x.shape)}; wrap the network in PadToMultiple(net, {self.multiple})."
            )

    def _encode(self, x: torch.Tensor, guides: dict[int, torch.Tensor] | None = None):
        """Run the encoder; after the pooling of level ``l`` (resolution 1/2^l) call :meth:`_fuse`."""
        skips = []
        for level, block in enumerate(self.encoder, start=1):
            skips.append(block(x))
            x = self._fuse(level, self.pool(skips[-1]), guides)
        return x, skips

    def _fuse(self, level: int, x: torch.Tensor, guides: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """Hook for subclasses that inject guidance features; the plain UNet passes ``x`` through."""
        return x

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips[1:])):
            x = block(torch.cat((x, skip), dim=1))
        return self.head(torch.cat((x, skips[0]), dim=1))


class IEMFusionUNet(ReferenceUNet):
    """Fusion network of Wang et al. (MICCAI 2024): ReferenceUNet + affinity encoder + IEMs.

    ``forward(image, affinity)`` returns the final image I_f. ``affinity`` is the segmenter's
    (B, affinity_channels, *spatial) output, probabilities in the reference (see JointDenoiSegNet).
    ``forward(image, attend=False)`` bypasses every IEM (F_o = F_i): the plain trunk, no affinity.

    Args:
        spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout: as ReferenceUNet.
        affinity_channels: channels of the affinity map (number of offsets; 10 in the paper).
        iem_levels: encoder levels l (1-based, resolution 1/2^l) that get an IEM; ``()`` gives the
            plain UNet. Default (2, 3) as in the paper.
        num_heads, attention_mode, window_size, chunk_size, layer_norm: passed to every IEM
            (``attention_mode`` is its ``mode``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        affinity_channels: int = 10,
        features: Sequence[int] = (32, 64, 128, 256),
        iem_levels: Sequence[int] = (2, 3),
        num_heads: int = 4,
        attention_mode: str = "spatial",
        window_size: int | Sequence[int] | None = None,
        chunk_size: int | None = None,
        layer_norm: bool = False,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout)
        n_levels = len(self.features) - 1
        levels = tuple(sorted({int(v) for v in iem_levels}))
        if any(not 1 <= v <= n_levels for v in levels):
            raise ValueError(f"iem_levels: expected levels in 1..{n_levels} (one per pooling), got {iem_levels!r}.")
        self.iem_levels = levels
        self.affinity_channels = affinity_channels
        depth = max(levels, default=0)
        self.affinity_encoder = nn.ModuleList(
            nn.Sequential(
                TwoConv(spatial_dims, cin, cout, act, norm, bias, dropout), Pool["MAX", spatial_dims](kernel_size=2)
            )
            for cin, cout in zip((affinity_channels,) + self.features, self.features[:depth])
        )
        self.iem = nn.ModuleDict(
            {
                str(v): InstanceAwareEmbedding(
                    spatial_dims, self.features[v - 1], num_heads, attention_mode, window_size, chunk_size,
                    layer_norm,
                )
                for v in levels
            }
        )

    def forward(self, image: torch.Tensor, affinity: torch.Tensor | None = None, attend: bool = True) -> torch.Tensor:
        """The final image from ``image`` guided by ``affinity`` through the IEMs.

        ``attend=False`` removes the attention and leaves the rest as is: every IEM passes the image
        features through unchanged (F_o = F_i), so the result is the plain UNet trunk on ``image``
        (what a :class:`ReferenceUNet` with the same weights returns) and ``affinity`` is neither
        needed nor read (the IEM control of issue 14).
        """
        self._check_input(image, "image")
        guides = None
        if attend and self.iem_levels:
            self._check_affinity(image, affinity)
            guides, x = {}, affinity
            for level, stage in enumerate(self.affinity_encoder, start=1):
                x = guides[level] = stage(x)
        return self._decode(*self._encode(image, guides))

    def _check_affinity(self, image: torch.Tensor, affinity: torch.Tensor | None) -> None:
        if affinity is None:
            raise ValueError(f"affinity: required by the IEMs at levels {self.iem_levels}, got None.")
        if affinity.shape[0] != image.shape[0] or affinity.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"affinity: expected batch and spatial shape of 'image' {tuple(image.shape)}, "
                f"got shape {tuple(affinity.shape)}."
            )
        if affinity.shape[1] != self.affinity_channels:
            raise ValueError(
                f"affinity: expected {self.affinity_channels} channels, got shape {tuple(affinity.shape)}."
            )

    def _fuse(self, level, x, guides):
        """IEM at the levels that have one; ``guides=None`` (``attend=False``) bypasses them: F_o = F_i."""
        key = str(level)
        return self.iem[key](guides[level], x) if guides is not None and key in self.iem else x
