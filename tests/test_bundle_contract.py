"""The MONAI bundle contract of every bundle, offline: ``verify_net_in_out`` and ``ckpt_export`` (script mode) on
``export_network_def`` (one tensor: the denoised image, then the probabilities), and ``verify_metadata`` against
the local copy of the Model Zoo schema (issue 16). Small widths so that the file runs in about a minute on a core."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import monai
import pytest
import torch
from conftest import BUNDLES_DIR, DATA_DIR

from monai_denoiseg.engines import get_strategy
from monai_denoiseg.networks import ExportNetwork, paper_joint_net

NAMES = ["medulla_fibsem_denoiseg", "cremi_denoiseg", "snemi_ac34_denoiseg", "isbi2012_denoiseg", "lucchi_mito_n2v", "em_denoiseg"]
SCHEMA = DATA_DIR.parent / "monai" / "meta_schema_20240725.json"
SMALL = {"lucchi_mito_n2v": [8, 8, 16, 16, 32, 8]}  # BasicUNet's six widths
SMALL_JOINT = [8, 16, 32, 32]  # 3 poolings (the IEMs at levels 2 and 3), widths divisible by the 4 heads


def _files(name: str) -> tuple[str, str]:
    cfg = BUNDLES_DIR / name / "configs"
    return str(cfg / "train.yaml"), str(cfg / "metadata.json")


def _features(name: str) -> list[int]:
    return SMALL.get(name, SMALL_JOINT)


def _parser(name: str) -> monai.bundle.ConfigParser:
    config, meta = _files(name)
    p = monai.bundle.ConfigParser()
    p.read_config(config)
    p.read_meta(meta)
    p["features"] = _features(name)
    return p


@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out(name):
    config, meta = _files(name)
    monai.bundle.verify_net_in_out(net_id="export_network_def", meta_file=meta, config_file=config, device="cpu",
                                   n=3, features=_features(name))


@pytest.mark.parametrize("name", NAMES)
def test_ckpt_export_script_mode_matches_the_dict_network(name, tmp_path):
    p = _parser(name)
    torch.manual_seed(0)
    net = p.get_parsed_content("network_def")
    for m in net.modules():  # non-trivial batch-norm statistics: the export must carry the buffers too
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)  # the plain network's keys, as the bundles' CheckpointSaver writes them
    config, meta = _files(name)
    ts = tmp_path / "model.ts"
    monai.bundle.ckpt_export(net_id="export_network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=meta,
                             config_file=config, use_trace=False, features=_features(name))
    scripted = torch.jit.load(str(ts))
    assert isinstance(scripted, torch.jit.ScriptModule) and "def forward" in scripted.code

    eager = p.get_parsed_content("export_network_def")
    eager.load_state_dict(torch.load(ckpt, weights_only=True))
    net.eval(), eager.eval()
    info = p["_meta_"]["network_data_format"]["outputs"]["pred"]
    kwargs = get_strategy(p.get_parsed_content("strategy")).network_kwargs
    for shape in ((1, 1, 100, 124), (2, 1, 64, 48)):  # slice-sized, not a multiple of the network's stride
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got, wrapped, ref = scripted(x), eager(x), net(x, **kwargs)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.shape == (shape[0], info["num_channels"], *shape[2:]) == wrapped.shape
        torch.testing.assert_close(got, wrapped, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[:, :1], ref["denoised"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[:, 1:], ref["affinity_prob"], rtol=1e-5, atol=1e-5)
    assert len(info["channel_def"]) == info["num_channels"] and info["channel_def"]["0"] == "denoised image"


@pytest.mark.parametrize("name", NAMES)
def test_verify_metadata_offline_with_the_local_schema(name, tmp_path, monkeypatch):
    """MONAI's verify_metadata downloads the schema unless ``filepath`` exists (then it skips the download, with
    no hash given); a refused socket proves that nothing is fetched."""
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)

    def offline(*args, **kwargs):
        raise OSError("offline test: no network")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monai.bundle.verify_metadata(meta_file=_files(name)[1], filepath=str(schema))
    bad = json.loads((BUNDLES_DIR / name / "configs" / "metadata.json").read_text())
    bad["network_data_format"]["outputs"]["pred"]["num_channels"] = "eleven"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="Failed validating"):
        monai.bundle.verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(schema))


def test_the_cli_commands_of_docs_bundles_md(tmp_path):
    """The two commands as a user types them (``python -m monai.bundle``), on the medulla bundle."""
    name = "medulla_fibsem_denoiseg"
    config, meta = _files(name)
    small = ["--features", str(SMALL_JOINT)]
    torch.manual_seed(0)
    torch.save(_parser(name).get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    ts = tmp_path / "model.ts"
    for args in (["verify_net_in_out", "--net_id", "export_network_def", "--device", "cpu"],
                 ["ckpt_export", "--net_id", "export_network_def", "--filepath", str(ts),
                  "--ckpt_file", str(tmp_path / "model.pt")]):
        res = subprocess.run([sys.executable, "-m", "monai.bundle", *args, "--meta_file", meta, "--config_file", config,
                              *small], capture_output=True, text=True, timeout=300, cwd=BUNDLES_DIR.parent,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BUNDLES_DIR.parent)})
        assert res.returncode == 0, res.stderr[-3000:]
    assert torch.jit.load(str(ts))(torch.rand(1, 1, 40, 40)).shape == (1, 11, 40, 40)


def _tiny_joint():
    f = [4, 8, 16, 16]
    torch.manual_seed(0)
    return paper_joint_net(2, features=f, denoiser_kwargs={"features": f}, segmenter_kwargs={"features": f}).eval()


def test_strategies_without_a_denoised_image_pass_the_input_and_without_a_segmenter_are_refused():
    net = _tiny_joint()
    x = torch.rand(1, 1, 20, 28)
    with torch.no_grad():
        out = torch.jit.script(ExportNetwork(net, "seg_only"))(x)
        ref = net(x, stages=("segmenter",))
    assert out.shape == (1, 11, 20, 28)
    torch.testing.assert_close(out[:, :1], x, rtol=0, atol=0)  # the segmenter saw the noisy image itself
    torch.testing.assert_close(out[:, 1:], ref["affinity_prob"], rtol=1e-5, atol=1e-5)
    for strategy in ("dn_only", "n2v_only"):
        with pytest.raises(ValueError, match="no segmenter"):
            ExportNetwork(net, strategy)


def test_scripting_leaves_the_eager_wrapper_as_it_was():
    net = _tiny_joint()
    net.segmenter.train()  # mixed modes (a frozen stage stays in eval mode)
    wrapper = ExportNetwork(net, "joint")
    modes = [m.training for m in wrapper.modules()]
    torch.jit.script(wrapper)
    assert [m.training for m in wrapper.modules()] == modes and not net.training and net.segmenter.training
    assert wrapper.network is net and type(wrapper.chain).__name__ == "_Chain"
