"""The default bundle end to end through `python -m monai.bundle`: metadata, training, evaluation, inference."""

import json
import os
import subprocess
import sys

import h5py
import jsonschema
import numpy as np
import tifffile
from conftest import BUNDLES_DIR, DATA_DIR, data_path, run_bundle

BUNDLE = BUNDLES_DIR / "medulla_fibsem_denoiseg"
SCHEMA = DATA_DIR.parent / "monai" / "meta_schema_20240725.json"


def bundle(cmd, configs, tmp_path, *overrides, cwd=None):
    return run_bundle(BUNDLE.name, cmd, configs, tmp_path, *overrides, cwd=cwd)


def test_metadata_is_valid_against_the_model_zoo_schema():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    assert meta["version"] in meta["changelog"] and (BUNDLE / "LICENSE").is_file()


def test_train_evaluate_infer_from_inside_the_bundle(tmp_path):
    tiny = ["--epochs", "1", "--iterations_per_epoch", "2", "--val_interval", "1", "--num_workers", "0",
            "--patch_size", "[64,64]", "--splits", "{'train': [0, 20], 'val': [170, 172], 'test': [200, 202]}"]
    bundle("training", ["train.yaml"], tmp_path, *tiny, cwd=BUNDLE)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "out" / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    bundle("evaluating", ["train.yaml", "evaluate.yaml"], tmp_path, *tiny)
    metrics = json.loads((tmp_path / "out" / "test" / "metrics_test_epoch1.json").read_text())
    row = metrics[0] if isinstance(metrics, list) else metrics
    assert {"psnr_final", "ssim_final", "voi", "arand"} <= set(row)

    stack = tmp_path / "isbi.tif"  # a user-supplied TIFF stack: a crop of ISBI 2012, kept in tmp only
    tifffile.imwrite(stack, tifffile.imread(data_path("isbi2012", "train-input.tif"))[:2])
    bundle("inference", ["inference.yaml"], tmp_path, "--input_file", str(stack), "--input_key", "$None",
           "--checkpoint", str(tmp_path / "models" / "model.pt"), "--output_dir", str(tmp_path / "pred"))
    den, inst = tifffile.imread(tmp_path / "pred" / "isbi_denoised.tif"), tifffile.imread(tmp_path / "pred" / "isbi_instances.tif")
    assert den.shape == inst.shape == (2, 512, 512) and den.dtype == np.uint8 and inst.max() > 0

    with h5py.File(data_path("medulla_fibsem.h5")) as f, h5py.File(tmp_path / "vol.h5", "w") as g:
        g["volumes/raw"] = f["volumes/raw"][:2, :100, :100]
    bundle("inference", ["inference.yaml"], tmp_path, "--input_file", str(tmp_path / "vol.h5"),
           "--checkpoint", str(tmp_path / "models" / "model.pt"), "--output_dir", str(tmp_path / "pred"))
    with h5py.File(tmp_path / "pred" / "vol_prediction.h5") as f:
        assert f["volumes/raw_denoised"].shape == f["volumes/labels/instances"].shape == (2, 100, 100)


def test_missing_data_says_where_to_put_it(tmp_path):
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
            str(BUNDLE / "configs" / "train.yaml"), "--data_dir", str(tmp_path), "--download", "$None",
            "--output_dir", str(tmp_path / "out")]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "MONAI_DENOISEG_DATA": ""})
    assert res.returncode != 0 and "MONAI_DENOISEG_DATA" in res.stderr and "medulla_fibsem.h5" in res.stderr
