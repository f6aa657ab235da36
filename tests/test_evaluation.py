"""Whole-volume inference, instances, paper metrics and outputs (monai_denoiseg.engines.evaluation), on real EM data."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.measure import label as connected_pieces
from skimage.metrics import (
    adapted_rand_error,
    peak_signal_noise_ratio,
    structural_similarity,
    variation_of_information,
)
from torch import nn

from conftest import data_path
from monai_denoiseg.engines.evaluation import evaluate_prediction, predict_volume, save_metrics, segment
from monai_denoiseg.figures import save_figure
from monai_denoiseg.networks.nets.joint import JointDenoiSegNet, paper_joint_net
from monai_denoiseg.transforms.affinity import DEFAULT_OFFSETS_3D, PAPER_OFFSETS_2D, LabelToAffinity
from monai_denoiseg.transforms.instances import AffinityToInstances

SMALL = dict(features=(4, 8, 16, 32))


@pytest.fixture(scope="module")
def isbi_slices():
    """Two whole 512x512 ISBI 2012 slices (raw uint8, neurite ids)."""
    import tifffile

    raw = tifffile.imread(data_path("isbi2012", "train-input.tif"), key=range(0, 2))
    lab = tifffile.imread(data_path("isbi2012", "train-labels.tif"), key=range(0, 2))
    return raw, lab


def _flags(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def _exact_affinity(labels: np.ndarray, offsets) -> np.ndarray:
    """'Same instance' targets of (D, H, W) labels squashed to [0.05, 0.95]: a confident, perfect prediction."""
    return 0.05 + 0.9 * np.asarray(LabelToAffinity(offsets)(labels[None].astype(np.int64)))


# ------------------------------------------------------------------------------------------ predict_volume
def test_predict_volume_whole_isbi_slices(isbi_slices):
    torch.manual_seed(0)
    net = paper_joint_net(2, denoiser_kwargs=SMALL, segmenter_kwargs=SMALL, **SMALL).train()
    net.freeze("denoiser")  # a frozen stage stays in eval mode: its flag must survive too
    before = _flags(net)
    noisy = torch.as_tensor(isbi_slices[0][:1] / 255.0, dtype=torch.float32)  # one whole slice (1, 512, 512)
    out = predict_volume(net, noisy, (256, 256), sw_batch_size=4)  # 9 windows
    assert set(out) == {"coarse", "affinity", "affinity_prob", "final", "denoised"}
    for key, channels in {"coarse": 1, "final": 1, "denoised": 1, "affinity": 10, "affinity_prob": 10}.items():
        assert out[key].shape == (channels, 1, 512, 512), key
        assert out[key].dtype == torch.float32 and out[key].device.type == "cpu"
        assert not torch.is_inference(out[key]) and torch.isfinite(out[key]).all()
    assert 0 <= out["affinity_prob"].min() and out["affinity_prob"].max() <= 1
    assert _flags(net) == before
    # one window covering the image gives a direct forward of the eval-mode network, every key (this caught
    # MONAI's in-place weighting of the aliased "denoised"/"final" outputs); a crop keeps it quick
    crop = noisy[:1, 100:228, 300:428]
    one = predict_volume(net, crop.numpy(), (128, 128), sw_batch_size=1)
    net.eval()
    with torch.no_grad():
        direct = net(crop[:, None])
    for key in out:
        torch.testing.assert_close(one[key][:, 0], direct[key][0], atol=1e-5, rtol=1e-5)


class _TinyFusion(nn.Module):
    def __init__(self, n_offsets: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1 + n_offsets, 1, 3, padding=1)

    def forward(self, image, affinity):
        return self.conv(torch.cat([image, affinity], 1))


def test_predict_volume_whole_medulla_volume_3d():
    """The whole 250^3 medulla cube through a tiny 3-D JointDenoiSegNet (one conv per stage: CPU conv3d is slow)."""
    import h5py

    with h5py.File(data_path("medulla_fibsem.h5"), "r") as f:
        raw = f["volumes/raw"][:]
    assert raw.shape == (250, 250, 250)
    torch.manual_seed(0)
    den = nn.Sequential(nn.Conv3d(1, 1, 3, padding=1), nn.BatchNorm3d(1))
    net = JointDenoiSegNet(den, nn.Conv3d(1, 3, 3, padding=1), _TinyFusion(3)).train()
    t0 = time.perf_counter()
    out = predict_volume(net, torch.as_tensor(raw / 255.0, dtype=torch.float32)[None], (64, 64, 64),
                         sw_batch_size=2, spatial_dims=3)
    elapsed = time.perf_counter() - t0
    assert set(out) == {"coarse", "affinity", "affinity_prob", "final", "denoised"}
    for key, channels in {"coarse": 1, "final": 1, "affinity_prob": 3}.items():
        assert out[key].shape == (channels, 250, 250, 250) and out[key].dtype == torch.float32
    assert net.training and den[1].training
    assert elapsed < 60, elapsed  # ~6 s on 2 quiet cores


class _TwoConvs(nn.Module):
    """A translation-equivariant dict predictor: two different 3x3 convs, plus a marker of each window's border ring."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        ring = torch.ones_like(x)
        ring[..., 1:-1, 1:-1] = 0
        return {"a": self.a(x), "b": self.b(x), "ring": ring}


def test_dict_predictor_keeps_every_key_and_matches_a_full_forward(isbi_slices):
    torch.manual_seed(0)
    net = _TwoConvs()
    x = torch.as_tensor(isbi_slices[0][:, 100:250, 50:220] / 255.0, dtype=torch.float32)  # (2, 150, 170)
    out = predict_volume(net, x, (64, 64), sw_batch_size=3, overlap=0.25, mode="gaussian")
    assert set(out) == {"a", "b", "ring"}
    assert out["a"].shape == (2, 2, 150, 170) and out["b"].shape == (1, 2, 150, 170)
    with torch.no_grad():
        full = net(x[:, None])
    # a 3x3 conv is exact in each window except on the window's outermost ring: away from every ring, the
    # Gaussian-blended result equals the full-image forward
    interior = out["ring"][0] == 0
    assert interior.float().mean() > 0.8
    for key in ("a", "b"):
        ref = full[key].transpose(0, 1)
        err = (out[key] - ref).abs()
        assert err[:, interior].max() < 1e-5, key
        assert err.max() > 1e-3  # on the rings the zero-padded window border leaks in: the check above is not vacuous


def test_predict_volume_small_slices_tensor_output_and_errors():
    net = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(3, 40, 50)
    out = predict_volume(net, x, 64)  # window larger than the slice: padded and cropped back
    assert set(out) == {"pred"} and out["pred"].shape == (1, 3, 40, 50)
    with torch.no_grad():
        torch.testing.assert_close(out["pred"][:, 1], net(x[1:2, None])[0], atol=1e-5, rtol=1e-5)
    assert predict_volume(lambda w: (w, 2 * w), x[0], (32, 32))["1"].shape == (1, 1, 40, 50)  # (H, W), a tuple
    # MONAI weights the outputs in place: aliased outputs (the same tensor twice, the window itself, a view of
    # it) must still come out right, and the caller's input unchanged
    keep = x.clone()
    for roi, batch in (((64, 64), 1), ((24, 24), 2)):  # 1 or 2 slices per inferer call (3 slices)
        def aliased(w):
            y = 2 * w
            return {"same": w, "view": w[:, :1], "y": y, "y_again": y}

        out = predict_volume(aliased, x, roi, sw_batch_size=batch)
        torch.testing.assert_close(x, keep, atol=0, rtol=0)
        for key, ref in {"same": x, "view": x, "y": 2 * x, "y_again": 2 * x}.items():
            torch.testing.assert_close(out[key][0], ref, atol=1e-5, rtol=1e-5)
    # amp is CUDA's float16 autocast; on the CPU it is ignored (as in training): bfloat16 would change the metrics
    amp = predict_volume(net, x, (32, 32), amp=True)["pred"]
    torch.testing.assert_close(amp, predict_volume(net, x, (32, 32))["pred"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="divide by 255"):
        predict_volume(net, (x * 255).to(torch.uint8), (32, 32))
    with pytest.raises(ValueError, match="roi_size"):
        predict_volume(net, x, (32, 32, 32))


# ----------------------------------------------------------------------------------------------- segment
def test_segment_wraps_affinity_to_instances(medulla, isbi, rng):
    lab = isbi[1][:2]
    aff = np.clip(_exact_affinity(lab, PAPER_OFFSETS_2D) + rng.normal(0, 0.1, (10, *lab.shape)), 0, 1)
    seg = segment(torch.as_tensor(aff, dtype=torch.float32), PAPER_OFFSETS_2D)
    assert seg.dtype == np.uint64 and seg.shape == lab.shape
    ref = np.asarray(AffinityToInstances(PAPER_OFFSETS_2D)(aff.astype(np.float32)))[0]
    np.testing.assert_array_equal(seg, ref)
    assert not set(np.unique(seg[0])) & set(np.unique(seg[1]))  # per-slice ids are disjoint
    np.testing.assert_array_equal(segment(aff[:, 0], PAPER_OFFSETS_2D), segment(aff[:, :1], PAPER_OFFSETS_2D)[0])
    masked = segment(aff, PAPER_OFFSETS_2D, mask=lab > 0, strides=(1, 1))
    assert (masked[lab == 0] == 0).all() and (masked[lab > 0] > 0).all()
    vol = segment(_exact_affinity(medulla[1][:4, :48, :48], DEFAULT_OFFSETS_3D), DEFAULT_OFFSETS_3D)
    assert vol.shape == (4, 48, 48) and vol.dtype == np.uint64
    with pytest.raises(ValueError, match="probabilities"):  # logits are refused
        segment(aff * 4 - 2, PAPER_OFFSETS_2D)


def test_blended_probabilities_stay_in_the_unit_interval():
    def net(x):  # probabilities at 1 and 0 exactly, where blending rounding shows most
        return {"affinity_prob": torch.sigmoid(40 * (x - 0.5)), "image": x}

    x = torch.rand(3, 100, 90, generator=torch.Generator().manual_seed(0))
    out = predict_volume(net, x, (32, 32), overlap=0.5)
    assert 0 <= out["affinity_prob"].min() and out["affinity_prob"].max() <= 1
    torch.testing.assert_close(out["image"][0], x, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- metrics
def test_evaluate_prediction_perfect_inputs(medulla, isbi):
    """Images = clean and exact affinities: PSNR inf, SSIM 1, VOI and ARAND ~0 (per slice and per volume)."""
    raw, lab = medulla
    # a mutex-watershed segment is connected: score against the ground truth split into connected pieces
    # (the crop cuts neurons into several pieces per slice; with the raw ids ARAND is ~0.1)
    lab2 = np.stack([connected_pieces(s, background=-1, connectivity=1) for s in lab.astype(np.int64)])
    lab2 = lab2.astype(np.uint64)
    lab3 = connected_pieces(lab.astype(np.int64), background=-1, connectivity=1).astype(np.uint64)
    clean = raw / 255.0
    cases = ((PAPER_OFFSETS_2D, "slice", lab2, (1, 1)), (DEFAULT_OFFSETS_3D, "volume", lab3, (1, 1, 1)))
    for offsets, per, gt, strides in cases:
        aff = _exact_affinity(gt, offsets)
        pred = {"coarse": clean[None], "final": torch.as_tensor(clean[None]), "affinity_prob": aff}
        m = evaluate_prediction(pred, clean, gt, offsets, per=per, mws_kwargs={"strides": strides})
        assert set(m) == {"psnr_coarse", "ssim_coarse", "psnr_final", "ssim_final",
                          "voi_split", "voi_merge", "voi", "arand"}
        assert m["psnr_coarse"] == math.inf and m["psnr_final"] == math.inf
        assert m["ssim_coarse"] == pytest.approx(1.0, abs=1e-6) and m["ssim_final"] == pytest.approx(1.0, abs=1e-6)
        assert m["voi"] < 0.01 and m["arand"] < 0.01, (per, m)
        assert m["voi"] == pytest.approx(m["voi_split"] + m["voi_merge"])
    # ISBI: ground-truth 0 = membrane, ignored; ids as they are
    ilab = isbi[1]
    m = evaluate_prediction({"affinity_prob": _exact_affinity(ilab, PAPER_OFFSETS_2D)}, labels=ilab)
    assert set(m) == {"voi_split", "voi_merge", "voi", "arand"} and m["arand"] < 0.01 and m["voi"] < 0.05


def _noisy_prediction(raw, lab, rng, offsets):
    clean = raw / 255.0
    coarse = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)
    final = np.clip(clean + rng.normal(0, 0.04, clean.shape), 0, 1)
    aff = np.clip(_exact_affinity(lab, offsets) + rng.normal(0, 0.25, (len(offsets), *lab.shape)), 0, 1)
    return clean, {
        "coarse": coarse[None].astype(np.float32),  # numpy and tensors both accepted
        "final": torch.as_tensor(final[None], dtype=torch.float32),
        "affinity_prob": torch.as_tensor(aff, dtype=torch.float32),
    }


@pytest.mark.parametrize("which", ["isbi", "medulla"])
def test_evaluate_prediction_against_scikit_image(which, medulla, isbi, rng):
    raw, lab = (isbi[0], isbi[1]) if which == "isbi" else medulla
    clean, pred = _noisy_prediction(raw, lab, rng, PAPER_OFFSETS_2D)
    m = evaluate_prediction(pred, clean, lab, PAPER_OFFSETS_2D, per="slice", return_instances=True)
    seg = m.pop("instances")
    assert seg.shape == lab.shape and seg.dtype == np.uint64 and (seg > 0).all()  # no ground-truth mask by default
    np.testing.assert_array_equal(seg, segment(pred["affinity_prob"], PAPER_OFFSETS_2D))
    for key in ("coarse", "final"):
        img = np.asarray(pred[key][0], dtype=np.float64)
        psnr = np.mean([peak_signal_noise_ratio(c, p, data_range=1) for c, p in zip(clean, img)])
        ssim = np.mean([structural_similarity(p, c, win_size=7, data_range=1) for c, p in zip(clean, img)])
        assert m[f"psnr_{key}"] == pytest.approx(psnr, abs=1e-3)
        assert m[f"ssim_{key}"] == pytest.approx(ssim, abs=1e-5)
    voi = np.mean([variation_of_information(g, s, ignore_labels=(0,)) for g, s in zip(lab, seg)], axis=0)
    arand = np.mean([adapted_rand_error(g, s)[0] for g, s in zip(lab, seg)])
    assert m["voi_split"] == pytest.approx(voi[0], abs=1e-9) and m["voi_merge"] == pytest.approx(voi[1], abs=1e-9)
    assert m["arand"] == pytest.approx(arand, abs=1e-9)
    assert m["psnr_final"] > m["psnr_coarse"] and m["ssim_final"] > m["ssim_coarse"]

    # per volume: one 3-D score (3-D offsets, 3-D SSIM with a 7x7x7 window where the stack is deep enough)
    clean, pred = _noisy_prediction(raw, lab, rng, DEFAULT_OFFSETS_3D)
    m = evaluate_prediction(pred, clean, lab, DEFAULT_OFFSETS_3D, per="volume", return_instances=True)
    seg, img = m.pop("instances"), np.asarray(pred["coarse"][0], np.float64)
    assert m["psnr_coarse"] == pytest.approx(peak_signal_noise_ratio(clean, img, data_range=1), abs=1e-3)
    if clean.shape[0] >= 7:
        assert m["ssim_coarse"] == pytest.approx(structural_similarity(img, clean, win_size=7, data_range=1), abs=1e-5)
    voi = variation_of_information(lab, seg, ignore_labels=(0,))
    assert m["voi_split"] == pytest.approx(voi[0], abs=1e-9) and m["voi_merge"] == pytest.approx(voi[1], abs=1e-9)
    assert m["arand"] == pytest.approx(adapted_rand_error(lab, seg)[0], abs=1e-9)


def test_evaluate_prediction_ground_truth_mask_and_missing_parts(isbi, rng):
    raw, lab, _ = isbi
    clean, pred = _noisy_prediction(raw, lab, rng, PAPER_OFFSETS_2D)
    honest = evaluate_prediction(pred, clean, lab, return_instances=True)
    ref = evaluate_prediction(pred, clean, lab, foreground_mask_from_gt=True, return_instances=True)
    assert (ref["instances"][lab == 0] == 0).all() and (ref["instances"][lab > 0] > 0).all()
    assert (honest["instances"] > 0).all()
    # no clean image: no image metrics; no denoiser/fusion outputs: no keys for them; no labels: nothing to score
    m = evaluate_prediction({"affinity_prob": pred["affinity_prob"]}, labels=lab)
    assert set(m) == {"voi_split", "voi_merge", "voi", "arand"}
    assert set(evaluate_prediction({"coarse": pred["coarse"]}, clean=clean)) == {"psnr_coarse", "ssim_coarse"}
    assert evaluate_prediction(pred) == {}
    assert evaluate_prediction(pred, return_instances=True)["instances"].shape == lab.shape
    with pytest.raises(ValueError, match="labels"):
        evaluate_prediction(pred, foreground_mask_from_gt=True, return_instances=True)
    with pytest.raises(ValueError, match="per"):
        evaluate_prediction(pred, labels=lab, per="tile")
    with pytest.raises(ValueError, match="labels"):
        evaluate_prediction(pred, labels=lab[:2])


def test_evaluate_prediction_binary_task(lucchi, rng):
    raw, mito = lucchi
    gt = mito > 0
    prob = np.clip(gt + rng.normal(0, 0.35, gt.shape), 0, 1).astype(np.float32)
    pred = {"mito_prob": prob[None], "affinity_prob": np.zeros((10, *gt.shape), np.float32)}
    m = evaluate_prediction(pred, labels=mito, binary_key="mito_prob", return_instances=True)
    p = prob > 0.5
    inter, union = (p & gt).sum((1, 2)), (p | gt).sum((1, 2))
    assert m["iou"] == pytest.approx(np.mean(inter / union), abs=1e-6)
    assert m["f1"] == pytest.approx(np.mean(2 * inter / (p.sum((1, 2)) + gt.sum((1, 2)))), abs=1e-6)
    assert set(m) == {"iou", "f1", "instances"} and m["instances"].dtype == np.uint64
    vol = evaluate_prediction(pred, labels=mito, binary_key="mito_prob", per="volume")
    assert vol["iou"] == pytest.approx((p & gt).sum() / (p | gt).sum(), abs=1e-6)
    alone = evaluate_prediction({"coarse": prob[None]}, clean=prob, labels=mito, binary_key="mito_prob",
                                return_instances=True)  # a denoiser alone: image metrics, nothing segmented
    assert set(alone) == {"psnr_coarse", "ssim_coarse", "instances"} and alone["instances"] is None


# ------------------------------------------------------------------------------------------------ output
def test_save_metrics_round_trip(tmp_path):
    rows = [{"volume": "mean", "psnr_final": math.inf, "voi": 0.123456789012345, "arand": np.float32(0.25)},
            {"volume": 0, "voi": np.float64(1 / 3), "iou": math.nan, "n": np.int64(7)}]
    paths = save_metrics(rows, tmp_path / "new", name="val")
    assert paths["json"].name == "val.json" and paths["csv"].name == "val.csv"
    back = json.loads(paths["json"].read_text())
    assert back[0] == {"volume": "mean", "psnr_final": math.inf, "voi": 0.123456789012345, "arand": 0.25}
    assert back[1]["voi"] == 1 / 3 and math.isnan(back[1]["iou"]) and back[1]["n"] == 7
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["volume", "psnr_final", "voi", "arand", "iou", "n"]
    assert float(table[0]["psnr_final"]) == math.inf and float(table[0]["voi"]) == 0.123456789012345
    assert table[1]["psnr_final"] == "" and float(table[1]["voi"]) == 1 / 3
    single = save_metrics({"voi": 0.5}, tmp_path)
    assert json.loads(single["json"].read_text()) == {"voi": 0.5}


def test_save_figure(tmp_path, isbi_slices, rng):
    raw, lab = isbi_slices
    clean = raw[0] / 255.0
    noisy = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1)
    aff = _exact_affinity(lab[:1], PAPER_OFFSETS_2D)[:, 0]
    seg = segment(aff, PAPER_OFFSETS_2D)
    t0 = time.perf_counter()
    path = save_figure(tmp_path / "fig" / "f.png", noisy, torch.as_tensor(clean), clean, raw[0], aff, seg,
                       lab[0].astype(np.uint64) + np.uint64(2**63), title="joint: val")
    elapsed = time.perf_counter() - t0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1200, 600)
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10
    blank = save_figure(tmp_path / "blank.png", noisy, None, None, None, None, None, None, panel_inches=2, dpi=50)
    with Image.open(blank) as im:
        assert im.size == (400, 200)
    assert elapsed < 5, elapsed  # ~0.5 s on 2 shared cores
    with pytest.raises(ValueError, match="2-D"):
        save_figure(tmp_path / "bad.png", noisy=np.zeros((2, 3, 8, 8)))


def test_predict_volume_progress_bar_changes_nothing_but_stderr(capsys):
    net = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(20, 40, 50)  # 3 blocks of 8 slices: a bar over the blocks
    quiet = predict_volume(net, x, (32, 32))["pred"]
    assert "predict" not in capsys.readouterr().err
    torch.testing.assert_close(predict_volume(net, x, (32, 32), progress=True)["pred"], quiet, atol=0, rtol=0)
    assert "3/3" in capsys.readouterr().err
