"""Metrics against scikit-image, numpy and closed forms on real EM labels and images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage.metrics import adapted_rand_error as sk_arand
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.metrics import variation_of_information as sk_voi
from skimage.morphology import binary_erosion, disk

from monai_denoiseg.metrics import (
    AdaptedRandErrorMetric,
    UnitRangePSNRMetric,
    UnitRangeSSIMMetric,
    VariationOfInformationMetric,
    adapted_rand_error,
    binary_f1_metric,
    binary_iou_metric,
    variation_of_information,
)

INPUT_TYPES = [np.asarray, torch.as_tensor, MetaTensor]


def perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A realistic wrong segmentation: a fifth of the ids merged into neighbours, a band of cells split in two."""
    seg = gt.astype(np.int64).copy()
    ids = np.unique(seg[seg > 0])
    merged = rng.choice(ids, size=max(len(ids) // 5, 1), replace=False)
    seg[np.isin(seg, merged)] = ids[0]
    cut = seg.shape[-1] // 2
    seg[..., cut:] += seg.max() + 1  # every id crossing the middle column is split
    return seg


@pytest.fixture(scope="module", params=["medulla", "isbi"])
def labels(request, medulla, isbi):
    """(gt, seg) label stacks (D, H, W) from a real volume; ISBI has a 0 background (membranes)."""
    gt = medulla[1] if request.param == "medulla" else isbi[1]
    return gt, perturb(gt, np.random.default_rng(0))


@pytest.fixture(scope="module")
def skimage_slices(labels):
    """scikit-image per slice: (D, 5) split, merge, ARAND error, its 'precision', its 'recall'."""
    gt, seg = labels
    return np.array([[*sk_voi(g, s, ignore_labels=(0,)), *sk_arand(g, s)] for g, s in zip(gt, seg)])


# ---------------------------------------------------------------- VOI / ARAND functions vs scikit-image


def test_functions_match_skimage_per_slice(labels, skimage_slices):
    gt, seg = labels
    for z, (split, merge, sk_err, sk_prec, sk_rec) in enumerate(skimage_slices):
        voi = variation_of_information(seg[z], gt[z])
        np.testing.assert_allclose(voi, [split, merge, split + merge], rtol=1e-10, atol=1e-12)
        are = adapted_rand_error(seg[z], gt[z])
        # scikit-image's precision/recall are swapped w.r.t. their definitions (scikit-image issue #6485)
        np.testing.assert_allclose([are.error, are.precision, are.recall], [sk_err, sk_rec, sk_prec], rtol=1e-10)
        assert voi.total > 0.1 and are.error > 0.01  # the perturbation is visible


def test_functions_match_skimage_on_volume_with_huge_uint64_ids(medulla, rng):
    """uint64 ids beyond int64 (CREMI-style) are exact: same values as small dense ids through scikit-image."""
    gt = medulla[1]
    seg = perturb(gt, rng)
    _, dense_gt = np.unique(gt, return_inverse=True)
    _, dense_seg = np.unique(seg, return_inverse=True)
    huge_gt = gt.astype(np.uint64) * np.uint64(2**40) + np.uint64(2**63)
    huge_gt[gt == 0] = 0
    huge_seg = seg.astype(np.uint64) + np.uint64(2**63 + 12345)
    dense_gt = np.where(gt == 0, 0, dense_gt.reshape(gt.shape) + 1)  # background stays 0, cells 1..K
    dense_seg = dense_seg.reshape(gt.shape)
    voi = variation_of_information(huge_seg, huge_gt)
    np.testing.assert_allclose(voi[:2], sk_voi(dense_gt, dense_seg, ignore_labels=(0,)), rtol=1e-10)
    are = adapted_rand_error(huge_seg, huge_gt)
    np.testing.assert_allclose(are.error, sk_arand(dense_gt, dense_seg)[0], rtol=1e-10)


def test_closed_forms():
    """Two equal gt cells merged: merge VOI = 1 bit, split 0, recall 1; split into two: the mirror image."""
    gt = np.zeros((8, 8), np.int64)
    gt[:, :4], gt[:, 4:] = 1, 2
    one = np.ones_like(gt)
    voi, are = variation_of_information(one, gt), adapted_rand_error(one, gt)
    assert (voi.split, voi.merge) == (0.0, pytest.approx(1.0))
    # pairs: P = 2 * 32^2 - 64, gt pairs A = P, seg pairs B = 64^2 - 64
    p, b = 2 * 32**2 - 64, 64**2 - 64
    assert are.recall == 1.0 and are.precision == pytest.approx(p / b)
    assert are.error == pytest.approx(1 - 2 * p / (p + b))
    voi, are = variation_of_information(gt, one), adapted_rand_error(gt, one)
    assert (voi.split, voi.merge) == (pytest.approx(1.0), 0.0) and are.precision == 1.0
    assert variation_of_information(gt, gt).total == 0.0 and adapted_rand_error(gt * 7, gt).error == 0.0
    # gt label 0 ignored: whatever the segmentation does on background does not count
    gt[:, :2] = 0
    seg = gt.copy()
    seg[:, :2] = np.arange(16).reshape(8, 2) + 10
    assert variation_of_information(seg, gt).total == 0.0 and adapted_rand_error(seg, gt).error == 0.0
    assert np.isnan(adapted_rand_error(one, np.zeros_like(gt)).error)


# ---------------------------------------------------------------- cumulative metrics


@pytest.mark.parametrize("to_type", INPUT_TYPES)
def test_metric_slice_mode_averages_skimage_slices(labels, skimage_slices, to_type):
    gt, seg = labels
    d = gt.shape[0]
    gt5, seg5 = gt.astype(np.int64)[None, None], seg[None, None]  # (1, 1, D, H, W)
    expected_voi = skimage_slices[:, :2].sum(axis=1).mean()
    voi, are = VariationOfInformationMetric(), AdaptedRandErrorMetric()
    voi(to_type(seg5), to_type(gt5))
    are(to_type(seg5), to_type(gt5))
    np.testing.assert_allclose(voi.aggregate().item(), expected_voi, rtol=1e-6)
    np.testing.assert_allclose(are.aggregate().item(), skimage_slices[:, 2].mean(), rtol=1e-6)
    # the same slices given as a batch of 2-D samples (B, 1, H, W) give the same aggregate
    voi2d = VariationOfInformationMetric()
    voi2d(to_type(seg[:, None]), to_type(gt.astype(np.int64)[:, None]))
    buffer = voi2d.get_buffer()
    assert buffer.shape == (d, 3)
    np.testing.assert_allclose(buffer[:, 0].numpy(), buffer[:, 1].numpy() + buffer[:, 2].numpy())
    np.testing.assert_allclose(voi2d.aggregate().item(), expected_voi, rtol=1e-6)
    np.testing.assert_allclose(voi2d.aggregate_terms()["split"].item(), skimage_slices[:, 0].mean(), rtol=1e-6)


def test_metric_volume_mode_and_float_labels(labels):
    gt, seg = labels
    m = AdaptedRandErrorMetric(mode="volume")
    # MONAI loaders give float labels: whole numbers are accepted
    m(torch.as_tensor(seg[None, None], dtype=torch.float64), torch.as_tensor(gt[None, None].astype(np.float64)))
    np.testing.assert_allclose(m.aggregate().item(), sk_arand(gt, seg)[0], rtol=1e-6)
    v = VariationOfInformationMetric(mode="volume", reduction="none")
    v(seg[None, None], gt[None, None])
    np.testing.assert_allclose(v.aggregate().numpy().ravel(), [sum(sk_voi(gt, seg, ignore_labels=(0,)))], rtol=1e-6)


def test_metric_skips_slices_without_ground_truth(isbi, rng):
    gt = isbi[1][:2].astype(np.int64)
    seg = perturb(gt, rng)
    gt_b = gt.copy()
    gt_b[1] = 0  # second slice: only ignored background
    m = VariationOfInformationMetric(reduction="none")
    m(seg[None, None], gt_b[None, None])
    np.testing.assert_allclose(m.aggregate().item(), sum(sk_voi(gt[0], seg[0], ignore_labels=(0,))), rtol=1e-10)
    m.reset()
    m(seg[:, None], gt_b[:, None])  # as two samples: the empty one is NaN and left out of the mean
    assert np.isnan(m.get_buffer()[1]).all()
    mean = VariationOfInformationMetric()
    mean(seg[:, None], gt_b[:, None])
    np.testing.assert_allclose(mean.aggregate().item(), sum(sk_voi(gt[0], seg[0], ignore_labels=(0,))), rtol=1e-6)


def test_metric_with_ignite_handler(medulla, rng):
    from ignite.engine import Engine
    from monai.handlers import IgniteMetricHandler

    gt = medulla[1][:4]
    seg = perturb(gt, rng)
    batches = [(seg[i : i + 2, None], gt[i : i + 2, None]) for i in (0, 2)]  # uint64 numpy batches
    engine = Engine(lambda e, batch: batch)
    IgniteMetricHandler(metric_fn=VariationOfInformationMetric()).attach(engine, "voi")
    IgniteMetricHandler(metric_fn=AdaptedRandErrorMetric()).attach(engine, "arand")
    state = engine.run(batches)
    expected_voi = np.mean([sum(sk_voi(gt[z], seg[z], ignore_labels=(0,))) for z in range(4)])
    np.testing.assert_allclose(state.metrics["voi"], expected_voi, rtol=1e-6)
    expected_are = np.mean([sk_arand(gt[z], seg[z])[0] for z in range(4)])
    np.testing.assert_allclose(state.metrics["arand"], expected_are, rtol=1e-6)


@pytest.mark.parametrize(
    "seg_shape, gt_shape, match",
    [
        ((2, 1, 8, 8), (2, 1, 8, 9), r"y_pred: expected .*\(2, 1, 8, 9\), got shape \(2, 1, 8, 8\)"),
        ((2, 2, 8, 8), (2, 2, 8, 8), r"y_pred: expected one channel"),
        ((8, 8), (8, 8), r"y: expected a 2/3-D array shaped \(B, C, H, W\)"),
    ],
)
def test_metric_rejects_bad_shapes(seg_shape, gt_shape, match):
    with pytest.raises(ValueError, match=match):
        VariationOfInformationMetric()(np.zeros(seg_shape, np.int64), np.zeros(gt_shape, np.int64))


def test_rejects_negative_or_fractional_ids():
    with pytest.raises(ValueError, match="y: expected non-negative"):
        AdaptedRandErrorMetric()(torch.zeros(1, 1, 4, 4), -torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="seg: expected integer instance ids"):
        variation_of_information(np.full((4, 4), 0.5), np.ones((4, 4), int))
    with pytest.raises(ValueError, match=r"seg: expected the shape of gt \(4, 4\), got shape \(4, 5\)"):
        adapted_rand_error(np.ones((4, 5), int), np.ones((4, 4), int))


# ---------------------------------------------------------------- PSNR / SSIM


@pytest.fixture
def images(isbi, rng):
    """Clean and noisy real ISBI slices in [0, 1] (the noisy one clipped, as a denoiser output would be)."""
    clean = isbi[0][:2].astype(np.float64) / 255
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
    return clean, noisy


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (0.0, 255.0), (0.0, 1.0)])
def test_psnr_ssim_match_skimage(images, low, high):
    clean, noisy = images
    scale = lambda x: torch.as_tensor(x[:, None] * (high - low) + low)  # noqa: E731
    data_range = high if low == 0 else (low, high)
    psnr = UnitRangePSNRMetric(data_range=data_range, reduction="none")(scale(noisy), scale(clean))
    ssim = UnitRangeSSIMMetric(data_range=data_range, reduction="none")(scale(noisy), scale(clean))
    for i in range(2):
        np.testing.assert_allclose(psnr[i].item(), peak_signal_noise_ratio(clean[i], noisy[i], data_range=1), rtol=1e-10)
        sk = structural_similarity(noisy[i], clean[i], win_size=7, data_range=1)
        np.testing.assert_allclose(ssim[i].item(), sk, atol=2e-6)
    # MONAI's population covariance alone would be measurably off
    plain = UnitRangeSSIMMetric(data_range=data_range, sample_covariance=False, reduction="none")
    plain = plain(scale(noisy), scale(clean))
    assert abs(plain[0].item() - structural_similarity(noisy[0], clean[0], win_size=7, data_range=1)) > 1e-4


def test_psnr_clamps_prediction_like_reference(images):
    """The reference clamps the prediction to [-1, 1] before scoring; values beyond do not lower PSNR further."""
    clean, noisy = images
    pred = torch.as_tensor(noisy[:, None] * 2 - 1)
    pred[:, :, :10] = 5.0
    target = torch.as_tensor(clean[:, None] * 2 - 1)
    clipped = np.clip((pred[:, 0].numpy() + 1) / 2, 0, 1)
    expected = [peak_signal_noise_ratio(clean[i], clipped[i], data_range=1) for i in range(2)]
    ours = UnitRangePSNRMetric((-1, 1), reduction="none")(pred, target)
    np.testing.assert_allclose(ours.numpy().ravel(), expected, rtol=1e-10)


def test_ssim_3d_matches_skimage(isbi, rng):
    clean = isbi[0][:, :48, :48].astype(np.float64) / 255  # (4, 48, 48), window 7 needs >= 7 slices: pad by reflection
    clean = np.concatenate([clean, clean[::-1], clean[:1]])
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
    ours = UnitRangeSSIMMetric(spatial_dims=3)(torch.as_tensor(noisy[None, None]), torch.as_tensor(clean[None, None]))
    np.testing.assert_allclose(ours.item(), structural_similarity(noisy, clean, win_size=7, data_range=1), atol=2e-6)


def test_bad_data_range():
    with pytest.raises(ValueError, match="data_range"):
        UnitRangePSNRMetric(data_range=(1, -1))


# ---------------------------------------------------------------- IoU / F1 on binary masks


def test_binary_iou_f1_match_numpy(lucchi):
    mito = lucchi[1].astype(bool)
    pred = np.stack([binary_erosion(m, disk(3)) for m in mito])
    pred[1, :40, :40] = True  # plus a false positive block
    inter = (pred & mito).sum(axis=(1, 2))
    iou = inter / (pred | mito).sum(axis=(1, 2))
    f1 = 2 * inter / (pred.sum(axis=(1, 2)) + mito.sum(axis=(1, 2)))
    for to_type in INPUT_TYPES[1:]:
        p, y = to_type(pred[:, None].astype(np.float32)), to_type(mito[:, None].astype(np.float32))
        np.testing.assert_allclose(binary_iou_metric(reduction="none")(p, y).numpy().ravel(), iou, rtol=1e-6)
        np.testing.assert_allclose(binary_f1_metric(reduction="none")(p, y).numpy().ravel(), f1, rtol=1e-6)
    m = binary_iou_metric()
    m(torch.as_tensor(pred[:, None]), torch.as_tensor(mito[:, None]))
    m(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))  # empty ground truth: NaN, left out of the mean
    np.testing.assert_allclose(m.aggregate().item(), iou.mean(), rtol=1e-6)
    assert binary_f1_metric(ignore_empty=False)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)).item() == 1.0

