"""ReferenceUNet, IEMFusionUNet and JointDenoiSegNet against a plain PyTorch transcription of the
reference architecture (reference notes, section 1), plus the checks the paper's claims rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from monai_denoiseg.networks import GUIDANCE as EXPORTED_GUIDANCE
from monai_denoiseg.networks.nets.fusion_unet import IEMFusionUNet, ReferenceUNet
from monai_denoiseg.networks.nets.joint import GUIDANCE, JointDenoiSegNet, paper_joint_net
from monai_denoiseg.networks.utils import crop_spatial, pad_to_multiple

SMALL = dict(features=(4, 8, 16, 32))


# -- a plain transcription of the reference 2-D UNet and fusion net (with the attention over pixels) ----
def _cbr(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def _up(cin, cout):
    return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class PlainUNet2D(nn.Module):
    def __init__(self, cin=1, cout=1, affinity=0):
        super().__init__()
        seq = lambda *parts: nn.Sequential(*[m for p in parts for m in p])
        self.enc1 = seq(_cbr(cin, 32), _cbr(32, 32))
        self.enc2 = seq(_cbr(32, 64), _cbr(64, 64))
        self.enc3 = seq(_cbr(64, 128), _cbr(128, 128))
        self.bottleneck = seq(_cbr(128, 256), _cbr(256, 128), _up(128, 128))
        self.dec3 = seq(_cbr(256, 128), _cbr(128, 128), _up(128, 64))
        self.dec2 = seq(_cbr(128, 64), _cbr(64, 64), _up(64, 32))
        self.final = seq(_cbr(64, 32), [nn.Conv2d(32, cout, 3, padding=1)])
        self.pool = nn.MaxPool2d(2)
        if affinity:
            self.aff1 = seq(_cbr(affinity, 32), _cbr(32, 32), [nn.MaxPool2d(2)])
            self.aff2 = seq(_cbr(32, 64), _cbr(64, 64), [nn.MaxPool2d(2)])
            self.aff3 = seq(_cbr(64, 128), _cbr(128, 128), [nn.MaxPool2d(2)])
            self.mha2 = nn.MultiheadAttention(64, 4, batch_first=True)
            self.mha3 = nn.MultiheadAttention(128, 4, batch_first=True)

    @staticmethod
    def _iem(mha, fs, fi):
        tok = lambda x: x.flatten(2).transpose(1, 2)  # (B, HW, C): pixels of one sample are the tokens
        f = mha(tok(fs), tok(fi), tok(fi))[0].transpose(1, 2).reshape(fi.shape)
        return torch.relu(f) + fi

    def forward(self, x, affinity=None):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        p2 = self.pool(e2)
        if affinity is not None:
            a2 = self.aff2(self.aff1(affinity))
            p2 = self._iem(self.mha2, a2, p2)
        e3 = self.enc3(p2)
        p3 = self.pool(e3)
        if affinity is not None:
            p3 = self._iem(self.mha3, self.aff3(a2), p3)
        d = self.dec3(torch.cat((self.bottleneck(p3), e3), 1))
        d = self.dec2(torch.cat((d, e2), 1))
        return self.final(torch.cat((d, e1), 1))


def _copy_by_order(dst: nn.Module, src: nn.Module, skip=("mha",)) -> None:
    """Load src's tensors into dst position by position (same architecture, different names)."""
    d = [k for k in dst.state_dict() if not k.startswith("iem.")]
    s = [v for k, v in src.state_dict().items() if not k.startswith(skip)]
    assert len(d) == len(s)
    state = dst.state_dict()
    for k, v in zip(d, s):
        assert state[k].shape == v.shape, (k, state[k].shape, v.shape)
        state[k] = v
    dst.load_state_dict(state)


def _copy_mha(iem, mha) -> None:
    c = iem.channels
    with torch.no_grad():
        iem.q_proj.weight.copy_(mha.in_proj_weight[:c])
        iem.q_proj.bias.copy_(mha.in_proj_bias[:c])
        iem.kv_proj.weight.copy_(mha.in_proj_weight[c:])
        iem.kv_proj.bias.copy_(mha.in_proj_bias[c:])
        iem.out_proj.load_state_dict(mha.out_proj.state_dict())


def _scaled(raw) -> torch.Tensor:
    return torch.as_tensor(np.asarray(raw), dtype=torch.float32) / 127.5 - 1.0  # [-1, 1] as in the reference


@pytest.mark.parametrize("train", [False, True])
def test_reference_unet_equals_plain_transcription(train):
    torch.manual_seed(0)
    ours, plain = ReferenceUNet(2, 1, 10), PlainUNet2D(1, 10)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in plain.parameters())
    _copy_by_order(ours, plain)
    ours.train(train), plain.train(train)
    x = torch.randn(2, 1, 32, 24)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def test_fusion_unet_equals_reference_with_pixel_attention(lucchi):
    torch.manual_seed(0)
    ours, plain = IEMFusionUNet(2, 1, 1, affinity_channels=10), PlainUNet2D(1, 1, affinity=10)
    _copy_by_order(ours, plain)
    _copy_mha(ours.iem["2"], plain.mha2)
    _copy_mha(ours.iem["3"], plain.mha3)
    ours.eval(), plain.eval()
    image = _scaled(lucchi[0][:2, :64, :48])[:, None]
    affinity = torch.rand(2, 10, 64, 48)
    torch.testing.assert_close(ours(image, affinity), plain(image, affinity), rtol=1e-4, atol=1e-5)


def test_reference_unet_weights_are_the_fusion_trunk():
    """A pretrained plain UNet loads into the fusion net; with silenced IEMs both give the same image."""
    torch.manual_seed(0)
    plain, fusion = ReferenceUNet(2, 1, 1, **SMALL).eval(), IEMFusionUNet(2, 1, 1, 10, **SMALL).eval()
    missing, unexpected = fusion.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("affinity_encoder.", "iem.")) for k in missing)
    for iem in fusion.iem.values():  # ReLU(F) = 0 everywhere -> F_o = F_i
        nn.init.zeros_(iem.out_proj.weight)
        nn.init.constant_(iem.out_proj.bias, -1.0)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(fusion(x, torch.rand(1, 10, 16, 16)), plain(x))


def _batch_first_misuse(iem):
    """The reference's bug: (HW, B, C) fed to a batch_first attention = attention across the batch."""

    def attention(semantic, image):
        seq = lambda x: x.flatten(2).permute(2, 0, 1)  # (HW, B, C), read as HW batches of B tokens
        q = iem.q_proj(seq(semantic))
        k, v = iem.kv_proj(seq(image)).chunk(2, dim=-1)
        heads = lambda t: t.unflatten(-1, (iem.num_heads, -1)).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return iem.out_proj(out.transpose(1, 2).flatten(2)).permute(1, 2, 0).reshape(image.shape)

    return attention


def test_affinities_change_the_final_image_at_batch_size_one():
    """Train mode at batch size 1 (BatchNorm uses this one sample's statistics): with the untrained
    running statistics of eval mode the affinity features of a fresh network are too small to test."""
    torch.manual_seed(0)
    fusion = IEMFusionUNet(2, 1, 1, 10, **SMALL).train()
    image = torch.randn(1, 1, 32, 32)
    a1, a2 = torch.rand(1, 10, 32, 32), torch.rand(1, 10, 32, 32)
    with torch.no_grad():
        assert (fusion(image, a1) - fusion(image, a2)).abs().max() > 1e-2
        for iem in fusion.iem.values():  # the same check catches the reference's bug
            iem.attention = _batch_first_misuse(iem)
        torch.testing.assert_close(fusion(image, a1), fusion(image, a2), rtol=0, atol=0)


@pytest.mark.parametrize("mode", [dict(), dict(attention_mode="window", window_size=4), dict(attention_mode="channel")])
def test_joint_batch_independence(mode):
    """Eval mode: BatchNorm in training mode uses batch statistics and so couples the samples by design."""
    torch.manual_seed(0)
    net = paper_joint_net(2, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL, **mode).eval()
    x = torch.randn(3, 1, 24, 32)
    y = torch.randn(3, 1, 24, 32)
    y[1] = x[1]
    with torch.no_grad():
        ox, oy, o1 = net(x), net(y), net(x[1:2])
    for key in ("coarse", "affinity", "affinity_prob", "final"):
        torch.testing.assert_close(ox[key][1], oy[key][1], rtol=0, atol=1e-5)
        torch.testing.assert_close(o1[key][0], ox[key][1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_denoiser,use_fusion", [(True, True), (False, True), (True, False), (False, False)])
def test_outputs_of_the_ablations(use_denoiser, use_fusion):
    torch.manual_seed(0)
    net = paper_joint_net(2, 1, 10, use_denoiser=use_denoiser, use_fusion=use_fusion,
                          denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).eval()
    assert (net.use_denoiser, net.use_fusion) == (use_denoiser, use_fusion)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out = net(x)
    expected = {"affinity", "affinity_prob"}
    expected |= ({"coarse"} if use_denoiser else set()) | ({"final"} if use_fusion else set())
    expected |= {"denoised"} if use_denoiser or use_fusion else set()
    assert set(out) == expected
    torch.testing.assert_close(out["affinity_prob"], torch.sigmoid(out["affinity"]))
    assert out["affinity"].shape == (2, 10, 16, 16)
    if "denoised" in out:
        assert torch.equal(out["denoised"], out["final" if use_fusion else "coarse"])
    seg_input = net.denoiser(x) if use_denoiser else x  # the segmenter sees the coarse or the noisy image
    with torch.no_grad():
        torch.testing.assert_close(out["affinity"], net.segmenter(seg_input))
        if use_fusion:
            torch.testing.assert_close(out["final"], net.fusion(seg_input, out["affinity_prob"]))


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_gradients_reach_every_stage_and_stop_where_frozen():
    torch.manual_seed(0)
    net = paper_joint_net(2, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).train()
    x = torch.randn(2, 1, 16, 16)
    out = net(x)
    (out["coarse"].square().mean() + out["affinity"].mean() + out["final"].square().mean()).backward()
    for stage in (net.denoiser, net.segmenter, net.fusion):
        assert all(g is not None for g in _grads(stage)) and sum(g.abs().sum() for g in _grads(stage)) > 0

    # sequential: frozen denoiser, no gradient into it, its BatchNorm stays in eval mode
    net.zero_grad(set_to_none=True)
    net.freeze("denoiser").train()
    assert not net.denoiser.training and net.segmenter.training and net.fusion.training
    out = net(x)
    (out["affinity"].mean() + out["final"].square().mean()).backward()
    assert all(g is None for g in _grads(net.denoiser)) and all(g is not None for g in _grads(net.segmenter))
    net.freeze("denoiser", frozen=False)
    assert net.denoiser.training and all(p.requires_grad for p in net.denoiser.parameters())

    # DMS: frozen segmenter, the denoiser still learns through it (affinity loss only, no fusion)
    dms = paper_joint_net(2, use_fusion=False, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL)
    dms.freeze("segmenter").train()
    dms(x)["affinity"].square().mean().backward()
    assert all(g is None for g in _grads(dms.segmenter))
    assert sum(g.abs().sum() for g in _grads(dms.denoiser)) > 0

    # the "up" ablation has no fusion stage at all
    with pytest.raises(ValueError, match="fusion"):
        dms.freeze("fusion")


def test_any_size_250_train_and_1250_inference(lucchi):
    torch.manual_seed(0)
    net = paper_joint_net(2, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).train()
    x = _scaled(lucchi[0][:1, :250, :250])[:, None]  # a real Lucchi++ slice, 250 is not a multiple of 8
    out = net(x)
    assert all(v.shape[2:] == (250, 250) for v in out.values())
    out["final"].square().mean().backward()
    assert net.fusion.iem["2"].q_proj.weight.grad.abs().sum() > 0

    big = paper_joint_net(
        2, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, attention_mode="window", window_size=16, **SMALL
    ).eval()
    with torch.no_grad():
        out = big(torch.randn(1, 1, 1250, 1250))
    assert out["final"].shape == (1, 1, 1250, 1250) and torch.isfinite(out["final"]).all()


def test_3d_forward_backward(medulla):
    torch.manual_seed(0)
    net = paper_joint_net(3, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).train()
    x = _scaled(medulla[0][None, None, :, :20, :28]).repeat(2, 1, 1, 1, 1)  # (2, 1, 8, 20, 28): padded to 8
    out = net(x)
    assert out["final"].shape == (2, 1, 8, 20, 28) and out["affinity"].shape == (2, 10, 8, 20, 28)
    assert out["final"].dtype == torch.float32
    (out["coarse"].square().mean() + out["final"].square().mean()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_monai_backbone_as_segmenter():
    torch.manual_seed(0)
    seg = BasicUNet(spatial_dims=2, in_channels=1, out_channels=10, features=(4, 4, 8, 16, 32, 4))
    net = JointDenoiSegNet(ReferenceUNet(2, **SMALL), seg, IEMFusionUNet(2, **SMALL), multiple=16).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 40, 44))
    assert out["final"].shape == (1, 1, 40, 44) and out["affinity"].shape == (1, 10, 40, 44)
    assert JointDenoiSegNet(None, ReferenceUNet(2, **SMALL), IEMFusionUNet(2, **SMALL)).multiple == 8


def test_factory_backbones_by_name_and_paper_sizes():
    count = lambda m: sum(p.numel() for p in m.parameters())
    net = paper_joint_net(2, denoiser="dncnn", segmenter="transunet",
                          segmenter_kwargs=dict(encoder_channels=(8, 16), hidden_size=16, num_layers=1, num_heads=2,
                                                mlp_dim=16, decoder_channels=(16, 8, 8)), **SMALL).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 20, 28))
    assert out["final"].shape == (1, 1, 20, 28)
    assert round(count(net.denoiser) / 1e6, 2) == 0.56  # paper / reference: DnCNN 0.56 M
    assert round(count(paper_joint_net(2, denoiser="ridnet", use_fusion=False).denoiser) / 1e6, 2) == 5.98  # RIDNet
    with pytest.raises(ValueError, match="denoiser"):
        paper_joint_net(2, denoiser="bm3d")
    with pytest.raises(ValueError, match="segmenter"):
        paper_joint_net(2, segmenter="dncnn")


def test_bad_inputs_raise_clear_errors():
    unet = ReferenceUNet(2, **SMALL)
    with pytest.raises(ValueError, match=r"divisible by 8.*\(1, 1, 20, 16\).*PadToMultiple"):
        unet(torch.zeros(1, 1, 20, 16))
    with pytest.raises(ValueError, match=r"image.*\(1, 16, 16\)"):
        unet(torch.zeros(1, 16, 16))
    fusion = IEMFusionUNet(2, **SMALL)
    with pytest.raises(ValueError, match=r"affinity.*10 channels.*\(1, 3, 16, 16\)"):
        fusion(torch.zeros(1, 1, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"affinity.*\(1, 10, 8, 16\)"):
        fusion(torch.zeros(1, 1, 16, 16), torch.zeros(1, 10, 8, 16))
    with pytest.raises(ValueError, match="iem_levels"):
        IEMFusionUNet(2, iem_levels=(4,))
    with pytest.raises(ValueError, match="stages"):
        paper_joint_net(2, **SMALL, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL).freeze("decoder")
    with pytest.raises(ValueError, match="noisy"):
        paper_joint_net(2, **SMALL, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL)(torch.zeros(1, 16, 16))


# -- IEM controls of issue 14: guidance="none" (attention removed) and "shuffled" (another sample's) ----
def _trained_mode_net(spatial_dims):
    """Train mode (BatchNorm on batch statistics): a fresh net's affinities then visibly change I_f."""
    torch.manual_seed(0)
    return paper_joint_net(spatial_dims, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).train()


def _coarse_padded(net, x):
    """I_c as the joint net computes it internally: the denoiser on the input padded to a multiple of 8."""
    return net.denoiser(pad_to_multiple(x, 8))


@pytest.mark.parametrize("shape", [(2, 1, 20, 28), (1, 1, 8, 12, 20)])  # sides not multiples of 8: padded
def test_guidance_none_is_the_plain_trunk_and_ignores_the_affinities(shape):
    net = _trained_mode_net(len(shape) - 2)
    x = torch.randn(shape)
    trunk = ReferenceUNet(len(shape) - 2, 1, 1, **SMALL).train()
    missing, unexpected = trunk.load_state_dict(net.fusion.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("affinity_encoder.", "iem.")) for k in unexpected)
    with torch.no_grad():
        out, guided = net(x, guidance="none"), net(x)
        image = _coarse_padded(net, x)
        expected = crop_spatial(trunk(image), shape[2:])
        # "the rest identical": the plain UNet trunk run on its own, on the same I_c
        torch.testing.assert_close(out["final"], expected, rtol=0, atol=1e-6)
        assert torch.equal(out["denoised"], out["final"])
        # the fusion net's own switch, with or without an affinity map
        assert torch.equal(net.fusion(image, None, attend=False), trunk(image))
        assert torch.equal(net.fusion(image, torch.rand(shape[0], 10, *image.shape[2:]), attend=False), trunk(image))
        # the segmenter's outputs are still computed and returned as usual
        assert torch.equal(out["affinity"], guided["affinity"]) and torch.equal(out["coarse"], guided["coarse"])
        assert (guided["final"] - out["final"]).abs().max() > 1e-3  # the IEMs do act with guidance

        for p in net.segmenter.parameters():  # other affinities: "affinity" changes I_f, "none" does not
            p.add_(torch.randn_like(p))
        out2, guided2 = net(x, guidance="none"), net(x)
    assert (out2["affinity"] - out["affinity"]).abs().max() > 1e-2
    assert (guided2["final"] - guided["final"]).abs().max() > 1e-3
    assert torch.equal(out2["final"], out["final"])

    # nothing of the segmenter, the affinity encoder or the IEMs reaches I_f
    net(x, guidance="none")["final"].square().mean().backward()
    for module in (net.segmenter, net.fusion.affinity_encoder, net.fusion.iem):
        assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in net.denoiser.parameters())


@pytest.mark.parametrize(
    "shape,shifts,dims",
    [
        ((3, 1, 16, 24), 1, 0),  # B > 1: sample i gets sample i-1's affinities (B = 3: a roll by -1 differs)
        ((1, 1, 20, 28), (10, 14), (2, 3)),  # B == 1: half the (unpadded) sides, along every axis
        ((3, 1, 8, 16, 16), 1, 0),
        ((1, 1, 8, 16, 12), (4, 8, 6), (2, 3, 4)),
    ],
)
def test_guidance_shuffled_feeds_the_fusion_net_rolled_affinities(shape, shifts, dims):
    net = _trained_mode_net(len(shape) - 2)
    x = torch.randn(shape)
    with torch.no_grad():
        out, guided = net(x, guidance="shuffled"), net(x)
        rolled = torch.roll(guided["affinity_prob"], shifts=shifts, dims=dims)
        expected = crop_spatial(net.fusion(_coarse_padded(net, x), pad_to_multiple(rolled, 8)), shape[2:])
    torch.testing.assert_close(out["final"], expected, rtol=0, atol=1e-6)
    assert (out["final"] - guided["final"]).abs().max() > 1e-3  # the shuffle did change what the IEMs saw
    for key in ("coarse", "affinity", "affinity_prob"):  # the segmenter's own, unshuffled outputs
        assert torch.equal(out[key], guided[key]), key
    assert torch.equal(out["denoised"], out["final"])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_guidance_default_is_the_segmenters_affinities(spatial_dims):
    net = _trained_mode_net(spatial_dims)
    x = torch.randn((2, 1) + (8, 16, 16)[-spatial_dims:])
    with torch.no_grad():
        default, explicit = net(x), net(x, guidance="affinity")
        expected = net.fusion(net.denoiser(x), torch.sigmoid(net.segmenter(net.denoiser(x))))
    assert set(default) == set(explicit)
    assert all(torch.equal(default[k], explicit[k]) for k in default)
    torch.testing.assert_close(default["final"], expected, rtol=0, atol=1e-6)


class _TwoInputFusion(nn.Module):
    """A fusion net without the ``attend`` switch."""

    def forward(self, image, affinity):
        return image + affinity.mean(dim=1, keepdim=True)


def test_guidance_values_errors_and_nets_without_fusion():
    assert GUIDANCE == EXPORTED_GUIDANCE == ("affinity", "none", "shuffled")
    net = paper_joint_net(2, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).eval()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"guidance.*\('affinity', 'none', 'shuffled'\).*'off'"):
        net(x, guidance="off")
    # without a fusion stage (net or stages) the guidance is irrelevant: accepted, no effect
    up = paper_joint_net(2, use_fusion=False, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL).eval()
    with torch.no_grad():
        for model, stages in ((up, None), (net, ("denoiser", "segmenter")), (net, ("denoiser",))):
            ref = model(x, stages=stages)
            for guidance in GUIDANCE:
                out = model(x, stages=stages, guidance=guidance)
                assert set(out) == set(ref) and all(torch.equal(out[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="guidance"):
        up(x, guidance="bogus")
    # any two-input fusion net takes shuffled affinities; only "none" needs the attend switch
    other = JointDenoiSegNet(ReferenceUNet(2, **SMALL), ReferenceUNet(2, 1, 10, **SMALL), _TwoInputFusion()).eval()
    with torch.no_grad():
        assert other(x, guidance="shuffled")["final"].shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"guidance.*'none'.*attend.*_TwoInputFusion"):
        other(x, guidance="none")
