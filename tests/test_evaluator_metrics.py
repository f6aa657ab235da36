"""The evaluator's metrics are MONAI metric handlers (key_val_metric / additional_metrics) on real medulla
predictions: the same numbers as evaluate_prediction (per slice, averaged per volume, then over volumes),
a key metric swapped from the bundle's YAML alone, and the per-volume outputs reaching user handlers."""

from __future__ import annotations

import json

import monai
import numpy as np
import pytest
import torch
from conftest import BUNDLES_DIR, DATA_DIR, data_path
from ignite.engine import Events

from monai_denoiseg.data.datasets import load_split
from monai_denoiseg.engines import get_strategy
from monai_denoiseg.engines.evaluation import evaluate_prediction, predict_volume
from monai_denoiseg.engines.evaluator import DenoiSegEvaluator
from monai_denoiseg.networks import paper_joint_net
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D

F = (4, 8, 16)
ROI = (64, 64)


def tiny_net(n_offsets=10):
    torch.manual_seed(0)
    return paper_joint_net(2, n_offsets=n_offsets, denoiser_kwargs={"features": F}, segmenter_kwargs={"features": F},
                           features=F, iem_levels=(1, 2))


@pytest.fixture(scope="module")
def volumes():
    """Two medulla volumes of different depths (3 and 7 slices, 96 x 96): a mean over volumes of per-volume slice
    means differs from a mean over all slices, and 7 slices take a 3-D SSIM with per='volume'."""
    split = load_split(data_path("medulla_fibsem.h5"), (0, 10), noise_seed=3)
    crop = {k: v[:, :96, :96] for k, v in split.items()}
    return [{k: v[:3] for k, v in crop.items()}, {k: v[3:] for k, v in crop.items()}]


def expected_metrics(net, volumes, strategy, per, binary_key=None):
    """evaluate_prediction of each volume on the same prediction (predict_volume with the evaluator's settings)."""
    s = get_strategy(strategy)
    rows = []
    for vol in volumes:
        pred = predict_volume(net, torch.as_tensor(vol["noisy"] / 255.0, dtype=torch.float32), ROI, sw_batch_size=4,
                              overlap=0.25, spatial_dims=2, device=torch.device("cpu"),
                              network_kwargs=s.network_kwargs)
        rows.append(evaluate_prediction(pred, clean=np.asarray(vol["clean"], dtype=np.float32) / 255.0,
                                        labels=vol["label"], offsets=None if binary_key else PAPER_OFFSETS_2D,
                                        per=per, binary_key=binary_key))
    return rows


@pytest.mark.parametrize("strategy,per,binary", [("joint", "slice", False), ("joint", "volume", False),
                                                 ("n2v_joint_iem", "slice", False), ("joint", "slice", True)])
def test_every_metric_equals_evaluate_prediction(volumes, strategy, per, binary, tmp_path):
    net = tiny_net(1 if binary else 10)
    binary_key = "affinity_prob" if binary else None
    ev = DenoiSegEvaluator("cpu", volumes, net, strategy, offsets=None if binary else PAPER_OFFSETS_2D, roi_size=ROI,
                           per=per, binary_key=binary_key, output_dir=tmp_path)
    ev.run()
    rows = expected_metrics(net, volumes, strategy, per, binary_key)
    names = set(rows[0])
    images = {"psnr_coarse", "ssim_coarse", "psnr_final", "ssim_final"}
    assert names == images | ({"iou", "f1"} if binary else {"voi", "voi_split", "voi_merge", "arand"})
    extra = {"self_supervised_loss"} if get_strategy(strategy).uses_blind_spots else set()
    assert set(ev.state.metrics) == names | extra
    assert ev.state.key_metric_name == ("iou" if binary else "voi")
    saved = json.loads((tmp_path / "metrics_val_epoch1.json").read_text())
    assert [r["volume"] for r in saved] == ["mean", 0, 1]
    for name in names:
        mean = np.nanmean([r[name] for r in rows])  # today's evaluator: the mean over volumes
        np.testing.assert_allclose(ev.state.metrics[name], mean, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(saved[0][name], mean, rtol=1e-6, atol=1e-6, err_msg=name)
        for i, r in enumerate(rows):  # one row per volume, from the handlers' metric_details
            np.testing.assert_allclose(saved[i + 1][name], r[name], rtol=1e-6, atol=1e-6, err_msg=f"{name} {i}")
    if extra:
        assert np.isfinite(ev.state.metrics["self_supervised_loss"]) and "self_supervised_loss" in saved[1]
    assert (tmp_path / "metrics_val_epoch1.csv").read_text().splitlines()[1].startswith("mean,")


def bundle_parser(tmp_path, **extra):
    name = "medulla_fibsem_denoiseg"
    p = monai.bundle.ConfigParser()
    p.read_config([str(BUNDLES_DIR / name / "configs" / c) for c in ("train.yaml", "evaluate.yaml")])
    p.update({"bundle_root": str(BUNDLES_DIR / name), "data_dir": str(DATA_DIR), "device": "$torch.device('cpu')",
              "amp": False, "splits": {"train": [0, 2], "val": [170, 172], "test": [200, 202]}, "crop": [96, 96],
              "roi_size": [96, 96], "features": [4, 8, 16, 32], "output_dir": str(tmp_path / "out"),
              "cache_dir": str(tmp_path / "cache"), **extra})
    return p


def test_bundle_swaps_the_key_metric_and_adds_a_monai_metric_from_yaml_alone(tmp_path):
    """The shipped configs give VOI as key metric; a YAML override makes ARAND the key and adds MONAI's own PSNR
    handler, without code: the strategy's other metrics stay, the JSON gains the new column."""
    torch.manual_seed(0)  # the same (untrained) network weights in both evaluators
    default = bundle_parser(tmp_path / "a").get_parsed_content("test#evaluator")
    default.run()
    assert default.state.key_metric_name == "voi" and "monai_psnr" not in default.state.metrics

    override = {
        "test#evaluator#key_val_metric": {"arand": {
            "_target_": "IgniteMetricHandler",
            "metric_fn": {"_target_": "monai_denoiseg.metrics.AdaptedRandErrorMetric", "mode": "@eval_per"},
            "output_transform": "$monai.handlers.from_engine(['instances', 'label'])"}},
        "test#evaluator#additional_metrics": {"monai_psnr": {
            "_target_": "PeakSignalToNoiseRatio", "max_val": 1.0,
            "output_transform": "$monai.handlers.from_engine(['final', 'clean'])"}},
        "test#evaluator#metric_cmp_fn": "$lambda current, best: current < best",
    }
    p = bundle_parser(tmp_path / "b")
    for k, v in override.items():
        p[k] = v
    torch.manual_seed(0)
    ev = p.get_parsed_content("test#evaluator")
    ev.run()
    m = ev.state.metrics
    assert ev.state.key_metric_name == "arand" and ev.state.best_metric == m["arand"]
    assert set(default.state.metrics) | {"monai_psnr"} == set(m)  # voi and the rest still reported
    for k, v in default.state.metrics.items():  # same network weights (seeded), same numbers
        assert m[k] == pytest.approx(v, rel=1e-6), k
    # MONAI's PSNR on the whole (1, 1, D, H, W) volume: 10 log10(1 / MSE), no clipping
    vols = p.get_parsed_content("test#volumes")
    assert np.isfinite(m["monai_psnr"]) and 0 < m["monai_psnr"] < 60 and len(vols["noisy"]) == 2
    row = json.loads((tmp_path / "b" / "out" / "test" / "metrics_test_epoch1.json").read_text())[0]
    assert row["monai_psnr"] == pytest.approx(m["monai_psnr"]) and row["arand"] == pytest.approx(m["arand"])


def test_user_handlers_receive_every_volumes_outputs(volumes):
    """A plain ignite handler sees each volume's predictions and targets in state.output; a user metric handler in
    additional_metrics is fed them (one metric_details row per volume) and lands in state.metrics."""
    seen = []

    class Recorder:
        def attach(self, engine):
            engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output)))

    user = monai.handlers.MeanAbsoluteError(output_transform=monai.handlers.from_engine(["final", "clean"]))
    ev = DenoiSegEvaluator("cpu", volumes, tiny_net(), "joint", roi_size=ROI, val_handlers=[Recorder()],
                           additional_metrics={"mae_final": user})
    ev.run()
    assert [o["index"] for o in seen] == [0, 1]
    for o, vol in zip(seen, volumes):
        shape = (1, 1) + vol["noisy"].shape
        for key in ("coarse", "final", "clean", "instances", "label"):
            assert tuple(o[key].shape) == shape, key
        assert o["affinity_prob"].shape == (1, 10) + vol["noisy"].shape
        np.testing.assert_array_equal(o["label"][0, 0], vol["label"])
        assert o["instances"].dtype == np.uint64 and o["instances"].max() > 0
    details = ev.state.metric_details["mae_final"]
    assert details.shape[0] == 2
    mae = [float((o["final"] - o["clean"]).abs().mean()) for o in seen]
    np.testing.assert_allclose(details.reshape(2).numpy(), mae, rtol=1e-5)
    assert ev.state.metrics["mae_final"] == pytest.approx(np.mean(mae), rel=1e-5)
    assert {"voi", "psnr_final", "mae_final"} <= set(ev.state.metrics)


def test_slice_averaged_metric_and_single_terms(medulla):
    """SliceAveragedMetric: per volume, the mean of the 2-D metric over its slices (NaN slices left out), then the
    mean over volumes; term= makes a VOI / ARAND metric report that one term (what voi_split / voi_merge use)."""
    from monai.metrics import MeanIoU

    from monai_denoiseg.metrics import (AdaptedRandErrorMetric, SliceAveragedMetric, UnitRangePSNRMetric,
                                        VariationOfInformationMetric, variation_of_information)

    raw, lab = medulla
    img = torch.as_tensor(raw / 255.0, dtype=torch.float32)
    noisy = (img + 0.1 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    m = SliceAveragedMetric(UnitRangePSNRMetric())
    m(noisy[None, None, :3], img[None, None, :3])
    m(noisy[None, None, 3:], img[None, None, 3:])
    psnr = UnitRangePSNRMetric()(noisy[:, None], img[:, None])[:, 0].double()
    per_volume = [psnr[:3].mean(), psnr[3:].mean()]
    torch.testing.assert_close(m.get_buffer()[:, 0], torch.stack(per_volume))
    assert float(m.aggregate()) == pytest.approx(float(sum(per_volume) / 2), rel=1e-12)
    fg = torch.as_tensor(lab > 0, dtype=torch.float32)
    fg[2] = 0  # a slice without foreground: NaN IoU, left out of its volume's mean
    iou = SliceAveragedMetric(MeanIoU(reduction="none"))((noisy > 0.5)[None, None].float(), fg[None, None])
    per_slice = MeanIoU(reduction="none")((noisy > 0.5)[:, None].float(), fg[:, None])[:, 0].double()
    assert torch.isnan(per_slice[2]) and float(iou) == pytest.approx(float(per_slice.nanmean()), rel=1e-12)

    seg = (raw > 128).astype(np.uint64) + 1
    whole = VariationOfInformationMetric()
    whole(seg[None, None], lab[None, None])
    for term in ("total", "split", "merge"):
        one = VariationOfInformationMetric(term=term)
        one(seg[None, None], lab[None, None])
        assert one.get_buffer().shape == (1, 1)
        assert float(one.aggregate()) == pytest.approx(float(whole.aggregate_terms()[term]), rel=1e-12)
    split = np.mean([variation_of_information(s, g).split for s, g in zip(seg, lab)])
    assert float(whole.aggregate_terms()["split"]) == pytest.approx(split, rel=1e-12)
    with pytest.raises(ValueError, match="Unsupported option .voi."):
        AdaptedRandErrorMetric(term="voi")


def test_metrics_never_all_gather(volumes, monkeypatch):
    """In the bundles' DDP runs rank 0 alone validates, on all the volumes: a metric buffer all-gathered across
    ranks would wait forever for the others. The evaluator's handlers (a user's MONAI metric too) stay local."""
    import monai.metrics.metric

    def gather(*args, **kwargs):
        raise AssertionError("all-gather called")

    monkeypatch.setattr(monai.metrics.metric, "evenly_divisible_all_gather", gather)
    user = monai.handlers.MeanSquaredError(output_transform=monai.handlers.from_engine(["final", "clean"]))
    ev = DenoiSegEvaluator("cpu", volumes[:1], tiny_net(), "n2v_joint_iem", roi_size=ROI,
                           additional_metrics={"mse_final": user})
    ev.run()
    assert {"voi", "psnr_final", "self_supervised_loss", "mse_final"} <= set(ev.state.metrics)
