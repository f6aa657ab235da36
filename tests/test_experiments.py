"""The experiment runner's bookkeeping: results recorded by an earlier sitting survive a fresh checkout
(whose git-ignored runs/ is empty), and every seed that ran is collected, also seeds beyond the default."""

import importlib.util
import json
import subprocess
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


@pytest.fixture()
def fake_data(tmp_path, monkeypatch, experiments):
    """A data folder with stand-ins for the medulla and Lucchi++ files, and a cache of its own."""
    monkeypatch.setenv("MONAI_DENOISEG_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    names = ("medulla_fibsem.h5", "lucchi_pp/train-input.tif", "lucchi_pp/train-labels.tif", "lucchi_pp/test-input.tif")
    for name in names:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(name.encode())
    monkeypatch.setattr(experiments, "DATA", data)
    return data


_REAL_RUN = subprocess.run


def _fake_bundle_run(args, **kwargs):
    """``monai.bundle run`` stand-in: training leaves a model, evaluating the test metrics (git runs for real)."""
    if "monai.bundle" not in args:
        return _REAL_RUN(args, **kwargs)
    out = Path(args[args.index("--output_dir") + 1])
    if args[args.index("run") + 1] == "training":
        (out / "models").mkdir(parents=True, exist_ok=True)
        (out / "models" / "model.pt").write_bytes(b"")
    else:
        (out / "test").mkdir(parents=True, exist_ok=True)
        (out / "test" / "metrics_test_epoch1.json").write_text(json.dumps([{"voi": 1.5, "psnr_final": 25.0}]))
    return subprocess.CompletedProcess(args, 0)


def test_each_run_records_provenance_and_collect_keeps_it(experiments, fake_data, monkeypatch):
    import hashlib

    from monai_denoiseg.provenance import config_hash

    monkeypatch.setattr(experiments.subprocess, "run", _fake_bundle_run)
    name = "medulla_real_noise"
    experiments.run_one(name, "seg_only", 4)
    prov = json.loads((experiments.run_dir(name, "seg_only", 4) / "run.json").read_text())["provenance"]
    assert prov["seed"] == 4 and prov["commit"] and isinstance(prov["dirty"], bool)
    assert prov["config_hash"] == config_hash(experiments.run_config(name, "seg_only"))
    assert prov["data_md5"] == {str(fake_data / "medulla_fibsem.h5"): hashlib.md5(b"medulla_fibsem.h5").hexdigest()}
    assert prov["versions"]["torch"] and prov["versions"]["monai"]
    assert experiments.collect(name)["rows"]["seg_only"]["4"]["provenance"] == prov


def test_run_config_hash_is_shared_by_seeds_and_changes_with_what_determines_a_run(experiments, fake_data):
    from monai_denoiseg.provenance import config_hash

    name = "medulla_2d"
    h = {row: config_hash(experiments.run_config(name, row)) for row in ("dn_only", "seg_only", "sequential")}
    assert len(set(h.values())) == 3
    p0, p1 = experiments.run_provenance(name, "joint", 0), experiments.run_provenance(name, "joint", 1)
    assert p0["config_hash"] == p1["config_hash"] and (p0["seed"], p1["seed"]) == (0, 1)
    files = experiments.run_config(name, "joint")["config_files"]
    assert set(files) == {"train.yaml", "evaluate.yaml"} and files["train.yaml"]["dataset_dir"] is None  # parsed YAML
    experiments.EXPERIMENTS[name].scale["lr"] = "1e-3"  # the module is this test's own copy
    assert config_hash(experiments.run_config(name, "seg_only")) != h["seg_only"]
    h = {row: config_hash(experiments.run_config(name, row)) for row in ("dn_only", "seg_only", "sequential")}
    experiments.EXPERIMENTS[name].rows["dn_only"]["dropout"] = "0.1"  # only the row Sequential reuses changes
    assert config_hash(experiments.run_config(name, "sequential")) != h["sequential"]
    assert config_hash(experiments.run_config(name, "seg_only")) == h["seg_only"]
    assert [p.name for p in experiments.data_files("lucchi_mito")] == ["train-input.tif", "train-labels.tif",
                                                                       "test-input.tif"]  # test-labels.tif: absent


def _prov(config, md5="aa", commit="c0ffee"):
    return {"commit": commit, "dirty": False, "config_hash": config, "data_md5": {"/d/x.h5": md5}, "seed": 0}


def test_report_warns_when_a_row_mixes_configs_and_keeps_entries_without_provenance(experiments, capsys):
    name = "medulla_real_noise"
    rows = {"seg_only": {"0": {"voi": 2.5, "provenance": _prov("h1")}, "1": {"voi": 2.7, "provenance": _prov("h2")},
                         "2": {"voi": 2.6}},
            "n2v_joint_iem": {"0": {"voi": 2.0, "provenance": _prov("h3", commit="a")},
                              "1": {"voi": 2.1, "provenance": _prov("h3", commit="b")}},
            "n2v_joint_supervised": {"0": {"voi": 2.2, "provenance": _prov("h4", md5="aa")},
                                     "1": {"voi": 2.3, "provenance": _prov("h4", md5="bb")}}}
    experiments.RESULTS.mkdir()
    (experiments.RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows}))

    notes, warnings = experiments.provenance_report({"rows": rows}, {"seg_only": "h1"})
    assert len(warnings) == 2
    assert "'seg_only'" in warnings[0] and "different config:" in warnings[0]
    assert "seeds 0 (config h1" in warnings[0] and "seeds 1 (config h2" in warnings[0]
    assert "'n2v_joint_supervised'" in warnings[1] and "different data:" in warnings[1]
    seg = next(line for line in notes if line.startswith("seg_only:"))
    assert "no provenance: seeds 2" in seg and "h2, data" in seg and "(not the current config)" in seg
    (current,) = [part for part in seg.split("; ") if "config h1" in part]
    assert "(not the current config)" not in current

    assert experiments.main(["report", name]) == 0
    out, err = capsys.readouterr()
    assert "WARNING medulla_real_noise: row 'seg_only' mixes" in err and "n2v_joint_iem" not in err  # commits may differ
    assert "> **Warning:** row 'seg_only'" in out and "no provenance: seeds 2" in out
    assert json.loads((experiments.RESULTS / f"{name}.json").read_text())["rows"] == rows  # kept as recorded


def test_lucchi_denoiser_entries_record_provenance(experiments, fake_data, monkeypatch):
    from monai_denoiseg.provenance import config_hash

    spec = importlib.util.spec_from_file_location("lucchi_mito", ROOT / "benchmarks" / "lucchi_mito.py")
    lucchi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lucchi)  # its `import experiments` is this test's copy
    assert lucchi.ex is experiments
    monkeypatch.setattr(experiments, "run_one", lambda *a: None)
    monkeypatch.setattr(experiments, "update_docs", lambda tables: None)  # never docs/results.md
    monkeypatch.setattr(lucchi, "evaluate_seed", lambda seed: {"bm3d/sigma25": {"psnr": 30.0 + seed}})
    assert lucchi.main(["--seeds", "0", "1"]) == 0
    rows = json.loads((experiments.RESULTS / "lucchi_mito_denoisers.json").read_text())["rows"]["bm3d/sigma25"]
    assert [rows[s]["psnr"] for s in ("0", "1")] == [30.0, 31.0]
    assert [rows[s]["provenance"]["seed"] for s in ("0", "1")] == [0, 1]
    assert rows["0"]["provenance"]["config_hash"] == config_hash(lucchi.evaluation_config())
    assert sorted(rows["0"]["provenance"]["data_md5"]) == sorted(str(p) for p in experiments.data_files("lucchi_mito"))
    assert set(lucchi.evaluation_config()["runs"]) == set(experiments.EXPERIMENTS["lucchi_mito"].rows)


def test_before_after_puts_the_old_and_new_means_side_by_side(experiments):
    before = {"rows": {"joint": {"0": {"voi": 3.0}, "1": {"voi": 4.0}}}}
    after = {"rows": {"joint": {"0": {"voi": 2.0}}, "joint_iem_off": {"0": {"voi": 2.5}, "1": {"voi": 3.5}}}}
    lines = experiments.before_after(before, after, ["voi"]).splitlines()
    assert lines[2] == "| joint | 3.5000 (n=2) → 2.0000 (n=1) |"
    assert lines[3] == "| joint_iem_off | - → 3.0000 (n=2) |"  # a row the old table did not have
