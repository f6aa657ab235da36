"""Model Zoo distribution: package a tiny YAML bundle, serve it over loopback HTTP, download and load it with MONAI."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zipfile import ZipFile

import pytest
import torch
from monai.networks.nets import BasicUNet

import monai.bundle
from conftest import DATA_DIR
from monai_denoiseg.bundle import release as bt

NAME = "tiny_em_unet"
FEATURES = [4, 4, 8, 16, 32, 4]
SCHEMA = DATA_DIR.parent / "monai" / bt.DEFAULT_SCHEMA_NAME
SCHEMA_URL = f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{bt.DEFAULT_SCHEMA_NAME}"

INFERENCE_YAML = f"""\
bundle_root: "."
spatial_dims: 2
network_def:
  _target_: monai.networks.nets.BasicUNet
  spatial_dims: "@spatial_dims"
  in_channels: 1
  out_channels: 1
  features: {FEATURES}
network: "$@network_def.to('cpu')"
"""


def _tensor(channels: int) -> dict:
    return {"type": "image", "format": "magnitude", "num_channels": channels, "spatial_shape": ["16*n", "16*n"],
            "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": {"0": "image"}}


def _metadata(version: str = "0.2.0") -> dict:
    return {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: "tiny test bundle", "0.1.0": "first"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": __import__("numpy").__version__,
        "required_packages_version": {},
        "name": NAME,
        "task": "EM denoising (test)",
        "description": "a 2-D BasicUNet used to test packaging",
        "authors": "monai-denoiseg contributors",
        "copyright": "Copyright (c) monai-denoiseg contributors",
        "network_data_format": {"inputs": {"image": _tensor(1)}, "outputs": {"pred": _tensor(1)}},
    }


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=FEATURES).eval()


def _make_bundle(root: Path, metadata: dict | None = None) -> Path:
    bundle = root / NAME
    for sub in ("configs", "docs", "models", "outputs", "eval", "runs", "data", "configs/__pycache__"):
        (bundle / sub).mkdir(parents=True, exist_ok=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata or _metadata(), indent=2))
    (bundle / "configs" / "inference.yaml").write_text(INFERENCE_YAML)
    (bundle / "configs" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (bundle / "docs" / "README.md").write_text("# tiny\n")
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    (bundle / "large_files.yml").write_text('large_files:\n  - path: "models/model.pt"\n    url: ""\n')
    for junk in ("outputs/log.txt", "eval/metrics.json", "runs/events", "data/raw.h5"):
        (bundle / junk).write_text("junk")
    torch.save(_net().state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture
def bundle(tmp_path) -> Path:
    return _make_bundle(tmp_path / "src")


@pytest.fixture
def serve():
    servers = []

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(directory: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _x() -> torch.Tensor:
    return torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_package_layout(bundle, tmp_path):
    out = bt.package_bundle(bundle, tmp_path / "dist")
    assert out == tmp_path / "dist" / f"{NAME}_v0.2.0.zip"
    names = set(ZipFile(out).namelist())
    assert names == {f"{NAME}/{p}" for p in (
        "configs/metadata.json", "configs/inference.yaml", "docs/README.md", "LICENSE", "large_files.yml", "models/model.pt"
    )}
    light = bt.package_bundle(bundle, tmp_path / "light", include_weights=False)
    assert f"{NAME}/models/model.pt" not in ZipFile(light).namelist()
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [out.name]  # no temporary leftovers


def test_download_and_load_roundtrip(bundle, tmp_path, serve):
    zip_path = bt.package_bundle(bundle, tmp_path / "dist")
    url = f"{serve(zip_path.parent)}/{zip_path.name}"
    hub = tmp_path / "hub"
    monai.bundle.download(name=NAME, url=url, bundle_dir=str(hub), progress=False)
    unpacked = hub / NAME
    assert (unpacked / "configs" / "inference.yaml").is_file() and (unpacked / "models" / "model.pt").is_file()
    assert (hub / f"{NAME}.zip").is_file()  # the zip is kept as <name>.zip, whatever the URL's file name

    x = _x()
    with torch.no_grad():
        expected = _net()(x)

    # MONAI quirk: with model=None it only looks for configs/<workflow_type>.json, so a YAML bundle gives a state dict
    with pytest.warns(UserWarning, match=r"Cannot find the config file.*inference\.json"):
        state = monai.bundle.load(name=NAME, bundle_dir=str(hub), workflow_type="inference", device="cpu")
    assert isinstance(state, dict) and "final_conv.weight" in state

    # what works with MONAI: build the network from the YAML, then load(model=...) copies the weights in
    parser = monai.bundle.ConfigParser()
    parser.read_config(str(unpacked / "configs" / "inference.yaml"))
    net = monai.bundle.load(name=NAME, model=parser.get_parsed_content("network_def"), bundle_dir=str(hub), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), expected, rtol=0, atol=0)

    # the helper does both, strictly
    net2 = bt.load_bundle_network(unpacked).eval()
    with torch.no_grad():
        torch.testing.assert_close(net2(x), expected, rtol=0, atol=0)


def test_load_is_strict_where_monai_is_lenient(bundle):
    other = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=[8, 8, 8, 16, 32, 8])
    before = {k: v.clone() for k, v in other.state_dict().items()}
    loaded = monai.bundle.load(name=NAME, model=other, bundle_dir=str(bundle.parent), device="cpu")  # no error...
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, before[k])]
    assert 0 < len(changed) < len(before)  # ...only the tensors whose shapes happen to match were copied
    with pytest.raises(RuntimeError, match="size mismatch"):
        bt.load_bundle_network(bundle, overrides={"network_def#features": [8, 8, 8, 16, 32, 8]})
    with pytest.raises(ValueError, match=r"config: no such config file"):
        bt.load_bundle_network(bundle, config="train.yaml")


def test_verify_metadata_offline(bundle, tmp_path, monkeypatch):
    import monai.apps.utils

    def no_network(*args, **kwargs):
        raise AssertionError("verify_bundle_metadata tried to download the schema")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", no_network)
    bt.verify_bundle_metadata(bundle, SCHEMA)
    monkeypatch.setenv(bt.SCHEMA_ENV, str(SCHEMA))
    bt.verify_bundle_metadata(bundle)  # default schema path from the environment

    meta = _metadata()
    del meta["authors"]
    meta["version"] = 2
    bad = _make_bundle(tmp_path / "bad", meta)
    with pytest.raises(ValueError) as err:
        bt.verify_bundle_metadata(bad, SCHEMA)
    msg = str(err.value)
    assert "2 problem(s)" in msg and "'authors' is a required property" in msg and "version: 2 is not of type 'string'" in msg
    assert "metadata.json" in msg

    meta = _metadata()
    meta["schema"] = SCHEMA_URL.replace("20240725", "20990101")
    other = _make_bundle(tmp_path / "other", meta)
    with pytest.raises(ValueError, match=r"names the schema 'meta_schema_20990101\.json'"):
        bt.verify_bundle_metadata(other, SCHEMA)
    with pytest.raises(FileNotFoundError, match=r"no local copy of the metadata schema"):
        bt.verify_bundle_metadata(bundle, tmp_path / bt.DEFAULT_SCHEMA_NAME)


def test_package_rules(bundle, tmp_path):
    with open(bundle / "docs" / "big.bin", "wb") as f:  # sparse: no disk space used
        f.truncate(bt.MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match=r"docs/big\.bin: 25\.0 MB is over the Model Zoo's 25 MB limit"):
        bt.package_bundle(bundle, tmp_path / "dist")
    (bundle / "docs" / "big.bin").unlink()
    with open(bundle / "models" / "huge.pt", "wb") as f:
        f.truncate(bt.MAX_FILE_BYTES + 1)
    with pytest.warns(UserWarning, match=r"models/huge\.pt.*not listed in large_files\.yml"):
        out = bt.package_bundle(bundle, tmp_path / "dist")
    assert f"{NAME}/models/huge.pt" in ZipFile(out).namelist()

    meta = _metadata()
    meta["changelog"] = {"0.1.0": "first"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"changelog: version '0.2.0' .* must be listed.*\['0.1.0'\]"):
        bt.package_bundle(bundle, tmp_path / "dist", include_weights=False)
    (bundle / "LICENSE").unlink()
    with pytest.raises(ValueError, match=r"LICENSE: the Model Zoo requires a LICENSE file"):
        bt.package_bundle(bundle, tmp_path / "dist", include_weights=False)
    (bundle / "configs" / "metadata.json").unlink()
    with pytest.raises(ValueError, match=r"configs/metadata\.json"):
        bt.package_bundle(bundle, tmp_path / "dist", include_weights=False)


def test_cli(bundle, tmp_path, capsys):
    assert bt.main(["package", str(bundle), "--out", str(tmp_path / "dist"), "--no-weights"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{NAME}_v0.2.0.zip")
    assert bt.main(["verify", str(bundle), "--schema", str(SCHEMA)]) == 0
    (bundle / "LICENSE").unlink()
    assert bt.main(["package", str(bundle), "--out", str(tmp_path / "dist")]) == 1
    assert "error: LICENSE" in capsys.readouterr().err


def test_bundle_root_defaults_without_reading_the_command_line(tmp_path, monkeypatch):
    """MONAI's convention: run from inside the bundle (or pass --bundle_root); a checkout's root finds
    bundles/<name>; a config path on the command line is not parsed."""
    from monai_denoiseg.bundle import find_bundle_root

    name = "medulla_fibsem_denoiseg"
    repo_copy = Path(__file__).resolve().parents[1] / "bundles" / name
    copy = tmp_path / "elsewhere" / name
    (copy / "configs").mkdir(parents=True)
    (copy / "configs" / "metadata.json").write_text("{}")
    monkeypatch.setattr("sys.argv", ["monai.bundle", "run", "--config_file", str(copy / "configs" / "train.yaml")])
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root(name) == str(repo_copy)  # the command line names the copy: ignored
    monkeypatch.chdir(copy)
    assert find_bundle_root(name) == str(copy)  # run from inside the bundle
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "bundles").mkdir()
    (copy.parent / name).rename(tmp_path / "elsewhere" / "bundles" / name)
    assert find_bundle_root(name) == str(tmp_path / "elsewhere" / "bundles" / name)  # a checkout's root
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_bundle_root("no_such_bundle")


def test_machine_and_run_derived_defaults(monkeypatch):
    from monai_denoiseg.bundle import loader_workers, validation_interval

    for cores, workers in ((1, 0), (2, 1), (16, 4)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert loader_workers() == workers
    # at least two validations a run: 4 epochs -> every 2, 20 -> every 5 (the preferred), 1 -> every epoch
    assert [validation_interval(e, 5) for e in (1, 2, 4, 10, 20, 100)] == [1, 1, 2, 5, 5, 5]
