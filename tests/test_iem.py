"""InstanceAwareEmbedding against explicit per-sample, per-head attention written out in the test."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from monai_denoiseg.networks.blocks.iem import InstanceAwareEmbedding


def _projections(m: InstanceAwareEmbedding, s_tok: torch.Tensor, i_tok: torch.Tensor):
    """Token projections with the block's weights, (L, C) each."""
    c = m.channels
    wk, wv = m.kv_proj.weight[:c], m.kv_proj.weight[c:]
    bk, bv = m.kv_proj.bias[:c], m.kv_proj.bias[c:]
    return s_tok @ m.q_proj.weight.T + m.q_proj.bias, i_tok @ wk.T + bk, i_tok @ wv.T + bv


def explicit_attention(m: InstanceAwareEmbedding, fs: torch.Tensor, fi: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V for each sample and head separately, tokens = pixels of one sample."""
    c, h = m.channels, m.num_heads
    d = c // h
    out = torch.empty_like(fi)
    for b in range(fi.shape[0]):
        q, k, v = _projections(m, fs[b].reshape(c, -1).T, fi[b].reshape(c, -1).T)
        heads = []
        for j in range(h):
            sl = slice(j * d, (j + 1) * d)
            scores = q[:, sl] @ k[:, sl].T / math.sqrt(d)
            heads.append(torch.softmax(scores, dim=-1) @ v[:, sl])
        o = torch.cat(heads, dim=1) @ m.out_proj.weight.T + m.out_proj.bias
        out[b] = o.T.reshape(fi.shape[1:])
    return out


def explicit_channel_attention(m: InstanceAwareEmbedding, fs: torch.Tensor, fi: torch.Tensor) -> torch.Tensor:
    """Restormer transposed attention: per head softmax(t * q_n^T k_n) (d x d), q/k L2-normalised over pixels."""
    c, h = m.channels, m.num_heads
    d = c // h
    out = torch.empty_like(fi)
    for b in range(fi.shape[0]):
        q, k, v = _projections(m, fs[b].reshape(c, -1).T, fi[b].reshape(c, -1).T)
        heads = []
        for j in range(h):
            sl = slice(j * d, (j + 1) * d)
            qn = q[:, sl] / q[:, sl].norm(dim=0, keepdim=True)
            kn = k[:, sl] / k[:, sl].norm(dim=0, keepdim=True)
            a = torch.softmax(m.temperature[j, 0, 0] * (qn.T @ kn), dim=-1)  # (d, d)
            heads.append((a @ v[:, sl].T).T)
        o = torch.cat(heads, dim=1) @ m.out_proj.weight.T + m.out_proj.bias
        out[b] = o.T.reshape(fi.shape[1:])
    return out


def _inputs(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _block(spatial_dims, channels=16, heads=4, **kw):
    torch.manual_seed(1)
    return InstanceAwareEmbedding(spatial_dims, channels, heads, **kw).double().eval()


SHAPES = [(2, (3, 16, 9, 11)), (3, (2, 16, 4, 5, 6))]


@pytest.mark.parametrize("spatial_dims,shape", SHAPES)
def test_spatial_equals_explicit_attention_and_residual(spatial_dims, shape):
    m = _block(spatial_dims)
    fs, fi = _inputs(shape)
    ref = explicit_attention(m, fs, fi)
    torch.testing.assert_close(m.attention(fs, fi), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(fs, fi), torch.relu(ref) + fi, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spatial_dims,shape", SHAPES)
def test_spatial_equals_torch_multihead_attention(spatial_dims, shape):
    m = _block(spatial_dims)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    with torch.no_grad():  # torch packs q, k, v in one in_proj; ours packs k, v together
        mha.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.kv_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([m.q_proj.bias, m.kv_proj.bias]))
        mha.out_proj.load_state_dict(m.out_proj.state_dict())
    fs, fi = _inputs(shape)
    tok = lambda x: x.flatten(2).transpose(1, 2)  # (B, HW, C)
    ref = mha(tok(fs), tok(fi), tok(fi), need_weights=False)[0].transpose(1, 2).reshape(shape)
    torch.testing.assert_close(m.attention(fs, fi), ref, rtol=1e-10, atol=1e-10)


def test_reference_batch_first_misuse_ignores_affinities_but_ours_does_not():
    """The reference fed (HW, B, C) to a batch_first MHA: at batch size 1 it is out_proj(v_proj(F_i))."""
    m = _block(2)
    fs, fi = _inputs((1, 16, 8, 8))
    fs2 = _inputs((1, 16, 8, 8), seed=5)[0]
    c = m.channels
    collapsed = (fi.flatten(2).transpose(1, 2) @ m.kv_proj.weight[c:].T + m.kv_proj.bias[c:]) @ m.out_proj.weight.T
    collapsed = (collapsed + m.out_proj.bias).transpose(1, 2).reshape(fi.shape)

    buggy = torch.nn.MultiheadAttention(16, 4, batch_first=True).double()
    with torch.no_grad():
        buggy.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.kv_proj.weight]))
        buggy.in_proj_bias.copy_(torch.cat([m.q_proj.bias, m.kv_proj.bias]))
        buggy.out_proj.load_state_dict(m.out_proj.state_dict())
    seq_first = lambda x: x.flatten(2).permute(2, 0, 1)  # (HW, B, C) into a batch_first module
    bug = lambda s: buggy(seq_first(s), seq_first(fi), seq_first(fi))[0].permute(1, 2, 0).reshape(fi.shape)
    torch.testing.assert_close(bug(fs), collapsed)  # the failure mode: no dependence on F_s at all
    torch.testing.assert_close(bug(fs2), collapsed)

    ours = m.attention(fs, fi)
    assert (ours - collapsed).abs().max() > 1e-2
    assert (m.attention(fs2, fi) - ours).abs().max() > 1e-2


@pytest.mark.parametrize("mode,kw", [("spatial", {}), ("window", {"window_size": 3}), ("channel", {})])
def test_batch_independence(mode, kw):
    m = _block(2, mode=mode, **kw)
    fs, fi = _inputs((4, 16, 7, 9))
    gs, gi = _inputs((4, 16, 7, 9), seed=3)
    gs[1], gi[1] = fs[1], fi[1]  # sample 1 is shared, the others change
    torch.testing.assert_close(m(fs, fi)[1], m(gs, gi)[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(m(fs[1:2], fi[1:2])[0], m(fs, fi)[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,kw", [("spatial", {}), ("window", {"window_size": (4, 5)})])
def test_chunked_equals_unchunked(mode, kw):
    fs, fi = _inputs((2, 16, 10, 13))
    whole = _block(2, mode=mode, **kw)
    chunked = _block(2, mode=mode, chunk_size=7, **kw)
    torch.testing.assert_close(chunked(fs, fi), whole(fs, fi), rtol=1e-12, atol=1e-12)
    with sdpa_kernel(SDPBackend.MATH):  # the chunked path is what bounds memory on the math kernel
        torch.testing.assert_close(chunked(fs, fi), whole(fs, fi), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "spatial_dims,shape,window",
    [
        (2, (2, 16, 9, 10), (4, 5)),  # padded borders
        (2, (1, 16, 8, 8), (4, 4)),  # exact tiling
        (3, (2, 16, 5, 6, 7), (2, 4, 3)),
        (2, (1, 16, 3, 5), (8, 8)),  # window larger than the map
    ],
)
def test_window_equals_independent_attention_per_window(spatial_dims, shape, window):
    """Each window (edge windows cropped to the feature map, no padding) attends only within itself."""
    m = _block(spatial_dims, mode="window", window_size=window)
    fs, fi = _inputs(shape)
    ref = torch.empty_like(fi)
    starts = [range(0, s, w) for s, w in zip(shape[2:], window)]
    for corner in itertools.product(*starts):
        sl = (slice(None), slice(None)) + tuple(slice(c, c + w) for c, w in zip(corner, window))
        ref[sl] = explicit_attention(m, fs[sl].contiguous(), fi[sl].contiguous())
    torch.testing.assert_close(m.attention(fs, fi), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spatial_dims,shape", SHAPES)
def test_channel_mode_equals_restormer_formula(spatial_dims, shape):
    m = _block(spatial_dims, mode="channel")
    with torch.no_grad():
        m.temperature.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1))
    fs, fi = _inputs(shape)
    torch.testing.assert_close(m.attention(fs, fi), explicit_channel_attention(m, fs, fi), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "mode,kw", [("spatial", {}), ("spatial", {"layer_norm": True}), ("window", {"window_size": 4}), ("channel", {})]
)
@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 32, 12, 10)), (3, (1, 32, 6, 8, 5))])
def test_forward_backward_shapes_dtypes(mode, kw, spatial_dims, shape):
    torch.manual_seed(0)
    m = InstanceAwareEmbedding(spatial_dims, 32, num_heads=4, mode=mode, **kw)
    fs = torch.randn(shape, requires_grad=True)
    fi = torch.randn(shape, requires_grad=True)
    out = m(fs, fi)
    assert out.shape == shape and out.dtype == torch.float32
    out.square().mean().backward()
    assert fs.grad.abs().sum() > 0 and fi.grad.abs().sum() > 0  # queries and keys/values both matter
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(fs, fi).shape == shape


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads"):
        InstanceAwareEmbedding(2, 30, num_heads=4)
    with pytest.raises(ValueError, match="mode"):
        InstanceAwareEmbedding(2, 16, mode="global")
    with pytest.raises(ValueError, match="window_size"):
        InstanceAwareEmbedding(2, 16, mode="window")
    m = InstanceAwareEmbedding(2, 16)
    with pytest.raises(ValueError, match=r"semantic.*\(1, 16, 4, 5\)"):
        m(torch.zeros(1, 16, 4, 5), torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match=r"image.*\(1, 16, 4\)"):
        m(torch.zeros(1, 16, 4), torch.zeros(1, 16, 4))
