"""MONAI's bundle workflow contract: ``create_workflow(workflow_type="train")`` finds every required train
property of every bundle, initialises it, and runs a real (tiny) training through the standard run ids."""

import json

import monai.bundle
import pytest
import torch
from conftest import BUNDLES_DIR, DATA_DIR
from test_bundles import DATA, NAMES, TINY, _value

from monai_denoiseg.engines import DenoiSegTrainer


def workflow(name, tmp_path, **extra):
    overrides = {k: _value(v) for k, v in {**DATA[name], **TINY, **extra}.items()}
    return monai.bundle.create_workflow(
        config_file=str(BUNDLES_DIR / name / "configs" / "train.yaml"), workflow_type="train",
        meta_file=str(BUNDLES_DIR / name / "configs" / "metadata.json"),
        bundle_root=str(BUNDLES_DIR / name), dataset_dir=str(DATA_DIR), output_dir=str(tmp_path / "out"),
        model_dir=str(tmp_path / "models"), cache_dir=str(tmp_path / "cache"), **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_create_workflow_finds_every_train_property(name, tmp_path):
    wf = workflow(name, tmp_path)
    assert wf.check_properties() == []  # required ones present, optional ones under MONAI's ids
    assert isinstance(wf.trainer, DenoiSegTrainer) and wf.max_epochs == 1 and wf.val_interval == 1
    assert wf.dataset_dir == str(DATA_DIR) and wf.parser.get_parsed_content("data_dir") == str(DATA_DIR)
    assert isinstance(wf.train_inferer, monai.inferers.SimpleInferer) and wf.trainer.inferer is wf.train_inferer
    assert wf.evaluator is wf.parser.get_parsed_content("validate#evaluator")


def test_the_standard_run_ids_train_the_medulla_bundle(tmp_path):
    wf = workflow("medulla_fibsem_denoiseg", tmp_path, seed="3")
    wf.run()
    wf.finalize()
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 2 and (tmp_path / "models" / "model.pt").is_file()
    assert ckpt["provenance"]["seed"] == 3
    metrics = json.loads((tmp_path / "out" / "validation" / "metrics_val_epoch1.json").read_text())
    assert "voi" in metrics[0]


def test_every_run_has_its_own_folder_outside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {}
    for strategy, seed in (("joint", "0"), ("joint", "1"), ("seg_only", "0")):
        p = monai.bundle.ConfigParser()
        p.read_config(str(BUNDLES_DIR / "medulla_fibsem_denoiseg" / "configs" / "train.yaml"))
        p.update({"strategy": strategy, "seed": _value(seed), "bundle_root": str(BUNDLES_DIR / "medulla_fibsem_denoiseg")})
        paths[strategy, seed] = {k: p.get_parsed_content(k) for k in ("output_dir", "model_dir", "ckpt_dir", "cache_dir")}
    assert paths["joint", "0"]["output_dir"] == "runs/medulla_fibsem_denoiseg/joint_seed0"
    assert len({v["output_dir"] for v in paths.values()}) == 3  # a second seed never replaces the first
    for v in paths.values():  # all relative to where it runs: nothing lands in the source tree
        assert all(not str(path).startswith(str(BUNDLES_DIR)) for path in v.values())
        assert v["model_dir"].startswith(v["output_dir"]) and v["ckpt_dir"].startswith(v["output_dir"])
