"""Instance-aware Embedding Module (IEM) of Wang et al., MICCAI 2024 (section 2.2, Eq. 1-2).

    F   = MultiHeadAttention(Q = F_s, K = F_i, V = F_i)
    F_o = ReLU(F) + F_i

``F_s`` are features of the predicted affinity map, ``F_i`` image features of the same shape
(B, C, *spatial). Tokens are the pixels (voxels) of *one* sample: samples of a batch never
attend to each other (the reference code attended across the batch, see docs/networks_joint.md).

Three attention modes:

- ``"spatial"``: every pixel attends to every pixel of its sample (the paper). Uses
  :func:`torch.nn.functional.scaled_dot_product_attention`, whose fused kernels (flash on CPU and
  CUDA, memory-efficient on CUDA) keep memory linear in the number of tokens; ``chunk_size``
  additionally splits the queries so that even the plain math kernel never holds more than
  ``chunk_size x L`` scores per head.
- ``"window"``: non-overlapping windows of ``window_size`` pixels attend within their window
  (Swin-style local attention, for large 3-D inputs). Borders are zero-padded and the padded keys
  masked out, so any feature size works.
- ``"channel"``: transposed attention over channels (Restormer, Zamir et al., CVPR 2022): per head
  a (C/h x C/h) matrix from L2-normalised queries and keys with a learnable temperature.

Projections are ``nn.Linear`` layers acting on each token, as in :class:`torch.nn.MultiheadAttention`
(``q_proj`` and a fused ``kv_proj`` = its ``in_proj``, ``out_proj``). No LayerNorm, feed-forward or
positional encoding by default, as in the reference; ``layer_norm=True`` normalises both inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_denoiseg.utils.validation import check_spatial_ndim

__all__ = ["InstanceAwareEmbedding", "IEM_MODES"]

IEM_MODES = ("spatial", "window", "channel")


class InstanceAwareEmbedding(nn.Module):
    """Fuse image features with affinity (instance-structure) features by cross-attention.

    Args:
        spatial_dims: 2 or 3.
        channels: channels C of both inputs (the attention width).
        num_heads: attention heads; ``channels`` must be divisible by it (reference: 4).
        mode: ``"spatial"`` (paper), ``"window"`` or ``"channel"``.
        window_size: window side(s) for ``mode="window"``; a window larger than the feature map is
            clipped to it.
        chunk_size: if set, queries are processed ``chunk_size`` tokens at a time (spatial/window
            modes), bounding memory when SDPA falls back to its math kernel.
        layer_norm: apply a LayerNorm to both inputs (per token) before the projections.
        dropout: dropout on the attention weights, training only.
        bias: bias of the projections.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_heads: int = 4,
        mode: str = "spatial",
        window_size: int | Sequence[int] | None = None,
        chunk_size: int | None = None,
        layer_norm: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims}.")
        if channels % num_heads:
            raise ValueError(f"channels: expected a multiple of num_heads={num_heads}, got {channels}.")
        if mode not in IEM_MODES:
            raise ValueError(f"mode: expected one of {IEM_MODES}, got {mode!r}.")
        if mode == "window" and window_size is None:
            raise ValueError("window_size: required for mode='window', got None.")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size}.")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.num_heads = num_heads
        self.mode = mode
        self.window_size = None if window_size is None else ensure_tuple_rep(window_size, spatial_dims)
        self.chunk_size = chunk_size
        self.dropout = dropout
        self.norm_s = nn.LayerNorm(channels) if layer_norm else nn.Identity()
        self.norm_i = nn.LayerNorm(channels) if layer_norm else nn.Identity()
        self.q_proj = nn.Linear(channels, channels, bias=bias)
        self.kv_proj = nn.Linear(channels, 2 * channels, bias=bias)
        self.out_proj = nn.Linear(channels, channels, bias=bias)
        # Restormer's per-head temperature (only used in channel mode)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1)) if mode == "channel" else None

    def forward(self, semantic: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """``semantic`` = F_s (queries), ``image`` = F_i (keys, values, residual); both (B, C, *spatial)."""
        check_spatial_ndim(image, self.spatial_dims, key="image", extra_dims=2)
        if semantic.shape != image.shape or image.shape[1] != self.channels:
            raise ValueError(
                f"semantic: expected the shape of 'image' with {self.channels} channels, "
                f"got semantic {tuple(semantic.shape)} and image {tuple(image.shape)}."
            )
        return F.relu(self.attention(semantic, image)) + image

    def attention(self, semantic: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """F = MHA(F_s, F_i, F_i) in the chosen mode, (B, C, *spatial) -> (B, C, *spatial)."""
        spatial = image.shape[2:]
        window = self._window(spatial)
        qs, kvs = self._tokens(semantic, window), self._tokens(image, window)  # (N, L, C)
        q = self._heads(self.q_proj(self.norm_s(qs)))
        k, v = (self._heads(t) for t in self.kv_proj(self.norm_i(kvs)).chunk(2, dim=-1))  # (N, h, L, d)
        if self.mode == "channel":
            out = self._channel_attention(q, k, v)
        else:
            mask = None
            if window is not None and any(s % w for s, w in zip(spatial, window)):
                valid = self._tokens(image.new_ones((1, 1) + tuple(spatial)), window)[..., 0] > 0  # (nW, L)
                mask = valid.repeat(image.shape[0], 1)[:, None, None, :]
            out = self._spatial_attention(q, k, v, mask)
        out = self.out_proj(out.transpose(1, 2).flatten(2))  # (N, L, C)
        return self._untokens(out, image.shape, window)

    # -- attention kernels -------------------------------------------------------------------
    def _spatial_attention(self, q, k, v, mask):
        """softmax(q k^T / sqrt(d)) v over tokens, optionally chunked over the queries."""
        p = self.dropout if self.training else 0.0
        step = self.chunk_size or q.shape[2]
        chunks = [
            F.scaled_dot_product_attention(q[:, :, i : i + step], k, v, attn_mask=mask, dropout_p=p)
            for i in range(0, q.shape[2], step)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)

    def _channel_attention(self, q, k, v):
        """Restormer transposed attention: a (d x d) matrix per head from L2-normalised q, k over tokens."""
        q, k, v = (t.transpose(-2, -1) for t in (q, k, v))  # (N, h, d, L)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * self.temperature
        attn = F.dropout(attn.softmax(dim=-1), self.dropout, self.training)
        return (attn @ v).transpose(-2, -1)  # (N, h, L, d)

    # -- layout helpers ----------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, C) -> (N, h, L, C/h)."""
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, -1).transpose(1, 2)

    def _window(self, spatial: Sequence[int]) -> tuple[int, ...] | None:
        if self.mode != "window":
            return None
        return tuple(min(w, s) for w, s in zip(self.window_size, spatial))

    @staticmethod
    def _tokens(x: torch.Tensor, window: tuple[int, ...] | None) -> torch.Tensor:
        """(B, C, *S) -> (B, prod(S), C), or with windows (B * n_windows, prod(window), C), zero-padded."""
        if window is None:
            return x.flatten(2).transpose(1, 2)
        b, c, *spatial = x.shape
        pads = [(-s) % w for s, w in zip(spatial, window)]
        x = F.pad(x, [p for e in reversed(pads) for p in (0, e)])
        counts = [(s + p) // w for s, p, w in zip(spatial, pads, window)]
        nd = len(window)
        x = x.reshape(b, c, *[v for n, w in zip(counts, window) for v in (n, w)])
        # (B, C, n1, w1, n2, w2, ...) -> (B, n1, n2, ..., w1, w2, ..., C)
        x = x.permute(0, *range(2, 2 + 2 * nd, 2), *range(3, 3 + 2 * nd, 2), 1)
        return x.reshape(b * math.prod(counts), math.prod(window), c)

    @staticmethod
    def _untokens(x: torch.Tensor, shape: torch.Size, window: tuple[int, ...] | None) -> torch.Tensor:
        """Inverse of :meth:`_tokens` (crops the window padding)."""
        b, c, *spatial = shape
        if window is None:
            return x.transpose(1, 2).reshape(shape)
        nd = len(window)
        counts = [-(-s // w) for s, w in zip(spatial, window)]
        x = x.reshape(b, *counts, *window, c)
        # (B, n1, n2, ..., w1, w2, ..., C) -> (B, C, n1, w1, n2, w2, ...)
        x = x.permute(0, 2 * nd + 1, *[v for i in range(nd) for v in (1 + i, 1 + nd + i)])
        x = x.reshape(b, c, *[n * w for n, w in zip(counts, window)])
        return x[(Ellipsis,) + tuple(slice(0, s) for s in spatial)]
