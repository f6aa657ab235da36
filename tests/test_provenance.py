"""Provenance: commit and dirty flag of a real git tree, md5 (cached per path, size and mtime), config hashes
and cache keys, and the record a checkpoint carries through save, load and resume."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointSaver

from monai_denoiseg import provenance as pv


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test hashes into its own cache folder, never the user's ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(pv.CACHE_ENV, str(folder))
    return folder


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_commit_and_dirty_flag_of_a_real_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("lr = 1e-3\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")

    clean = pv.provenance(repo=repo)
    assert (clean["commit"], clean["dirty"]) == (head, False)
    (repo / "notes.txt").write_text("untracked")  # untracked files do not make the tree dirty
    assert pv.provenance(repo=repo)["dirty"] is False
    (repo / "train.py").write_text("lr = 1e-2\n")  # a tracked file changed, not committed
    dirty = pv.provenance(repo=repo)
    assert (dirty["commit"], dirty["dirty"]) == (head, True)

    outside = tmp_path / "not_a_repo"
    outside.mkdir()
    assert (pv.provenance(repo=outside)["commit"], pv.provenance(repo=outside)["dirty"]) == (None, None)
    # by default: the tree holding the package, not the caller's working directory
    package_head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pv._REPO, capture_output=True,
                                  text=True).stdout.strip()
    assert pv.provenance()["commit"] == package_head != head


def test_provenance_records_config_hash_data_md5_versions_and_seed(tmp_path):
    data = tmp_path / "volume.bin"
    data.write_bytes(b"\x01\x02" * 1000)
    rec = pv.provenance({"lr": 1e-3}, [data], seed=7, repo=tmp_path)
    assert rec["config_hash"] == pv.config_hash({"lr": 1e-3})
    assert rec["data_md5"] == {str(data): hashlib.md5(data.read_bytes()).hexdigest()}
    assert rec["seed"] == 7
    assert rec["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert rec["versions"]["monai"] is not None
    json.dumps(rec)  # JSON-ready


def test_md5_is_hashlibs_and_cached_per_path_size_and_mtime(tmp_path, cache):
    f = tmp_path / "volume.bin"
    content = os.urandom(10_000)
    f.write_bytes(content)
    first = pv.md5_file(f, chunk=999)  # several chunks, the last one short
    assert first == hashlib.md5(content).hexdigest()
    stored = json.loads((cache / "md5.json").read_text())
    assert stored[str(f.resolve())]["md5"] == first
    assert not [p for p in cache.iterdir() if p.name != "md5.json"]  # the atomic write left no temp file

    st = f.stat()
    f.write_bytes(bytes(255 - b for b in content))  # other content, same size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... same mtime: the cached value, not a reread
    assert pv.md5_file(f) == first
    assert pv.md5_file(f, cache=False) == hashlib.md5(f.read_bytes()).hexdigest() != first

    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime changed: hashed again
    assert pv.md5_file(f) == hashlib.md5(f.read_bytes()).hexdigest()
    f.write_bytes(content + b"x")  # size changed
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pv.md5_file(f) == hashlib.md5(content + b"x").hexdigest()
    assert list(json.loads((cache / "md5.json").read_text())) == [str(f.resolve())]  # one entry per path

    (cache / "md5.json").write_text('{"half a')  # a broken cache is rebuilt, not fatal
    assert pv.md5_file(f) == hashlib.md5(content + b"x").hexdigest()
    assert str(f.resolve()) in json.loads((cache / "md5.json").read_text())


def test_md5_of_a_zarr_folder_covers_every_chunk_and_its_name(tmp_path):
    """A zarr volume is a folder: its digest is md5 over the files in sorted order (relative path, NUL, bytes),
    computed here with hashlib by hand; a changed chunk, a renamed chunk and an added chunk all change it,
    through the cache too."""
    import zarr

    vol = tmp_path / "vol.zarr"
    data = np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64)
    zarr.open_group(vol, mode="w").create_array("raw", data=data, chunks=(1, 64, 64))

    def by_hand():
        h = hashlib.md5()
        for f in sorted(q for q in vol.rglob("*") if q.is_file()):
            h.update(f.relative_to(vol).as_posix().encode() + b"\0" + f.read_bytes())
        return h.hexdigest()

    chunks = sorted(q for q in (vol / "raw").rglob("*") if q.is_file() and q.name != "zarr.json")
    assert len(chunks) == 4
    first = pv.md5_file(vol, chunk=1000)
    assert first == by_hand()
    assert pv.md5_file(vol) == first  # cached
    chunks[1].write_bytes(chunks[1].read_bytes()[::-1])  # one chunk's bytes changed
    assert pv.md5_file(vol) == by_hand() != first
    second = by_hand()
    chunks[2].rename(chunks[2].with_name(chunks[2].name + "x"))  # same bytes, other name
    assert pv.md5_file(vol) == by_hand() != second


def test_config_hash_ignores_key_order_and_sees_every_value():
    a = {"lr": 1e-3, "net": {"features": [8, 16], "dropout": 0.1}, "tags": {"b", "a", "c"}}
    b = {"tags": {"c", "a", "b"}, "net": {"dropout": 0.1, "features": [8, 16]}, "lr": 1e-3}
    assert pv.config_hash(a) == pv.config_hash(b)
    assert pv.config_hash(a) != pv.config_hash({**a, "lr": 2e-3})
    assert pv.config_hash(a) != pv.config_hash({**a, "net": {"features": [8, 32], "dropout": 0.1}})
    assert pv.config_hash(a) != pv.config_hash({**a, "net": {"features": [16, 8], "dropout": 0.1}})  # lists keep order
    assert len(pv.config_hash(a)) == 16
    # a set's iteration order changes with the interpreter's hash seed: the hash must not
    code = "from monai_denoiseg.provenance import config_hash; print(config_hash({'s': {f'k{i}' for i in range(30)}}))"
    runs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                           capture_output=True, text=True, check=True).stdout for seed in (1, 2, 3)}
    assert len(runs) == 1

    assert pv.cache_key("denoiser", 600, {"seed": 0}) == pv.cache_key("denoiser", 600, {"seed": 0})
    keys = {pv.cache_key("denoiser", 600, {"seed": 0}), pv.cache_key("denoiser", 600, {"seed": 1}),
            pv.cache_key("denoiser", 601, {"seed": 0}), pv.cache_key(600, "denoiser", {"seed": 0})}
    assert len(keys) == 4


def _save_checkpoint(folder, record):
    """One epoch of an ignite engine with MONAI's CheckpointSaver holding the record beside the network."""
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    saver = CheckpointSaver(str(folder), {"network": net, "provenance": record}, save_interval=1, epoch_level=True)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    (path,) = folder.glob("*.pt")
    return path, net


def test_record_round_trip_through_a_checkpoint_and_warning_on_mismatch(tmp_path, caplog):
    data = tmp_path / "volume.bin"
    data.write_bytes(b"raw" * 100)
    record = pv.ProvenanceRecord({"lr": 1e-3}, [data], seed=3)
    saved = record.state_dict()
    data.write_bytes(b"new" * 200)  # computed once, at construction
    assert record.state_dict() == saved
    data.write_bytes(b"raw" * 100)

    path, net = _save_checkpoint(tmp_path / "ckpt", record)
    checkpoint = torch.load(path, weights_only=True)  # plain data: loadable without unpickling code
    assert checkpoint["provenance"] == saved

    net2, resumed = torch.nn.Linear(2, 1), pv.ProvenanceRecord({"lr": 1e-3}, [data], seed=3)
    with caplog.at_level(logging.WARNING, logger=pv.__name__):
        Checkpoint.load_objects({"network": net2, "provenance": resumed}, checkpoint)
    assert not caplog.records
    assert resumed.loaded == saved
    assert torch.equal(net2.weight, net.weight)
    assert resumed.state_dict()["resumed_from"] == [saved]
    assert {k: v for k, v in resumed.state_dict().items() if k != "resumed_from"} == resumed.record

    moved = tmp_path / "elsewhere.bin"  # the same data at another path: not a difference
    moved.write_bytes(data.read_bytes())
    with caplog.at_level(logging.WARNING, logger=pv.__name__):
        pv.ProvenanceRecord({"lr": 1e-3}, [moved], seed=3).load_state_dict(saved)
    assert not caplog.records

    data.write_bytes(b"other data")
    other = pv.ProvenanceRecord({"lr": 1e-2}, [data], seed=3)
    with caplog.at_level(logging.WARNING, logger=pv.__name__):
        Checkpoint.load_objects({"network": torch.nn.Linear(2, 1), "provenance": other}, checkpoint)
    (warning,) = caplog.records
    assert "config_hash" in warning.message and "data_md5" in warning.message and "commit" not in warning.message
    assert other.loaded == saved

    caplog.clear()
    stranger = pv.ProvenanceRecord({"lr": 1e-3}, [tmp_path / "elsewhere.bin"], seed=3)
    stranger.record["commit"] = "0" * 40  # as if written by another commit
    with caplog.at_level(logging.WARNING, logger=pv.__name__):
        stranger.load_state_dict(saved)
    (warning,) = caplog.records
    assert "commit" in warning.message and "config_hash" not in warning.message
