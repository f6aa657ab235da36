"""Backbones: DnCNN, RIDNet, TransUNet and the N2V UNets (2-D/3-D, any size, residuals, sizes, training)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_denoiseg.networks.nets.dncnn import DnCNN
from monai_denoiseg.networks.nets.n2v_unet import InputResidual, n2v_denoiser_unet, n2v_segmenter_unet
from monai_denoiseg.networks.nets.ridnet import RIDNet
from monai_denoiseg.networks.nets.transunet import TRANSUNET_PAPER_CONFIG, TransUNet

TINY_TRANSUNET = dict(
    encoder_channels=(8, 16, 32), encoder_blocks=1, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
    decoder_channels=(32, 16, 8, 8),
)
TINY_UNET = (4, 8, 8, 16, 16, 4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is shared: two intra-op threads on two busy cores stall ~10x, one does not."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def conv_params(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
    """Parameters of a k x k 2-D convolution."""
    return k * k * c_in * c_out + (c_out if bias else 0)


# (name, factory(spatial_dims, in_channels, out_channels), same input/output channels only)
SMALL_NETS = [
    ("dncnn", lambda d, i, o: DnCNN(d, i, o, num_layers=5, features=8)),
    ("ridnet", lambda d, i, o: RIDNet(d, i, o, features=8, num_blocks=2, reduction=4)),
    ("transunet", lambda d, i, o: TransUNet(d, i, o, img_size=32, **TINY_TRANSUNET)),
    ("n2v_denoiser", lambda d, i, o: n2v_denoiser_unet(d, i, features=TINY_UNET)),
    ("n2v_segmenter", lambda d, i, o: n2v_segmenter_unet(d, i, o, features=TINY_UNET)),
]
SEGMENTERS = {"transunet", "n2v_segmenter"}


@pytest.mark.parametrize("spatial_dims, shape", [(2, (40, 56)), (3, (16, 24, 20))])
@pytest.mark.parametrize("name, factory", SMALL_NETS, ids=[n for n, _ in SMALL_NETS])
def test_forward_backward_shape_dtype(name, factory, spatial_dims, shape):
    torch.manual_seed(0)
    out_channels = 3 if name in SEGMENTERS else 2
    net = factory(spatial_dims, 2, out_channels)
    x = torch.randn(2, 2, *shape, requires_grad=True)
    y = net(x)
    assert y.shape == (2, out_channels, *shape)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # MONAI's TransformerBlock always builds a cross-attention LayerNorm, unused without cross-attention
    unused = [n for n, p in net.named_parameters() if p.grad is None and "norm_cross_attn" not in n]
    assert unused == []


@pytest.mark.parametrize("name, factory", SMALL_NETS, ids=[n for n, _ in SMALL_NETS])
def test_odd_size_250(name, factory):
    """250 is not a multiple of 16: strided nets pad and crop back, the others need nothing."""
    net = factory(2, 1, 1).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 1, 250, 250))
    assert y.shape == (1, 1, 250, 250) and torch.isfinite(y).all()


def test_full_cremi_slice_1250():
    """A whole 1250x1250 CREMI-sized slice (the size that crashes the reference UNet)."""
    net = n2v_segmenter_unet(2, 1, 2, features=TINY_UNET).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 1, 1250, 1250))
    assert y.shape == (1, 2, 1250, 1250) and torch.isfinite(y).all()


def test_padding_crops_back_to_the_input_region():
    """Padded inference equals inference on the padded image restricted to the original pixels."""
    torch.manual_seed(0)
    net = n2v_segmenter_unet(2, 1, 1, features=TINY_UNET).eval()
    x = torch.rand(1, 1, 50, 70)
    padded = F.pad(x, (0, 10, 0, 14), mode="replicate")  # 64 x 80, multiples of 16
    with torch.no_grad():
        assert torch.allclose(net(x), net.net(padded)[..., :50, :70], atol=1e-6)


# ---------------------------------------------------------------------------- residual learning
@pytest.mark.parametrize("net_factory, last", [
    (lambda: DnCNN(2, 1, 1, num_layers=5, features=8), lambda n: n.body[-1].conv),
    (lambda: RIDNet(2, 1, 1, features=8, num_blocks=1, reduction=4), lambda n: n.tail.conv),
])
def test_zero_last_layer_gives_identity(net_factory, last):
    """DnCNN's ``input - noise`` and RIDNet's global skip: a zero last layer predicts no noise."""
    net = net_factory()
    nn.init.zeros_(last(net).weight)
    nn.init.zeros_(last(net).bias)
    x = torch.randn(2, 1, 24, 24)
    assert torch.equal(net(x), x)


def test_dncnn_subtracts_the_predicted_noise():
    torch.manual_seed(0)
    residual = DnCNN(2, 1, 1, num_layers=5, features=8).eval()
    plain = DnCNN(2, 1, 1, num_layers=5, features=8, residual=False).eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        assert torch.allclose(residual(x), x - plain(x), atol=1e-6)


def test_dncnn_layer_structure():
    """17 convolutions: Conv+ReLU, 15 x Conv+BN+ReLU, linear Conv (Zhang et al. 2017)."""
    net = DnCNN()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert (len(convs), len(bns), len(relus)) == (17, 15, 16)
    assert [c.out_channels for c in convs] == [64] * 16 + [1]


def test_n2v_denoiser_adds_its_input():
    torch.manual_seed(0)
    net = n2v_denoiser_unet(2, 1, features=TINY_UNET).eval()
    assert isinstance(net, InputResidual)
    x = torch.randn(2, 1, 50, 70)
    with torch.no_grad():
        inner = net.net(x)
        assert inner.abs().max() > 0
        assert torch.allclose(net(x) - x, inner, atol=1e-6)


@pytest.mark.parametrize("factory", [n2v_denoiser_unet, n2v_segmenter_unet])
def test_n2v_unets_batch_norm_before_every_leaky_relu(factory):
    """Record the order in which BN and LeakyReLU run: every activation is directly preceded by a BN."""
    net = factory(spatial_dims=2, features=TINY_UNET).eval()
    calls = []
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LeakyReLU, nn.ReLU, nn.PReLU)):
            m.register_forward_hook(lambda mod, inp, out: calls.append(type(mod).__name__))
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 32))
    assert len(calls) == 36  # 9 double-conv blocks of BasicUNet
    assert calls == ["BatchNorm2d", "LeakyReLU"] * 18
    assert all(m.negative_slope == 0.1 for m in net.modules() if isinstance(m, nn.LeakyReLU))


def test_n2v_segmenter_has_no_residual():
    net = n2v_segmenter_unet(2, 1, 3, features=TINY_UNET)
    assert not any(isinstance(m, InputResidual) for m in net.modules())
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------- TransUNet specifics
def test_transunet_other_sizes_interpolate_positional_embedding():
    torch.manual_seed(0)
    net = TransUNet(2, 1, 2, img_size=32, **TINY_TRANSUNET)
    assert net.position_embedding.shape == (1, 32, 4, 4)
    x = torch.randn(1, 1, 96, 72)  # grid 12 x 9 instead of 4 x 4
    y = net(x)
    assert y.shape == (1, 2, 96, 72)
    y.mean().backward()
    assert net.position_embedding.grad.abs().sum() > 0
    # on the training grid the embedding is used as is; elsewhere bilinear resizing of a constant is that constant
    assert net.positional_embedding((4, 4)) is net.position_embedding
    with torch.no_grad():
        net.position_embedding.fill_(0.5)
    assert torch.allclose(net.positional_embedding((12, 9)), torch.full((1, 32, 12, 9), 0.5))


def test_transunet_defaults_take_a_250_slice():
    """The joint net's input size: 250 is padded to 256, whose 16 x 16 grid is the training grid."""
    net = TransUNet(2, 1, 10).eval()
    assert net.position_embedding.shape[2:] == (16, 16)
    with torch.no_grad():
        y = net(torch.rand(1, 1, 250, 250))
    assert y.shape == (1, 10, 250, 250) and torch.isfinite(y).all()


def test_transunet_3d_non_default_size():
    net = TransUNet(3, 1, 2, img_size=(16, 32, 32), **TINY_TRANSUNET).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 20, 30, 44))
    assert y.shape == (1, 2, 20, 30, 44)


def test_transunet_paper_config_builds():
    """The R50-ViT-B/16-like configuration: ~105 M parameters (TransUNet reports 105.3 M)."""
    net = TransUNet(2, 1, 10, img_size=256, **TRANSUNET_PAPER_CONFIG)
    assert len(net.transformer) == 12 and net.position_embedding.shape == (1, 768, 16, 16)
    assert abs(n_params(net) - 105.3e6) / 105.3e6 < 0.02


# ---------------------------------------------------------------------------- parameter counts
def test_dncnn_parameter_count():
    """Closed form: first conv with bias, 15 bias-free convs each with BN (2 x 64), last conv with bias."""
    expected = conv_params(3, 1, 64) + 15 * (conv_params(3, 64, 64, bias=False) + 2 * 64) + conv_params(3, 64, 1)
    assert n_params(DnCNN()) == expected == 556_097
    assert abs(expected - 0.56e6) / 0.56e6 < 0.01  # reference figure: 0.56 M


def test_ridnet_parameter_count():
    """Closed form of the 4-EAM, 128-channel RIDNet; reference figure 5.98 M."""
    c, r = 128, 128 // 16
    merge_and_run = 4 * conv_params(3, c, c) + conv_params(3, 2 * c, c)
    residual = 2 * conv_params(3, c, c)
    enhanced = 2 * conv_params(3, c, c) + conv_params(1, c, c)
    attention = (c * r + r) + (r * c + c)
    expected = conv_params(3, 1, c) + 4 * (merge_and_run + residual + enhanced + attention) + conv_params(3, c, 1)
    assert n_params(RIDNet()) == expected
    assert abs(expected - 5.98e6) / 5.98e6 < 0.001
    # the original RIDNet (64 channels, RGB) has about 1.5 M parameters
    assert abs(n_params(RIDNet(2, 3, 3, features=64)) - 1.5e6) / 1.5e6 < 0.01


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, factory", SMALL_NETS[:3], ids=[n for n, _ in SMALL_NETS[:3]])
def test_wrong_dimensionality_raises(name, factory):
    with pytest.raises(ValueError, match=r"input: expected a 2-D array shaped \(B, C, H, W\)"):
        factory(2, 1, 1)(torch.randn(1, 1, 8, 32, 32))


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="out_channels"):
        DnCNN(2, 1, 2)
    with pytest.raises(ValueError, match="out_channels"):
        RIDNet(2, 1, 3)
    with pytest.raises(ValueError, match="img_size"):
        TransUNet(2, 1, 1, img_size=250)
    with pytest.raises(ValueError, match="decoder_channels"):
        TransUNet(2, 1, 1, encoder_channels=(8, 16), decoder_channels=(8, 8))
    with pytest.raises(ValueError, match="encoder_channels"):
        TransUNet(2, 1, 1, img_size=32, encoder_channels=(8, 18, 32), decoder_channels=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="output"):
        InputResidual(nn.Conv2d(1, 2, 1))(torch.randn(1, 1, 8, 8))


# ---------------------------------------------------------------------------- training sanity
def test_dncnn_learns_to_denoise_real_em(medulla, rng):
    """A few Adam steps on real FIB-SEM slices plus Gaussian noise bring the MSE below that of the noisy input."""
    raw, _ = medulla
    clean = torch.as_tensor(raw[:4, None, :64, :64], dtype=torch.float32) / 255.0
    noisy = clean + torch.as_tensor(rng.normal(0.0, 0.1, clean.shape), dtype=torch.float32)
    torch.manual_seed(0)
    net = DnCNN(2, 1, 1, num_layers=6, features=16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.mse_loss(net(noisy), clean)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    noisy_mse = F.mse_loss(noisy, clean).item()
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] < 0.7 * noisy_mse
