"""Losses against independent references (torch.nn.functional, numpy formulas) on real EM crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_denoiseg.losses import DenoiSegLoss, JointDenoiSegLoss, N2VLoss, N2VSegLoss, WeightedAffinityBCELoss

# ---------------------------------------------------------------- independent numpy references


def numpy_affinities(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets and validity for offsets (-1, 0) and (0, -1) of a (B, H, W) label stack; label 0 = background."""
    b, h, w = lab.shape
    aff, valid = np.zeros((b, 2, h, w), np.float32), np.zeros((b, 2, h, w), np.float32)
    aff[:, 0, 1:] = (lab[:, 1:] == lab[:, :-1]) & (lab[:, 1:] != 0)
    aff[:, 1, :, 1:] = (lab[:, :, 1:] == lab[:, :, :-1]) & (lab[:, :, 1:] != 0)
    valid[:, 0, 1:], valid[:, 1, :, 1:] = 1, 1
    return aff, valid


def reference_class_weights(aff: np.ndarray) -> np.ndarray:
    """EM-DenoiSeg weights: per sample and channel, the minority class gets max(f, 1-f) / min(f, 1-f)."""
    w = np.ones_like(aff)
    for b in range(aff.shape[0]):
        for c in range(aff.shape[1]):
            f = np.clip(aff[b, c].mean(), 0.05, 0.99)
            minority = 1.0 if f < 0.5 else 0.0
            w[b, c][aff[b, c] == minority] = max(f, 1 - f) / min(f, 1 - f)
    return w


def numpy_bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.fixture(scope="module")
def batch(medulla):
    """Real (B=2) medulla crop: image in [-1, 1], affinity targets, reference weights and validity."""
    raw, lab = medulla
    image = torch.as_tensor(raw[:2, :64, :64], dtype=torch.float32)[:, None] / 127.5 - 1
    aff, valid = numpy_affinities(lab[:2, :64, :64].astype(np.int64))
    return image, aff, reference_class_weights(aff), valid


# ---------------------------------------------------------------- weighted affinity BCE


def test_wbce_probabilities_equal_reference_call(batch, rng):
    """With the weight map and no mask: exactly the reference's binary_cross_entropy(p, y, w)."""
    _, aff, w, _ = batch
    p = torch.as_tensor(rng.uniform(0.02, 0.98, aff.shape), dtype=torch.float32)
    y, wt = torch.as_tensor(aff), torch.as_tensor(w)
    ours = WeightedAffinityBCELoss(sigmoid=False)(p, y, weight=wt)
    torch.testing.assert_close(ours, F.binary_cross_entropy(p, y, weight=wt))
    np.testing.assert_allclose(ours.item(), (w * numpy_bce(p.double().numpy(), aff)).mean(), rtol=1e-5)


def test_wbce_logits_with_mask_match_numpy(batch, rng):
    """Logits + mask: sum(w * bce * mask) / sum(mask) with p = sigmoid(x) (numpy formula)."""
    _, aff, w, valid = batch
    x = rng.normal(0, 2, aff.shape)
    loss = WeightedAffinityBCELoss(sigmoid=True)
    args = [torch.as_tensor(a, dtype=torch.float32) for a in (x, aff, w, valid)]
    p = 1 / (1 + np.exp(-x))
    expected = (w * numpy_bce(p, aff) * valid).sum() / valid.sum()
    np.testing.assert_allclose(loss(*args).item(), expected, rtol=1e-5)
    summed = WeightedAffinityBCELoss(reduction="sum")(*args)
    np.testing.assert_allclose(summed.item(), (w * numpy_bce(p, aff) * valid).sum(), rtol=1e-5)
    elementwise = WeightedAffinityBCELoss(reduction="none")(*args)
    assert elementwise.shape == aff.shape
    np.testing.assert_allclose(elementwise.numpy(), w * numpy_bce(p, aff) * valid, rtol=1e-4, atol=1e-6)


def test_wbce_is_stable_for_large_logits():
    """Confident wrong logits give the exact loss |x| (no inf/NaN), confident right ones ~0."""
    x = torch.tensor([[[100.0, -100.0, 100.0]]])
    y = torch.tensor([[[0.0, 1.0, 1.0]]])
    loss = WeightedAffinityBCELoss(reduction="none")(x, y)
    torch.testing.assert_close(loss, torch.tensor([[[100.0, 100.0, 0.0]]]))


def test_wbce_accepts_integer_targets_and_reference_zeroed_weights(batch, rng):
    """Weights zeroed where invalid + no mask = sum over valid / all elements (the paper's normalisation)."""
    _, aff, w, valid = batch
    p = rng.uniform(0.05, 0.95, aff.shape)
    ours = WeightedAffinityBCELoss(sigmoid=False)(
        torch.as_tensor(p), torch.as_tensor(aff.astype(np.uint8)), weight=torch.as_tensor(w * valid)
    )
    np.testing.assert_allclose(ours.item(), (w * valid * numpy_bce(p, aff)).sum() / aff.size, rtol=1e-10)


@pytest.mark.parametrize("bad", ["target", "weight", "mask"])
def test_wbce_shape_mismatch_names_shapes(bad):
    x = torch.zeros(2, 2, 8, 8)
    kwargs = {"target": torch.zeros(2, 2, 8, 8), "weight": None, "mask": None}
    kwargs[bad] = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=rf"{bad}: .*\(2, 2, 8, 8\).*\(2, 1, 8, 8\)"):
        WeightedAffinityBCELoss()(x, **kwargs)


# ---------------------------------------------------------------- Noise2Void


def test_n2v_loss_matches_numpy_and_ignores_unmasked(medulla, rng):
    raw = medulla[0][:2, None, :64, :64].astype(np.float64) / 255
    pred = raw + rng.normal(0, 0.1, raw.shape)
    mask = (rng.random(raw.shape) < 0.02).astype(np.float64)
    pred_far = np.where(mask > 0, pred, 1e3)  # huge errors off the blind spots must not count
    expected = ((pred - raw) ** 2 * mask).sum() / mask.sum()
    for p in (pred, pred_far):
        ours = N2VLoss()(torch.as_tensor(p), torch.as_tensor(raw), torch.as_tensor(mask))
        np.testing.assert_allclose(ours.item(), expected, rtol=1e-12)
    # MONAI's MaskedLoss-style mean over all pixels would be ~50x smaller at 2 %
    assert expected > 20 * ((pred - raw) ** 2 * mask).mean()
    summed = N2VLoss(reduction="sum")(torch.as_tensor(pred), torch.as_tensor(raw), torch.as_tensor(mask))
    np.testing.assert_allclose(summed.item(), ((pred - raw) ** 2 * mask).sum(), rtol=1e-12)


def test_n2v_loss_empty_mask_is_zero_with_gradient():
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = N2VLoss()(x, torch.zeros_like(x), torch.zeros_like(x, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_n2v_loss_shape_mismatch():
    message = r"mask: expected the shape \(1, 1, 8, 8\) of input, got shape \(1, 1, 4, 4\)"
    with pytest.raises(ValueError, match=message):
        N2VLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------- joint losses


def test_joint_denoiseg_loss_is_eq6_in_the_references_units(batch, rng):
    """Images in [0, 1]; the terms are the reference's on [-1, 1] images (2 x - 1): 4x the [0, 1] MSE."""
    image, aff, w, valid = batch
    image = (image + 1) / 2  # the toolkit's [0, 1]
    coarse, final = (image + torch.as_tensor(rng.normal(0, s, image.shape), dtype=torch.float32) for s in (0.3, 0.1))
    logits = torch.as_tensor(rng.normal(0, 1, aff.shape), dtype=torch.float32)
    loss = JointDenoiSegLoss()
    total = loss({"coarse": coarse, "affinity": logits, "final": final},
                 {"clean": image, "seg_target": torch.as_tensor(aff), "seg_weight": torch.as_tensor(w * valid)})
    out = loss.last_terms
    ref = 2 * image.double().numpy() - 1
    mse_c, mse_f = (((2 * x.double().numpy() - 1 - ref) ** 2).mean() for x in (coarse, final))
    p = 1 / (1 + np.exp(-logits.double().numpy()))
    seg = (w * valid * numpy_bce(p, aff)).mean()  # the reference's binary_cross_entropy(p, y, w): mean over all
    terms = [out[k].item() for k in ("res_c", "seg", "res_f")]
    np.testing.assert_allclose(terms, [mse_c, seg, mse_f], rtol=1e-5)
    np.testing.assert_allclose(total.item(), mse_c + 3 * seg + 50 * mse_f, rtol=1e-5)
    assert torch.equal(out["loss"], total.detach())


def test_denoiseg_loss_missing_inputs_and_l1(batch):
    image, aff, _, _ = batch
    coarse = torch.zeros_like(image)
    loss = DenoiSegLoss({"res_c": 1.0}, intensity_scale=1.0, restoration_loss=nn.L1Loss())
    np.testing.assert_allclose(loss({"coarse": coarse}, {"clean": image}).item(), image.abs().double().mean().item(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"target\['seg_target'\]: required by the loss term 'seg'"):
        JointDenoiSegLoss()({"coarse": coarse, "affinity": torch.zeros(aff.shape), "final": coarse}, {"clean": image})
    with pytest.raises(ValueError, match=r"pred\['final'\]: required by the loss term 'res_f'"):
        JointDenoiSegLoss()({"coarse": coarse, "affinity": torch.zeros(aff.shape)},
                            {"clean": image, "seg_target": torch.as_tensor(aff)})
    with pytest.raises(ValueError, match="weights: expected a non-empty mapping"):
        DenoiSegLoss({"res_x": 1.0})
    assert not N2VSegLoss("unsupervised").needs("clean") and JointDenoiSegLoss().needs("clean")


@pytest.mark.parametrize("mode, w1, w2", [("supervised", 1.0, 1.5), ("unsupervised", 9.0, 1.0)])
def test_n2v_seg_loss_presets(lucchi, rng, mode, w1, w2):
    raw, mito = lucchi
    noisy = torch.as_tensor(raw[:, None, :64, :64] / 255.0)
    denoised = noisy + torch.as_tensor(rng.normal(0, 0.05, noisy.shape))
    blind = torch.as_tensor(rng.random(noisy.shape) < 0.05)
    seg_out = torch.as_tensor(rng.normal(0, 1, noisy.shape))
    loss = N2VSegLoss(mode)
    pred = {"coarse": denoised, "affinity": seg_out, "affinity_prob": torch.sigmoid(seg_out)}
    total = loss(pred, {"noisy": noisy, "blind_spots": blind, "seg_target": torch.as_tensor(mito[:, None, :64, :64])})
    b = blind.numpy()
    n2v = 4 * (((denoised - noisy).numpy() ** 2) * b).sum() / b.sum()  # in [-1, 1] units
    s, d = seg_out.numpy(), denoised.numpy()
    if mode == "supervised":
        seg = numpy_bce(1 / (1 + np.exp(-s)), mito[:, None, :64, :64]).mean()
    else:  # style: the denoised image against the frozen segmenter's output on it
        seg = 4 * ((d - 1 / (1 + np.exp(-s))) ** 2).mean()
    name = "seg" if mode == "supervised" else "style"
    np.testing.assert_allclose([loss.last_terms["n2v_c"].item(), loss.last_terms[name].item()], [n2v, seg], rtol=1e-6)
    np.testing.assert_allclose(total.item(), w1 * n2v + w2 * seg, rtol=1e-6)


# ---------------------------------------------------------------- every loss trains


def _train(loss_of, params, steps=15, lr=0.05):
    opt = torch.optim.Adam(params, lr=lr)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        opt.step()
        values.append(loss.item())
    return values


def _net(out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, out_channels, 3, padding=1))


def test_affinity_bce_decreases(batch):
    image, aff, w, valid = batch
    net, loss = _net(2), WeightedAffinityBCELoss()
    tensors = [torch.as_tensor(a) for a in (aff, w, valid)]
    values = _train(lambda: loss(net(image), *tensors), net.parameters())
    assert values[-1] < 0.8 * values[0], values


def test_n2v_loss_decreases(batch):
    image = batch[0]
    gen = torch.Generator().manual_seed(0)
    noisy = image + 0.3 * torch.randn(image.shape, generator=gen)
    mask = torch.rand(image.shape, generator=gen) < 0.02
    net, loss = _net(1), N2VLoss()
    values = _train(lambda: loss(net(torch.where(mask, noisy.roll(1, -1), noisy)), noisy, mask), net.parameters())
    assert values[-1] < 0.8 * values[0], values


def test_joint_losses_decrease(batch, lucchi):
    image, aff, w, valid = batch
    gen = torch.Generator().manual_seed(0)
    noisy = image + 0.3 * torch.randn(image.shape, generator=gen)
    den, seg, fus = _net(1), _net(2), _net(1)
    joint = JointDenoiSegLoss()
    targets = {"clean": image, "seg_target": torch.as_tensor(aff), "seg_weight": torch.as_tensor(w * valid)}

    def joint_loss():
        coarse = den(noisy)
        return joint({"coarse": coarse, "affinity": seg(coarse), "final": fus(coarse)}, targets)

    params = [*den.parameters(), *seg.parameters(), *fus.parameters()]
    values = _train(joint_loss, params, lr=0.01)
    assert values[-1] < 0.8 * values[0], values

    raw, mito = lucchi
    x = torch.as_tensor(raw[:, None, :64, :64] / 127.5 - 1, dtype=torch.float32)
    y = torch.as_tensor(mito[:, None, :64, :64], dtype=torch.float32)
    mask = torch.rand(x.shape, generator=gen) < 0.02
    dn, sg, n2vseg = _net(1), _net(1), N2VSegLoss("supervised")

    def n2v_seg_loss():
        d = dn(torch.where(mask, x.roll(1, -1), x))
        return n2vseg({"coarse": d, "affinity": sg(d)}, {"noisy": x, "blind_spots": mask, "seg_target": y})

    values = _train(n2v_seg_loss, [*dn.parameters(), *sg.parameters()], lr=0.01)
    assert values[-1] < 0.8 * values[0], values
