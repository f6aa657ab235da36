"""Downloads end to end against loopback HTTP servers (no internet): the upstream mirror in ../shared/data, a tampered
copy of it in tmp_path, and servers that trickle, stall or cut the connection; zips checked before extraction."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import threading
import time
import warnings
import zipfile
from functools import cache, partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from monai_denoiseg.data import download as dl
from conftest import data_path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


_STOP = threading.Event()  # set at the end of the module: slow handlers stop sending


@pytest.fixture(scope="module")
def serve():
    """serve(directory) or serve(handler=cls) -> base URL of a loopback HTTP server; all stopped at the end."""
    servers = []

    def start(directory: Path | None = None, handler=None) -> str:
        handler = handler or partial(_QuietHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    _STOP.set()
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def mirror_url(serve):
    return serve(data_path("mirror")) + "/neuroproof_examples"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_medulla_equals_shared_file_then_reused_then_repaired(tmp_path, mirror_url):
    out = dl.download_medulla(tmp_path, base_url=mirror_url)
    assert out == tmp_path / "medulla_fibsem.h5"
    assert _listing(tmp_path) == ["medulla_fibsem.h5"]  # no temporary leftovers
    with h5py.File(out, "r") as got, h5py.File(data_path("medulla_fibsem.h5"), "r") as ref:
        for key in ("volumes/raw", "volumes/labels/neuron_ids"):
            assert got[key].dtype == ref[key].dtype
            np.testing.assert_array_equal(got[key][()], ref[key][()])
            np.testing.assert_array_equal(got[key].attrs["resolution"], [10, 10, 10])
        assert "CC BY 3.0" in got.attrs["license"]
        assert "e0125825" in got.attrs["attribution"] and "Janelia" in got.attrs["attribution"]
        assert "neuroproof_examples" in got.attrs["source"]
        assert "Creative Commons" in got.attrs["license_text"] or "CREATIVE COMMONS" in got.attrs["license_text"]

    # a complete file is reused: no server needed
    mtime = out.stat().st_mtime_ns
    assert dl.download_medulla(tmp_path, base_url=f"http://127.0.0.1:{_closed_port()}") == out
    assert out.stat().st_mtime_ns == mtime

    # a truncated file (killed copy) is detected and downloaded again
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size // 2)
    assert "not a readable HDF5" in dl.check_cremi_file(out)
    dl.download_medulla(tmp_path, base_url=mirror_url)
    assert dl.check_cremi_file(out, shape=(250, 250, 250)) is None
    with h5py.File(out, "r") as got, h5py.File(data_path("medulla_fibsem.h5"), "r") as ref:
        np.testing.assert_array_equal(got["volumes/raw"][-1], ref["volumes/raw"][-1])


def test_medulla_corrupted_file_offline_raises_clearly(tmp_path):
    bad = tmp_path / "medulla_fibsem.h5"
    with h5py.File(bad, "w") as f:  # opens fine, wrong content
        f["volumes/raw"] = np.zeros((2, 3, 4), np.uint8)
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConnectionError) as err:
        dl.download_medulla(tmp_path, base_url=url)
    msg = str(err.value)
    assert f"{url}/LICENSE.txt" in msg and str(bad) in msg
    assert "MONAI_DENOISEG_DATA" in msg and "data_dir" in msg
    assert _listing(tmp_path) == ["medulla_fibsem.h5"]  # nothing half-written left behind


def test_medulla_wrong_md5_detected(tmp_path, serve):
    mirror = tmp_path / "mirror"
    (mirror / "training_sample2").mkdir(parents=True)
    src = data_path("mirror", "neuroproof_examples")
    shutil.copy(src / "LICENSE.txt", mirror / "LICENSE.txt")
    os.symlink(src / "training_sample2" / "grayscale_maps", mirror / "training_sample2" / "grayscale_maps")
    tampered = mirror / "training_sample2" / "groundtruth.h5.gz"
    tampered.write_bytes(gzip.compress(b"not the ground truth"))
    root = tmp_path / "root"
    with pytest.raises(ValueError) as err:
        dl.download_medulla(root, base_url=serve(mirror))
    msg = str(err.value)
    assert "groundtruth.h5.gz" in msg and dl.MEDULLA_GT_MD5 in msg and dl.md5sum(tampered) in msg
    assert _listing(root) == []  # bad file removed, no output


def test_fetch_md5_file_url_and_http_errors(tmp_path, mirror_url):
    src = data_path("mirror", "neuroproof_examples", "training_sample2", "groundtruth.h5.gz")
    dst = dl.fetch(src.as_uri(), tmp_path / "gt.h5.gz", md5=dl.MEDULLA_GT_MD5)
    assert dl.md5sum(dst) == dl.MEDULLA_GT_MD5
    with pytest.raises(ValueError, match=r"gt2\.h5\.gz: md5 mismatch .* expected 0{32}, got d074de42"):
        dl.fetch(f"{mirror_url}/training_sample2/groundtruth.h5.gz", tmp_path / "gt2.h5.gz", md5="0" * 32)
    assert not (tmp_path / "gt2.h5.gz").exists()
    with pytest.raises(ConnectionError, match=r"nope\.png.*HTTP 404"):
        dl.fetch(f"{mirror_url}/nope.png", tmp_path / "nope.png")
    assert _listing(tmp_path) == ["gt.h5.gz"]


def _fake_cremi(path: Path, raw_shape, label_shape) -> None:
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = np.zeros(raw_shape, np.uint8)
        f["volumes/labels/neuron_ids"] = np.ones(label_shape, np.uint64)


def test_download_cremi(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    _fake_cremi(site / "sample_A_20160501.hdf", (2, 8, 8), (2, 8, 8))
    _fake_cremi(site / "sample_B_padded_20160501.hdf", (4, 12, 12), (2, 8, 8))
    _fake_cremi(site / "sample_C_20160501.hdf", (2, 8, 8), (2, 8, 9))
    (site / "sample_B_20160501.hdf").write_text("<html>not found</html>")
    url, root = serve(site), tmp_path / "root"

    out = dl.download_cremi("A", root, base_url=url)
    assert out == root / "sample_A_20160501.hdf" and dl.check_cremi_file(out) is None
    assert dl.download_cremi("a", root, base_url=f"http://127.0.0.1:{_closed_port()}") == out  # reused
    assert dl.download_cremi("B", root, base_url=url, padded=True).name == "sample_B_padded_20160501.hdf"
    with pytest.raises(ValueError, match=r"sample_B_20160501\.hdf.*not a readable HDF5"):
        dl.download_cremi("B", root, base_url=url)
    with pytest.raises(ValueError, match=r"neuron_ids' has shape \(2, 8, 9\), expected \(2, 8, 8\)"):
        dl.download_cremi("C", root, base_url=url)
    assert _listing(root) == ["sample_A_20160501.hdf", "sample_B_padded_20160501.hdf"]
    with pytest.raises(ValueError, match=r"sample: expected one of \('A', 'B', 'C'\), got 'D'"):
        dl.download_cremi("D", root)
    with pytest.raises(ConnectionError, match=r"sample_C_20160501\.hdf.*MONAI_DENOISEG_DATA"):
        dl.download_cremi("C", root, base_url=f"http://127.0.0.1:{_closed_port()}")


def test_check_cremi_file_missing_dataset(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = np.zeros((2, 2, 2), np.uint8)
    assert dl.check_cremi_file(path) == "no dataset 'volumes/labels/neuron_ids'"


def test_locate_data_order_truncated_copy_and_cremi_download(tmp_path, monkeypatch, serve):
    from monai_denoiseg.bundle import locate_data

    a, b, bundle = tmp_path / "a", tmp_path / "b", tmp_path / "bundle"
    for d in (a, b, bundle / "data"):
        d.mkdir(parents=True)
    monkeypatch.delenv(dl.DATA_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="MONAI_DENOISEG_DATA"):
        locate_data("x.tif", str(a), str(bundle))
    (bundle / "data" / "x.tif").write_bytes(b"")
    assert locate_data("x.tif", str(a), str(bundle)) == str(bundle / "data" / "x.tif")
    monkeypatch.setenv(dl.DATA_ENV, str(b))
    (b / "x.tif").write_bytes(b"")
    assert locate_data("x.tif", str(a), str(bundle)) == str(b / "x.tif")
    (a / "x.tif").write_bytes(b"")
    assert locate_data("x.tif", str(a), str(bundle)) == str(a / "x.tif")

    full = a / "sample_A_20160501.hdf"  # a CREMI-layout file made here, then truncated like a killed copy
    with h5py.File(full, "w") as f:
        f["volumes/raw"] = np.zeros((3, 40, 40), np.uint8)
        f["volumes/labels/neuron_ids"] = np.ones((3, 40, 40), np.uint64)
    keys = list(dl.CREMI_KEYS)
    assert locate_data(full.name, str(a), keys=keys) == str(full)
    (b / full.name).write_bytes(full.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unusable"):
        locate_data(full.name, str(b), keys=keys)

    served = tmp_path / "served"  # no local copy: the bundle downloads sample A from a loopback "cremi.org"
    served.mkdir()
    shutil.copy(full, served / full.name)
    monkeypatch.setattr(dl, "CREMI_BASE_URL", serve(served))
    monkeypatch.delenv(dl.DATA_ENV)
    got = locate_data(full.name, str(tmp_path / "empty"), str(bundle), download="cremi_A", keys=keys)
    assert got == str(bundle / "data" / full.name) and dl.check_cremi_file(got) is None
    with pytest.raises(ValueError, match="cremi_A"):
        locate_data("nothing.h5", None, str(bundle), download="cremi_D")


MIRROR = ("mirror", "neuroproof_examples")


@cache
def _gt_bytes() -> bytes:
    return data_path(*MIRROR, dl.MEDULLA_GT).read_bytes()


def test_medulla_md5_registry_covers_every_upstream_file():
    root = data_path(*MIRROR)
    upstream = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    fetched = {dl.MEDULLA_LICENSE, dl.MEDULLA_GT, *dl.MEDULLA_SLICES}
    assert set(dl.MEDULLA_MD5) == fetched == upstream  # every fetched file has a pinned md5
    assert {name: dl.md5sum(root / name) for name in upstream} == dl.MEDULLA_MD5


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy files only (the shared mirror is read-only: copytree would copy that mode too)."""
    for p in src.rglob("*"):
        if p.is_file():
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / p.relative_to(src))


def test_medulla_tampered_slice_refused(tmp_path, serve):
    mirror = tmp_path / "mirror"
    _copy_tree(data_path(*MIRROR), mirror)
    name = "training_sample2/grayscale_maps/iso.2700.png"
    with Image.open(mirror / name) as im:  # a valid PNG, one pixel (one byte of the image) changed
        pixels = np.array(im)
    pixels[125, 125] ^= 1
    Image.fromarray(pixels).save(mirror / name)
    root = tmp_path / "root"
    with pytest.raises(ValueError) as err:
        dl.download_medulla(root, base_url=serve(mirror))
    msg = str(err.value)
    assert "iso.2700.png" in msg and dl.MEDULLA_MD5[name] in msg and dl.md5sum(mirror / name) in msg
    assert _listing(root) == []  # neither the bad slice nor an output is kept


class _SlowHandler(BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends ``first`` bytes after ``delay`` s, then one byte every ``every`` s (none if 0);
    closes after ``limit`` s, so that a broken client check fails the test instead of hanging it."""

    delay, first, every, limit = 0.0, 0, 0.5, 8.0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            if self.delay:
                time.sleep(self.delay)
            self.wfile.write(b"x" * self.first)
            self.wfile.flush()
            end = time.monotonic() + self.limit
            while not _STOP.wait(self.every or 0.5) and time.monotonic() < end:
                if self.every:
                    self.wfile.write(b"x")
                    self.wfile.flush()
        except OSError:  # the client gave up
            pass


class _Trickle(_SlowHandler):
    first, every = 0, 0.5


class _Stall(_SlowHandler):
    first, every = 10, 0


class _LateStall(_SlowHandler):
    delay, first, every = 1.0, 10, 0


def _raises_within(seconds: float, fn, *args, **kwargs):
    start = time.monotonic()
    with pytest.raises(dl.DownloadTimeoutError) as err:
        fn(*args, **kwargs)
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert isinstance(err.value, TimeoutError) and isinstance(err.value, ConnectionError)
    return str(err.value), elapsed


def test_fetch_trickle_stopped_at_deadline(tmp_path, serve):
    url = serve(handler=_Trickle) + "/slow.bin"
    msg, elapsed = _raises_within(3.0, dl.fetch, url, tmp_path / "slow.bin", deadline=2.0, min_rate=0, timeout=30)
    assert elapsed >= 1.9
    assert url in msg and "deadline of 2 s" in msg and "bytes received in 2." in msg
    assert _listing(tmp_path) == []  # no partial file


def test_fetch_trickle_under_min_rate(tmp_path, serve):
    url = serve(handler=_Trickle) + "/slow.bin"
    msg, elapsed = _raises_within(4.0, dl.fetch, url, tmp_path / "slow.bin", min_rate=100, rate_window=2.0)
    assert elapsed >= 1.9
    assert url in msg and "under the minimum of 100" in msg and "bytes received" in msg
    assert _listing(tmp_path) == []


def test_fetch_stall_after_headers(tmp_path, serve):
    url = serve(handler=_Stall) + "/stall.bin"
    msg, elapsed = _raises_within(2.5, dl.fetch, url, tmp_path / "a.bin", timeout=1.0, min_rate=0)
    assert elapsed >= 0.9 and url in msg and "stalled" in msg and "10 bytes received" in msg
    # 10 bytes at 1 s, then silence: the read blocked since 1 s (socket timeout 1.5 s) is cut at the 1.5 s deadline
    url = serve(handler=_LateStall) + "/stall.bin"
    msg, elapsed = _raises_within(2.2, dl.fetch, url, tmp_path / "b.bin", timeout=60, deadline=1.5, min_rate=0)
    assert elapsed >= 1.4 and "deadline of 1.5 s" in msg and "10 bytes received" in msg
    assert _listing(tmp_path) == []


def test_medulla_stalled_server_names_url_and_local_path(tmp_path, serve):
    base = serve(handler=_Stall)
    with pytest.raises(dl.DownloadTimeoutError) as err:
        dl.download_medulla(tmp_path, base_url=base, timeout=0.5, deadline=5)
    msg = str(err.value)
    assert f"{base}/LICENSE.txt" in msg and "stalled" in msg and str(tmp_path / "medulla_fibsem.h5") in msg
    assert _listing(tmp_path) == []


class _CutHandler(BaseHTTPRequestHandler):
    """Serves the medulla ground truth; the first ``cuts`` answers stop halfway; Range is honoured if ``ranges``."""

    cuts, ranges, requests = 1, True, []

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = _gt_bytes()
        type(self).requests.append(self.headers.get("Range"))
        start = 0
        if self.ranges and self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").removesuffix("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if len(type(self).requests) <= self.cuts:
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)


@pytest.mark.parametrize("ranges", [True, False])
def test_fetch_resumes_or_restarts_after_cut(tmp_path, serve, ranges):
    handler = type("Cut", (_CutHandler,), {"cuts": 1, "ranges": ranges, "requests": []})
    url = serve(handler=handler) + "/gt.h5.gz"
    dst = dl.fetch(url, tmp_path / "gt.h5.gz", md5=dl.MEDULLA_GT_MD5)
    assert dl.md5sum(dst) == dl.MEDULLA_GT_MD5
    half = len(_gt_bytes()) // 2
    assert handler.requests == [None, f"bytes={half}-"]  # resumed where the cut left off
    assert _listing(tmp_path) == ["gt.h5.gz"]


def test_fetch_gives_up_after_retries(tmp_path, serve):
    handler = type("Cut", (_CutHandler,), {"cuts": 99, "ranges": True, "requests": []})
    url = serve(handler=handler) + "/gt.h5.gz"
    with pytest.raises(ConnectionError, match=r"gt\.h5\.gz.*connection cut at byte \d+ of 1240524.*2 attempts"):
        dl.fetch(url, tmp_path / "gt.h5.gz", retries=1)
    assert len(handler.requests) == 2 and _listing(tmp_path) == []


def test_fetch_offline_names_url(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/x.bin"
    with pytest.raises(ConnectionError, match=rf"{url}.*offline"):
        dl.fetch(url, tmp_path / "x.bin")
    assert _listing(tmp_path) == []


def _zip(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            zf.writestr(info, "/etc/passwd")
    return path


def test_zip_traversal_refused_before_anything_is_extracted(tmp_path):
    good = [("tiny/configs/a.yaml", b"a: 1"), ("tiny/models/b.txt", b"b")]
    archive = _zip(tmp_path / "bad.zip", [*good, ("../evil", b"x"), ("tiny/z.txt", b"z")])
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match=r"bad\.zip: refused, nothing extracted: 1 unsafe member.*'\.\./evil'"):
        dl.extract_zip(archive, dest)
    assert not dest.exists() and not (tmp_path / "evil").exists()

    archive = _zip(tmp_path / "worse.zip", [*good, ("/abs", b""), ("tiny/../../x", b""), ("tiny/configs/a.yaml", b"")],
                   symlink="tiny/link")
    with pytest.raises(ValueError) as err:
        dl.extract_zip(archive, dest)
    msg = str(err.value)
    assert "4 unsafe member(s)" in msg and "absolute path" in msg and "'tiny/../../x'" in msg
    assert "symbolic link" in msg and "given twice" in msg
    assert not dest.exists()


def test_zip_extracted_all_or_nothing_and_bundle_download(tmp_path, serve):
    site = tmp_path / "site"
    site.mkdir()
    archive = _zip(site / "tiny_v0.1.0.zip", [("tiny/configs/a.yaml", b"a: 1"), ("tiny/LICENSE", b"MIT")])
    dest = tmp_path / "bundles"
    assert dl.extract_zip(archive, dest) == [dest / "tiny"]
    assert (dest / "tiny" / "configs" / "a.yaml").read_bytes() == b"a: 1" and _listing(dest) == ["tiny"]
    with pytest.raises(FileExistsError, match="tiny"):
        dl.extract_zip(archive, dest)  # never replaced silently
    assert _listing(dest) == ["tiny"]

    url = serve(site) + "/tiny_v0.1.0.zip"
    got = dl.download_bundle(url, tmp_path / "b2", "tiny", md5=dl.md5sum(archive))
    assert got == tmp_path / "b2" / "tiny" and (got / "LICENSE").read_bytes() == b"MIT"
    assert _listing(tmp_path / "b2") == ["tiny"]
    with pytest.raises(ValueError, match=r"single top folder 'other', got \['tiny'\]"):
        dl.download_bundle(url, tmp_path / "b3", "other")
    assert _listing(tmp_path / "b3") == []
    with pytest.raises(ValueError, match="md5 mismatch"):
        dl.download_bundle(url, tmp_path / "b4", "tiny", md5="0" * 32)
    assert _listing(tmp_path / "b4") == []
