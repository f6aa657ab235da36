"""Every dataset bundle: complete, metadata valid offline, configs instantiate, and train / evaluate / infer
end to end through ``python -m monai.bundle`` on real data (CREMI and SNEMI bundles on the medulla file, which
has the CREMI layout, and on ISBI TIFF stacks). Plus distribution of a trained bundle: Model Zoo zip ->
loopback ``monai.bundle download`` -> load, TorchScript ``ckpt_export``, and ``torchrun`` DDP with gloo."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import h5py
import monai
import numpy as np
import pytest
import tifffile
import torch
from conftest import BUNDLES_DIR, DATA_DIR, data_path, run_bundle

from monai_denoiseg.bundle import release as bt
from monai_denoiseg.engines import get_strategy, load_network_weights
from monai_denoiseg.metrics import variation_of_information

NAMES = ["medulla_fibsem_denoiseg", "cremi_denoiseg", "snemi_ac34_denoiseg", "isbi2012_denoiseg", "lucchi_mito_n2v", "em_denoiseg"]
SCHEMA = DATA_DIR.parent / "monai" / "meta_schema_20240725.json"
ISBI = {"train_file": data_path("isbi2012", "train-input.tif"), "train_label_file": data_path("isbi2012", "train-labels.tif")}

# Data overrides that point each bundle at the shared real data, and a tiny split of it.
DATA = {
    "medulla_fibsem_denoiseg": {"splits": "{'train': [0, 10], 'val': [170, 171], 'test': [200, 201]}"},
    "cremi_denoiseg": {"data_file": data_path("medulla_fibsem.h5"), "crop": "[160,160]",
                       "splits": "{'train': [0, 10], 'val': [170, 171], 'test': [-2, None]}"},
    "snemi_ac34_denoiseg": {**ISBI, "test_file": ISBI["train_file"], "test_label_file": ISBI["train_label_file"],
                            "noise": "film", "splits": "{'train': [0, 4], 'val': [20, 21], 'test': [-1, None]}"},
    "isbi2012_denoiseg": {"splits": "{'train': [0, 4], 'val': [20, 21], 'test': [25, 26]}"},
    "lucchi_mito_n2v": {"splits": "{'train': [0, 4], 'val': [70, 71], 'test': [0, 1]}", "pretrain_iterations": "2"},
    "em_denoiseg": {**ISBI, "background_label": "0", "splits": "{'train': [0, 4], 'val': [20, 21], 'test': [25, 26]}"},
}
TINY = {"epochs": "1", "iterations_per_epoch": "2", "val_interval": "1", "num_workers": "0", "patch_size": "[64,64]"}


def overrides(name: str, **extra) -> list[str]:
    return [x for k, v in {**DATA[name], **TINY, **extra}.items() for x in (f"--{k}", str(v))]


def parser(name: str, configs=("train.yaml",), **extra):
    p = monai.bundle.ConfigParser()
    p.read_config([str(BUNDLES_DIR / name / "configs" / c) for c in configs])
    p.update({"bundle_root": str(BUNDLES_DIR / name), "data_dir": str(DATA_DIR), **{k: _value(v) for k, v in
              {**DATA[name], **TINY, **extra}.items()}})
    return p


def _value(v):
    """What the CLI makes of an override: a Python literal where it parses as one, else the string."""
    try:
        return ast.literal_eval(v) if isinstance(v, str) else str(v)
    except (ValueError, SyntaxError):
        return v


@pytest.mark.parametrize("name", NAMES)
def test_bundle_is_complete_and_metadata_valid_offline(name):
    root = BUNDLES_DIR / name
    for f in ("train.yaml", "evaluate.yaml", "inference.yaml", "multi_gpu_train.yaml", "metadata.json"):
        assert (root / "configs" / f).is_file(), f
    for f in ("docs/README.md", "LICENSE", "large_files.yml"):
        assert (root / f).is_file(), f
    bt.verify_bundle_metadata(root, SCHEMA)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["name"] == name and meta["version"] in meta["changelog"]
    assert "## How to run" in (root / "docs" / "README.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_configs_instantiate_and_strategy_is_one_override_away(name, tmp_path):
    p = parser(name, ("train.yaml", "evaluate.yaml"), output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    net = p.get_parsed_content("network_def")
    batch = next(iter(p.get_parsed_content("train#dataloader")))
    assert batch["noisy"].shape == (4, 1, 64, 64) and batch["noisy"].dtype == torch.float32
    if name == "lucchi_mito_n2v":  # a binary target: the label itself, no affinities, no clean image (N2V)
        assert "clean" not in batch and set(torch.unique(batch["label"]).tolist()) <= {0, 1}
        assert net(batch["noisy"])["affinity"].shape == (4, 1, 64, 64)
    else:
        assert batch["affinity"].shape == (4, 10, 64, 64)
    assert p.get_parsed_content("validate#evaluator").volume_list[0]["noisy"].ndim == 3
    assert p.get_parsed_content("test#evaluator").tag == "test"
    inference = monai.bundle.ConfigParser()
    inference.read_config(str(BUNDLES_DIR / name / "configs" / "inference.yaml"))
    inference["bundle_root"] = str(BUNDLES_DIR / name)
    assert inference.get_parsed_content("network_def").state_dict().keys() == net.state_dict().keys()
    for strategy in ("seg_only", "sequential") if name != "lucchi_mito_n2v" else ("n2v_only", "n2v_joint_unsupervised"):
        p2 = parser(name, strategy=strategy, output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
        assert p2.get_parsed_content("train#trainer").strategy.name == strategy


@pytest.mark.parametrize("name", NAMES[1:])  # the medulla bundle: test_bundle_medulla.py
def test_train_evaluate_infer_on_real_data(name, tmp_path):
    run_bundle(name, "training", ["train.yaml"], tmp_path, *overrides(name))
    model = tmp_path / "models" / "model.pt"
    assert model.is_file() and (tmp_path / "out" / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    record = torch.load(tmp_path / "out" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)["provenance"]
    data = [p for p in record["data_md5"] if p.endswith((".h5", ".tif", ".hdf"))]
    assert len(record["commit"]) == 40 and len(record["config_hash"]) == 16 and record["seed"] == 0 and data
    assert record["data_md5"][data[0]] == hashlib.md5(open(data[0], "rb").read()).hexdigest()
    run_bundle(name, "evaluating", ["train.yaml", "evaluate.yaml"], tmp_path, *overrides(name))
    rows = json.loads((tmp_path / "out" / "test" / "metrics_test_epoch1.json").read_text())
    expected = {"iou", "f1", "psnr_coarse"} if name == "lucchi_mito_n2v" else {"psnr_final", "ssim_final", "voi", "arand"}
    assert expected <= set(rows[0]) and all(np.isfinite(rows[0][k]) for k in expected)
    assert (tmp_path / "out" / "test" / "figure_test_epoch1.png").is_file()
    with h5py.File(tmp_path / "out" / "test" / "predictions_test_epoch1.h5", "r") as f:  # what was scored, saved
        seg_key = "mask" if name == "lucchi_mito_n2v" else "instances"
        den, seg = f["volume0/denoised"][()], f[f"volume0/{seg_key}"][()]
    assert den.dtype == np.uint8 and seg.dtype in (np.uint8, np.uint16, np.uint32) and den.shape == seg.shape
    if name != "lucchi_mito_n2v":  # re-scored from the file: the test VOI (the mean over its slices)
        test = parser(name, ("train.yaml", "evaluate.yaml"), cache_dir=str(tmp_path / "cache"))
        label = test.get_parsed_content("test#volumes")["label"]
        voi = np.mean([variation_of_information(s, g).total for s, g in zip(seg, label)])
        assert voi == pytest.approx(rows[0]["voi"], abs=1e-6)

    stack = tmp_path / "stack.tif"  # a user-supplied TIFF stack (an ISBI crop, in tmp only)
    tifffile.imwrite(stack, tifffile.imread(data_path("isbi2012", "train-input.tif"))[:2, :96, :112])
    run_bundle(name, "inference", ["inference.yaml"], tmp_path, "--input_file", str(stack), "--input_key", "$None",
               "--checkpoint", str(model), "--output_dir", str(tmp_path / "pred"))
    seg = "mask" if name == "lucchi_mito_n2v" else "instances"
    den, lab = (tifffile.imread(tmp_path / "pred" / f"stack_{k}.tif") for k in ("denoised", seg))
    assert den.shape == lab.shape == (2, 96, 112) and den.dtype == np.uint8
    if name == "lucchi_mito_n2v":  # p > 0.5 of the trained network in eval mode: one zero-padded window per slice
        cfg = monai.bundle.ConfigParser()
        cfg.read_config(str(BUNDLES_DIR / name / "configs" / "inference.yaml"))
        cfg.update({"bundle_root": str(BUNDLES_DIR / name), "device": "$torch.device('cpu')"})
        net = load_network_weights(cfg.get_parsed_content("network_def"), model)
        x = torch.as_tensor(tifffile.imread(stack) / 255.0, dtype=torch.float32)[:, None]
        x = torch.nn.functional.pad(x, (72, 72, 80, 80))  # MONAI's centred padding of 96 x 112 to the 256 x 256 window
        with torch.no_grad():
            prob = net.eval()(x, stages=get_strategy(cfg["strategy"]).stages)["affinity_prob"][:, 0, 80:176, 72:184]
        assert set(np.unique(lab)) <= {0, 1} and (lab == (prob.numpy() > 0.5)).mean() > 0.999
    else:
        assert lab.max() > 0
    if name == "isbi2012_denoiseg":  # NIfTI in, NIfTI out (x-y-z on disk, z-y-x in the toolkit)
        import nibabel as nib

        nib.save(nib.Nifti1Image(tifffile.imread(stack).T.copy(), np.eye(4)), tmp_path / "stack.nii.gz")
        run_bundle(name, "inference", ["inference.yaml"], tmp_path, "--input_file", str(tmp_path / "stack.nii.gz"),
                   "--input_key", "$None", "--checkpoint", str(model), "--output_dir", str(tmp_path / "nii"))
        den_nii = np.asarray(nib.load(tmp_path / "nii" / "stack_denoised.nii.gz").dataobj).T
        np.testing.assert_array_equal(den_nii, den)  # the same volume, whatever the format
        assert np.asarray(nib.load(tmp_path / "nii" / "stack_instances.nii.gz").dataobj).T.shape == lab.shape


@pytest.fixture
def trained_medulla(tmp_path):
    """A copy of the medulla bundle (configs and docs, no data) with tiny trained weights in its models/."""
    root = tmp_path / "medulla_fibsem_denoiseg"
    shutil.copytree(BUNDLES_DIR / root.name, root, ignore=shutil.ignore_patterns("data", "outputs", "models"))
    run_bundle(root.name, "training", ["train.yaml"], tmp_path, *overrides(root.name), "--model_dir", str(root / "models"))
    assert (root / "models" / "model.pt").is_file()
    return root


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_trained_bundle_zip_downloads_loads_and_exports(trained_medulla, tmp_path):
    name = trained_medulla.name
    eager = bt.load_bundle_network(trained_medulla).eval()
    x = torch.rand(1, 1, 128, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = eager(x)

    zip_path = bt.package_bundle(trained_medulla, tmp_path / "dist")
    assert zip_path.name == f"{name}_v0.1.0.zip"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(zip_path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{zip_path.name}"
        monai.bundle.download(name=name, url=url, bundle_dir=str(tmp_path / "hub"), progress=False)
    finally:
        server.shutdown()
        server.server_close()
    hub = tmp_path / "hub" / name
    assert (hub / "configs" / "train.yaml").is_file() and (hub / "models" / "model.pt").is_file()
    p = monai.bundle.ConfigParser()
    p.read_config(str(hub / "configs" / "inference.yaml"))
    p["bundle_root"] = str(hub)
    loaded = monai.bundle.load(name=name, model=p.get_parsed_content("network_def"), bundle_dir=str(tmp_path / "hub"),
                               device="cpu").eval()
    with torch.no_grad():
        got = loaded(x)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)

    ts = tmp_path / "model.ts"  # TorchScript by tracing (the chain's stage logic is Python): any multiple of 8
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
                          "--ckpt_file", str(hub / "models" / "model.pt"), "--meta_file",
                          str(hub / "configs" / "metadata.json"), "--config_file", str(hub / "configs" / "inference.yaml"),
                          "--bundle_root", str(hub), "--use_trace", "True", "--input_shape", "[1,1,128,128]",
                          "--converter_kwargs", "{'strict': False}"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    scripted = torch.jit.load(str(ts))
    with torch.no_grad():
        out = scripted(x)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-5)


def test_multi_gpu_config_trains_with_torchrun_on_cpu_gloo(tmp_path):
    name = "medulla_fibsem_denoiseg"
    cfg = BUNDLES_DIR / name / "configs"
    files = f"['{cfg / 'train.yaml'}','{cfg / 'multi_gpu_train.yaml'}']"
    # --standalone: the rendezvous store binds a port the OS picks and tells the workers. A port probed free
    # here and bound by torchrun seconds later can be taken in between by any process on the machine.
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "monai.bundle", "run", "training", "--config_file", files, "--output_dir", str(tmp_path / "out"),
            "--model_dir", str(tmp_path / "models"), "--cache_dir", str(tmp_path / "cache"), "--data_dir", str(DATA_DIR),
            *overrides(name)]
    env = {**os.environ, "MONAI_DENOISEG_DATA": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=BUNDLES_DIR.parent, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 2  # 2 iterations per rank, rank 0 saved once
    assert (tmp_path / "models" / "model.pt").is_file()  # rank 0 validated and kept the best model
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped: loads into a plain network
    load_network_weights(bundle_net(name), tmp_path / "models" / "model.pt")


def bundle_net(name: str) -> torch.nn.Module:
    p = monai.bundle.ConfigParser()
    p.read_config(str(BUNDLES_DIR / name / "configs" / "inference.yaml"))
    p["bundle_root"] = str(BUNDLES_DIR / name)
    return p.get_parsed_content("network_def")


def _body(name: str, config: str) -> str:
    text = (BUNDLES_DIR / name / "configs" / config).read_text()
    return text[text.index("# model and data geometry"):] if config == "train.yaml" else text


@pytest.mark.parametrize("name", ["cremi_denoiseg", "snemi_ac34_denoiseg", "isbi2012_denoiseg"])
def test_affinity_bundles_share_the_medulla_bundles_workflow(name):
    """Bundles are self-contained (Model Zoo zips), so their configs repeat one workflow: keep it one."""
    for config in ("train.yaml", "evaluate.yaml", "multi_gpu_train.yaml"):
        assert _body(name, config) == _body(NAMES[0], config), f"{name}/configs/{config} drifted from {NAMES[0]}"


def test_split_keys_load_clean_images_only_where_a_stage_trains_on_them():
    from monai_denoiseg.bundle import split_keys

    assert "clean" in split_keys("sequential", "train")  # its denoiser is pretrained with DN-only
    assert "clean" in split_keys("dms", "train") and "clean" in split_keys("joint", "train")
    for name in ("n2v_only", "n2v_joint_supervised", "n2v_joint_unsupervised", "n2v_joint_iem"):
        assert "clean" not in split_keys(name, "train") and "clean" in split_keys(name, "val")
    assert split_keys("joint", "val", noise=None) == ("noisy", "label")  # real noise: there is none


def test_sequential_pretrains_its_denoiser_inside_the_bundle(tmp_path):
    name = NAMES[0]
    run_bundle(name, "training", ["train.yaml"], tmp_path, *overrides(name, strategy="sequential",
                                                                      pretrain_iterations="1"))
    assert len(list((tmp_path / "out").glob("pretrained_denoiser_*.pt"))) == 1 and (tmp_path / "models" / "model_sequential.pt").is_file()


def test_medulla_bundle_self_supervises_on_the_unlabelled_cube(tmp_path):
    name, cube = NAMES[0], {"unlabelled_key": "volumes/raw_unlabelled", "unlabelled_fraction": "0.5"}
    p = parser(name, strategy="n2v_joint_supervised", output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), **cube)
    dataset = p.get_parsed_content("train#dataset")
    assert dataset.unlabelled[1] == (250, 250, 250)  # the whole second cube: it is in no split
    batch = next(iter(p.get_parsed_content("train#dataloader")))
    assert batch["labelled"].shape == (4, 1) and "clean" not in batch
    for strategy in ("seg_only", "joint"):  # no N2V term: an unlabelled cube teaches them nothing
        with pytest.raises(RuntimeError) as err:  # MONAI wraps the ValueError of the component
            parser(name, strategy=strategy, output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
                   **cube).get_parsed_content("train#dataset")
        assert isinstance(err.value.__cause__, ValueError) and "no Noise2Void term" in str(err.value.__cause__)
