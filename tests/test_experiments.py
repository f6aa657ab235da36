"""The experiment runner's bookkeeping: results recorded by an earlier sitting survive a fresh checkout
(whose git-ignored runs/ is empty), and every seed that ran is collected, also seeds beyond the default."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def experiments(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("experiments", ROOT / "benchmarks" / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "experiments", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    return module


def _finish(experiments, name, row, seed, voi):
    metrics = experiments.run_dir(name, row, seed) / "test" / "metrics_test_epoch1.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps([{"voi": voi, "psnr_final": 20.0}]))


def test_recorded_rows_survive_and_extra_seeds_are_collected(experiments):
    name = "medulla_real_noise"  # no noisy-input row: collect reads no data
    experiments.RESULTS.mkdir()
    (experiments.RESULTS / f"{name}.json").write_text(json.dumps({"rows": {"seg_only": {"0": {"voi": 2.5}},
                                                                           "gone_row": {"0": {"voi": 9.0}}}}))
    _finish(experiments, name, "seg_only", 1, 3.0)
    _finish(experiments, name, "n2v_joint_supervised+unlabelled", 7, 2.0)  # a seed given with --seeds
    rows = experiments.collect(name)["rows"]
    assert rows["seg_only"] == {"0": {"voi": 2.5}, "1": {"voi": 3.0, "psnr_final": 20.0, "psnr": 20.0, "ssim": None}}
    assert rows["n2v_joint_supervised+unlabelled"]["7"]["voi"] == 2.0
    assert "gone_row" not in rows  # a row no longer in the experiment is not reported
    assert json.loads((experiments.RESULTS / f"{name}.json").read_text())["rows"] == rows
    assert str(1) in experiments.recorded(name)["seg_only"]  # a later `run` skips it
