"""bioimage.io export (monai_denoiseg.bioimageio): packages that bioimageio.core tests, offline.

Three packages are written once per module from freshly initialised, small networks (``features``
overridden; the checkpoint is saved in a tmp dir): the medulla joint bundle (2-D), the Lucchi++ N2V
bundle, and medulla with configs/train_3d.yaml merged (3-D). Their test inputs are real crops of the
shared data. Network access is blocked for the whole module (only loopback and Unix sockets connect), so
a pass also proves that validation, testing and prediction run offline.
"""

from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.core")
pytestmark = [  # bioimageio.spec's own chatter while it re-reads packaged file entries; torch.jit.load's deprecation
    pytest.mark.filterwarnings("ignore:Found mapping with 'source':UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

from conftest import data_path  # noqa: E402

from monai_denoiseg.bioimageio.__main__ import main as cli_main  # noqa: E402
from monai_denoiseg.bundle.release import load_bundle_network  # noqa: E402
from monai_denoiseg.networks import export_channel_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEDULLA = ROOT / "bundles" / "medulla_fibsem_denoiseg"
LUCCHI = ROOT / "bundles" / "lucchi_mito_n2v"

# name: (bundle, configs, small features, test image, HDF5 key, test crop shape, expected channels)
CASES = {
    "medulla_2d": (MEDULLA, ["train.yaml"], [4, 8, 8, 8], ("medulla_fibsem.h5",), "volumes/raw", [64, 64], 11),
    "lucchi_n2v": (LUCCHI, ["train.yaml"], [4, 4, 8, 8, 8, 4], ("lucchi_pp", "test-input.tif"), None, [64, 64], 2),
    "medulla_3d": (MEDULLA, ["train.yaml", "train_3d.yaml"], [4, 8, 8, 8], ("medulla_fibsem.h5",), "volumes/raw",
                   [16, 32, 32], 1 + 13),  # DEFAULT_OFFSETS_3D: 13 offsets
}


def _is_local(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, (str, bytes)) and str(host).startswith(("127.", "localhost", "::1", "/"))


@pytest.fixture(scope="module")
def offline():
    """Block every socket connection that does not stay on this machine, for the whole module."""
    mp = pytest.MonkeyPatch()
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family == getattr(socket, "AF_UNIX", None) or _is_local(address):
            return real_connect(self, address)
        raise OSError(f"test_bioimageio: network access blocked ({address!r})")

    def getaddrinfo(host, *args, **kwargs):
        if host is None or _is_local((host,)):
            return real_getaddrinfo(host, *args, **kwargs)
        raise socket.gaierror(f"test_bioimageio: name resolution blocked ({host!r})")

    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    mp.undo()


def _fit_briefly(net, image, key, shape, steps: int = 30) -> None:
    """A few Adam steps towards reproducing the input in every channel, on another crop of the same file.

    A freshly initialised small network is almost blind to its input (its outputs move by < 1e-3 when the
    input is doubled), so a package with wrong preprocessing would still "reproduce" its test output;
    after this its outputs follow the input (checked in test_package_contents), so the tests can fail.
    """
    from monai_denoiseg.bioimageio import load_test_image

    crop = load_test_image(data_path(*image), key, shape, start=[0] * len(shape), z=3)
    x = torch.from_numpy(crop.astype(np.float32) / 255.0)[None, None]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        loss = ((net(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _export(case: str, folder: Path, via_cli: bool = False) -> dict:
    bundle, configs, features, image, key, shape, _ = CASES[case]
    torch.manual_seed(0)
    net = load_bundle_network(bundle, configs, weights=None, net_id="export_network_def",
                              overrides={"features": features})
    _fit_briefly(net, image, key, shape)
    ckpt = folder / "model.pt"
    torch.save(net.network.state_dict(), ckpt)  # what the bundle's CheckpointSaver writes: network_def's state dict
    out = folder / f"{case}.zip"
    args = ["export", "--bundle", str(bundle), "--checkpoint", str(ckpt), "--output", str(out),
            "--test-input", str(data_path(*image)), "--test-shape", *map(str, shape), "--config", *configs,
            "--override", "features=" + json.dumps(features)]
    if via_cli:
        assert cli_main(args) == 0
    else:
        from monai_denoiseg.bioimageio import export_bioimageio_package

        export_bioimageio_package(bundle, ckpt, out, data_path(*image), config=configs, test_shape=shape,
                                  overrides={"features": features})
    assert out.is_file()
    return {"zip": out, "checkpoint": ckpt, "case": case}


@pytest.fixture(scope="module")
def packages(offline, tmp_path_factory):
    pkgs = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(case)
        pkgs[case] = _export(case, folder, via_cli=case == "lucchi_n2v")
    return pkgs


def _rdf(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _array(zip_path: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(zip_path) as z:
        return np.load(io.BytesIO(z.read(name)))


def _summary_text(summary) -> str:
    lines = []
    for d in summary.details:
        lines.append(f"{d.status}: {d.name}")
        lines += [f"    error {e.loc}: {e.msg[:400]}" for e in d.errors]
    return "\n".join(lines)


def test_network_access_is_blocked(offline):
    """The guard itself refuses (not merely a machine without a route): by name and by address."""
    with pytest.raises(OSError, match="test_bioimageio: name resolution blocked"):
        socket.create_connection(("bioimage.io", 443), timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(OSError, match="test_bioimageio: network access blocked"):
            sock.connect(("93.184.215.14", 443))


@pytest.mark.parametrize("case", list(CASES))
def test_bioimageio_core_test_model_passes_offline(packages, case):
    from bioimageio.core import test_model

    summary = test_model(packages[case]["zip"])
    assert summary.status == "passed", _summary_text(summary)
    names = " | ".join(d.name for d in summary.details)
    for wf in ("pytorch_state_dict", "torchscript"):  # both weight formats reproduced the test output
        assert f"Reproduce test outputs from test inputs ({wf})" in names


@pytest.mark.parametrize("case", list(CASES))
def test_package_contents(packages, case):
    bundle, configs, _, image, key, shape, n_channels = CASES[case]
    zip_path = packages[case]["zip"]
    rdf = _rdf(zip_path)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    dims = len(shape)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["callable"] == "build_export_network" and arch["source"] == "architecture.py"
    assert arch["kwargs"]["spatial_dims"] == dims and "_target_" in json.dumps(arch["kwargs"]["network_def"])

    # axes: b, c, (z,) y, x with the network's size constraint (metadata: "8*n" / "16*n")
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    step = int(meta["network_data_format"]["inputs"]["image"]["spatial_shape"][-1].split("*")[0])
    assert [a.get("type") for a in inp["axes"]] == ["batch", "channel"] + ["space"] * dims
    assert [a["id"] for a in inp["axes"][2:]] == ["z", "y", "x"][-dims:]
    for a in inp["axes"][2:]:
        assert a["size"] == {"min": step, "step": step}
    for a, b in zip(out["axes"][2:], inp["axes"][2:]):
        assert a["size"] == {"tensor_id": "raw", "axis_id": b["id"]}
    # preprocessing: uint8 / 255 to the training range, float32 for the network
    assert inp["data"]["type"] == "uint8"
    ops = [(p["id"], p.get("kwargs", {})) for p in inp["preprocessing"]]
    assert [o for o, _ in ops] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
    assert ops[1][1]["gain"] == pytest.approx(1 / 255) and ops[1][1].get("offset", 0) == 0
    assert ops[-1][1]["dtype"] == "float32"
    # channels: the export network's, affinity offsets named
    names = out["axes"][1]["channel_names"]
    assert len(names) == n_channels and names[0] == "denoised image"
    parser_offsets = rdf["config"]["monai_denoiseg"]["offsets"]
    if case == "lucchi_n2v":
        assert names == export_channel_names(None, foreground="mitochondria") and parser_offsets is None
    else:
        assert names == export_channel_names(parser_offsets) and len(parser_offsets) == n_channels - 1
        assert all("offset" in n for n in names[1:])

    # the test input is a real crop of the shared data, the test output the network's prediction on it
    test_in = _array(zip_path, "test_input.npy")
    assert test_in.dtype == np.uint8 and test_in.shape == (1, 1, *shape)
    if key is not None:
        import h5py

        with h5py.File(data_path(*image), "r") as f:
            vol = f[key]
            z = vol.shape[0] // 2
            full = vol[z] if dims == 2 else vol[...]
    else:
        import tifffile

        full = tifffile.imread(data_path(*image))
        full = full[full.shape[0] // 2] if dims == 2 else full
    start = [(v - s) // 2 for s, v in zip(shape, full.shape)]
    np.testing.assert_array_equal(test_in[0, 0], full[tuple(slice(a, a + s) for a, s in zip(start, shape))])
    assert test_in.std() > 5  # real EM texture, not a constant
    # the network follows its input: wrong preprocessing (e.g. 2/255) would not reproduce the test output
    net = load_bundle_network(bundle, configs, weights=str(packages[case]["checkpoint"]), net_id="export_network_def",
                              overrides={"features": CASES[case][2]}).eval()
    x = torch.from_numpy(test_in.astype(np.float32) / 255.0)
    with torch.no_grad():
        assert (net(2 * x) - net(x)).abs().amax(dim=tuple(range(2, 2 + dims))).min() > 0.01

    # documentation, citations of both papers, licence, training data, cover
    with zipfile.ZipFile(zip_path) as z:
        files = set(z.namelist())
        doc = z.read(rdf["documentation"]["source"] if isinstance(rdf["documentation"], dict)
                     else rdf["documentation"]).decode()
        licence = z.read("LICENSE").decode()
    assert {"weights.pt", "weights_torchscript.pt", "architecture.py", "cover.png", "LICENSE", "README.md"} <= files
    cites = " ".join(c["text"] for c in rdf["cite"])
    assert "Instance-aware Interaction" in cites and "Joint Optical Neuroimaging Denoising with Semantic Tasks" in cites
    assert all(c.get("doi") or c.get("url") for c in rdf["cite"])
    assert rdf["license"] == "Apache-2.0"
    assert licence == (bundle / "LICENSE").read_text()
    assert "## Validation" in doc and "Instance-aware Interaction" in doc and names[-1] in doc
    td = rdf["training_data"]
    assert td["type"] == "dataset" and td["cite"]
    if case.startswith("medulla"):
        assert td["license"] == "CC-BY-3.0" and "neuroproof_examples" in td["source"]
        assert any("Parag" in c["text"] for c in td["cite"])
    else:
        assert any("Casser" in c["text"] for c in td["cite"])
    assert "cover.png" in json.dumps(rdf["covers"])


@pytest.mark.parametrize("case", ["medulla_2d", "lucchi_n2v"])
def test_core_prediction_reproduces_test_output(packages, case):
    """bioimageio.core's pipeline (preprocessing + each weight format) on the test input == the package's test
    output == the bundle's export network with the checkpoint, run directly."""
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    bundle, configs, features, *_ = CASES[case]
    zip_path = packages[case]["zip"]
    test_in, test_out = _array(zip_path, "test_input.npy"), _array(zip_path, "test_output.npy")
    net = load_bundle_network(bundle, configs, weights=str(packages[case]["checkpoint"]), net_id="export_network_def",
                              overrides={"features": features}).eval()
    with torch.no_grad():
        direct = net(torch.from_numpy(test_in.astype(np.float32) / 255.0)).numpy()
    np.testing.assert_allclose(test_out, direct, atol=1e-5, rtol=1e-4)

    descr = load_model_description(zip_path)
    for wf in ("pytorch_state_dict", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weight_format=wf)
        sample = predict(model=pipeline, inputs={"raw": test_in})
        pred = np.asarray(sample.members["prediction"].data)
        assert pred.shape == test_out.shape, wf
        np.testing.assert_allclose(pred, test_out, atol=1e-4, rtol=1e-3, err_msg=wf)


def _rewrite(src: Path, dst: Path, name: str, data: bytes, fix_sha: bool) -> None:
    """Copy the package ``src`` to ``dst`` with file ``name`` replaced by ``data`` (and its sha256 updated)."""
    import hashlib

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            content = zin.read(item.filename)
            if item.filename == name:
                content = data
            elif item.filename == "rdf.yaml" and fix_sha:
                rdf = yaml.safe_load(content)
                for entry in rdf["weights"].values():
                    if entry["source"] == name:
                        entry["sha256"] = hashlib.sha256(data).hexdigest()
                content = yaml.safe_dump(rdf, sort_keys=False).encode()
            zout.writestr(item.filename, content)


@pytest.mark.parametrize("mode", ["garbage_bytes", "garbage_bytes_sha_updated", "perturbed_weights"])
def test_corrupted_weights_fail(packages, tmp_path, mode):
    """A damaged weight file fails: by its checksum, by not loading, or by not reproducing the test output."""
    from bioimageio.core import test_model

    src = packages["medulla_2d"]["zip"]
    with zipfile.ZipFile(src) as z:
        weights = z.read("weights.pt")
    if mode == "perturbed_weights":  # a valid state dict whose values differ
        state = torch.load(io.BytesIO(weights), weights_only=True)
        for k, v in state.items():
            if v.is_floating_point():
                state[k] = v + 0.5
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    else:
        data = weights[: len(weights) // 2] + b"\x00corrupt" * 64
    bad = tmp_path / "corrupted.zip"
    _rewrite(src, bad, "weights.pt", data, fix_sha=mode != "garbage_bytes")
    summary = test_model(bad, weight_format="pytorch_state_dict")
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status != "passed" and failed, _summary_text(summary)
    if mode == "garbage_bytes":  # the rdf's sha256 no longer matches: the package itself is invalid
        assert summary.status == "failed", _summary_text(summary)
    else:  # a consistent package whose weights do not load / do not reproduce the test output
        assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in failed, _summary_text(summary)


def test_cli_refuses_bad_arguments(packages, tmp_path, capsys):
    ckpt = packages["medulla_2d"]["checkpoint"]
    common = ["export", "--bundle", str(MEDULLA), "--checkpoint", str(ckpt), "--test-input",
              str(data_path("medulla_fibsem.h5")), "--override", "features=[4,8,8,8]"]
    assert cli_main(common + ["--output", str(tmp_path / "pkg.tar")]) == 1
    assert "expected a .zip" in capsys.readouterr().err
    assert cli_main(common + ["--output", str(tmp_path / "pkg.zip"), "--test-shape", "60", "60"]) == 1
    assert "multiples of [8, 8]" in capsys.readouterr().err
    assert not (tmp_path / "pkg.zip").exists()
