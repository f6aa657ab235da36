"""Download the public EM datasets from their official sources, verified, into CREMI-layout HDF5.

The project never ships data: a dataset is read from a local copy (``data_dir`` / the bundle key
``data_dir``, or ``$MONAI_DENOISEG_DATA``, see ``monai_denoiseg.bundle.locate_data``) or downloaded here. Every
download goes to a temporary name in the target folder and is renamed only once it is complete and
checked, so that a killed download never leaves a file that looks finished; an existing output that
does not open, lacks a dataset or has the wrong shape is detected and downloaded again. Every file from a
fixed upstream is md5-checked (:data:`MEDULLA_MD5`), every transfer has a deadline and a minimum rate (a
trickling server cannot hang a run), and a zip is checked as a whole before anything is extracted.

Only urllib is used (``http``, ``https`` and ``file`` URLs), so that a loopback server or a local
mirror (``base_url="file:///path/to/mirror"``) replaces the internet in tests and on offline machines.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import re
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from monai_denoiseg.utils.atomic import atomic_path

__all__ = [
    "fetch",
    "DownloadTimeoutError",
    "download_medulla",
    "download_cremi",
    "check_cremi_file",
    "md5sum",
    "check_zip",
    "extract_zip",
    "download_bundle",
    "MEDULLA_MD5",
    "DATA_ENV",
    "MEDULLA_BASE_URL",
    "MEDULLA_FILE",
    "CREMI_BASE_URL",
]

logger = logging.getLogger(__name__)

PathLike = str | Path
DATA_ENV = "MONAI_DENOISEG_DATA"
TIMEOUT = 60.0  # s: longest wait for the connection or for any data
DEADLINE = 3600.0  # s: longest time for one file, all attempts together (raise it for CREMI on a slow line)
MIN_RATE = 10_000.0  # bytes/s averaged over RATE_WINDOW: slower is a stuck transfer (0 disables)
RATE_WINDOW = 30.0  # s
RETRIES = 3  # resumes after a cut connection
_CHUNK = 1 << 20

# Janelia FlyEM NeuroProof example: FIB-SEM Drosophila medulla, 10 nm isotropic, CC BY 3.0.
MEDULLA_BASE_URL = "https://raw.githubusercontent.com/janelia-flyem/neuroproof_examples/master"
MEDULLA_FILE = "medulla_fibsem.h5"
MEDULLA_SHAPE = (250, 250, 250)
MEDULLA_RESOLUTION = (10.0, 10.0, 10.0)
MEDULLA_SLICES = [f"training_sample2/grayscale_maps/iso.{z:04d}.png" for z in range(2600, 2600 + MEDULLA_SHAPE[0])]
MEDULLA_GT = "training_sample2/groundtruth.h5.gz"
MEDULLA_LICENSE = "LICENSE.txt"
# MEDULLA_MD5 (every upstream file's md5) is at the end of this module.
MEDULLA_ATTRS = {
    "source": "https://github.com/janelia-flyem/neuroproof_examples (branch master, folder training_sample2)",
    "license": "CC BY 3.0 (https://creativecommons.org/licenses/by/3.0/)",
    "attribution": "HHMI Janelia FlyEM; Parag et al. 2015, PLoS ONE 10:e0125825",
    "conversion": "volumes/raw = grayscale_maps/iso.2600..2849.png stacked in file-name order (z, y, x); "
    "volumes/labels/neuron_ids = lut[stack] with lut[transforms[:, 0]] = transforms[:, 1] from groundtruth.h5.gz",
}

# CREMI challenge training volumes, ssTEM Drosophila, (40, 4, 4) nm; no checksum published.
CREMI_BASE_URL = "https://cremi.org/static/data"
CREMI_SAMPLES = ("A", "B", "C")
CREMI_KEYS = ("volumes/raw", "volumes/labels/neuron_ids")


def md5sum(path: PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _offline_hint(target: Path, env_hint: bool = True) -> str:
    hint = f"Download it by hand (or copy it from a machine that has it) to {str(target)!r}"
    if env_hint:
        hint += (
            f", or point the environment variable {DATA_ENV} or the bundle key 'data_dir' "
            f"(--data_dir /path) to a folder that holds a local copy of {target.name!r}"
        )
    return hint + "."


class DownloadTimeoutError(ConnectionError, TimeoutError):
    """A download past its deadline, under the minimum rate or stalled: a ``ConnectionError`` (the offline hints
    apply) that is also a ``TimeoutError``."""


class _Watchdog:
    """Shuts the connection's socket down at the deadline, so that a read blocked on a trickling or silent
    server returns at once (a socket timeout only bounds the wait for each byte)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sock = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._expire) if math.isfinite(seconds) else None
        if self._timer is not None:
            self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def watch(self, sock) -> None:
        with self._lock:
            self._sock, expired = sock, self.expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired, sock = True, self._sock
        if sock is not None:
            _shutdown(sock)


def _shutdown(sock) -> None:
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """urllib's default TLS settings, built once (loading the CA certificates is slow)."""
    return ssl.create_default_context()


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's default opener (proxies, redirects, ``file:`` URLs) whose http(s) connections report their socket."""

    def watched(cls):
        def connection(host, **kwargs):
            conn = cls(host, **kwargs)
            connect = conn.connect

            def connect_and_watch():
                connect()
                watchdog.watch(conn.sock)

            conn.connect = connect_and_watch
            return conn

        return connection

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(watched(http.client.HTTPSConnection), req, context=_ssl_context())

    return urllib.request.build_opener(HTTP, HTTPS)


class _Transfer:
    """The limits of one file's download and what it got so far; ``fail`` builds the error naming both."""

    def __init__(self, url: str, timeout, deadline, min_rate, rate_window: float):
        inf = float("inf")  # None: no limit
        timeout, deadline = inf if timeout is None else float(timeout), inf if deadline is None else float(deadline)
        self.url, self.deadline, self.min_rate, self.window = url, deadline, float(min_rate or 0), float(rate_window)
        self.start = time.monotonic()
        self.size = 0
        self.samples = deque([(self.start, 0)])  # (time, bytes so far), thinned to ~64 per window
        wait = min([timeout, deadline] + ([self.window] if self.min_rate > 0 else []))
        self.read_timeout = max(0.01, wait) if math.isfinite(wait) else None  # socket timeout: longest wait for one read

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fail(self, why: str, cls: type[Exception] = DownloadTimeoutError) -> Exception:
        return cls(f"could not download {self.url!r}: {why}; {self.size} bytes received in {self.elapsed():.1f} s.")

    def check(self, watchdog: _Watchdog) -> None:
        """Raise past the deadline, or when fewer than ``min_rate`` bytes/s arrived over the last ``rate_window`` s."""
        now = time.monotonic()
        if watchdog.expired or now - self.start >= self.deadline:
            raise self.fail(f"the deadline of {self.deadline:g} s for this file has passed")
        if self.min_rate <= 0:
            return
        samples = self.samples
        if now - samples[-1][0] >= self.window / 64:
            samples.append((now, self.size))
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        t0, s0 = samples[0]  # the last sample at least a window ago
        if now - t0 >= self.window and (self.size - s0) / (now - t0) < self.min_rate:
            rate = (self.size - s0) / (now - t0)
            raise self.fail(f"{rate:.0f} bytes/s over the last {now - t0:.1f} s, under the minimum of {self.min_rate:g}")


def _urlopen(opener, request: urllib.request.Request, transfer: _Transfer, watchdog: _Watchdog):
    """``opener.open`` that turns every failure into a ``ConnectionError`` (timeouts: ``DownloadTimeoutError``)."""
    url = transfer.url
    try:
        return opener.open(request, timeout=transfer.read_timeout)
    except urllib.error.HTTPError as e:
        raise ConnectionError(f"could not download {url!r}: HTTP {e.code} {e.reason}.") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if watchdog.expired or isinstance(reason, TimeoutError):
            transfer.check(watchdog)
            raise transfer.fail(f"no answer within {transfer.read_timeout:g} s ({reason})") from e
        raise ConnectionError(
            f"could not download {url!r}: {reason} (is this machine offline? A local copy of the file, or a mirror "
            "given as a file:///path URL, works too)."
        ) from e


def _content_range(response, size: int) -> int | None:
    """Total size when ``response`` resumes at byte ``size`` (HTTP 206 with a matching Content-Range), else None."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", "").strip())
    if getattr(response, "status", None) == 206 and match and int(match[1]) == size:
        return int(match[2])
    return None


def _download(url: str, path: Path, transfer: _Transfer, retries: int) -> str:
    """Write ``url`` into ``path``, resuming (HTTP Range) or restarting after a cut connection; return its md5."""
    h = hashlib.md5(usedforsecurity=False)
    retries = max(0, int(retries))
    with open(path, "wb") as out, _Watchdog(transfer.deadline) as watchdog:
        opener = _opener(watchdog)
        for attempt in range(retries + 1):
            headers = {"Range": f"bytes={transfer.size}-"} if transfer.size else {}
            with _urlopen(opener, urllib.request.Request(url, headers=headers), transfer, watchdog) as response:
                total = _content_range(response, transfer.size) if transfer.size else None
                if total is None and getattr(response, "status", None) == 206:
                    raise transfer.fail(f"asked for bytes {transfer.size}- and got a partial answer "
                                        f"{response.headers.get('Content-Range')!r}", ConnectionError)
                if total is None:  # a fresh answer: start again from byte 0
                    if transfer.size:
                        logger.warning("%s: the server does not resume (HTTP Range), downloading it again", url)
                    out.seek(0)
                    out.truncate()
                    h, transfer.size = hashlib.md5(usedforsecurity=False), 0
                    length = response.headers.get("Content-Length", "")
                    total = int(length) if length.isdigit() else None
                cut = None
                while True:
                    try:
                        chunk = response.read1(_CHUNK)  # returns what one read got: a trickle cannot block it
                    except TimeoutError as e:
                        transfer.check(watchdog)
                        raise transfer.fail(f"no data for {transfer.read_timeout:g} s (stalled)") from e
                    except (OSError, ValueError, http.client.HTTPException) as e:
                        transfer.check(watchdog)
                        cut = e
                        break
                    transfer.check(watchdog)
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    transfer.size += len(chunk)
            if total is not None and transfer.size > total:
                raise transfer.fail(f"got more than the announced {total} bytes", ConnectionError)
            if cut is None and (total is None or transfer.size == total):
                return h.hexdigest()
            why = f"connection cut at byte {transfer.size} of {total if total is not None else '?'}"
            why += f" ({cut!r})" if cut is not None else " (the server closed it early)"
            if attempt == retries:
                raise transfer.fail(f"{why}, {retries + 1} attempts", ConnectionError)
            logger.warning("%s: %s, resuming (attempt %d of %d)", url, why, attempt + 2, retries + 1)
    raise AssertionError("unreachable")


def fetch(
    url: str,
    dst: PathLike,
    md5: str | None = None,
    timeout: float | None = TIMEOUT,
    deadline: float | None = DEADLINE,
    min_rate: float = MIN_RATE,
    rate_window: float = RATE_WINDOW,
    retries: int = RETRIES,
) -> Path:
    """Download ``url`` to ``dst`` (a temporary name in the same folder, renamed when complete and checked).

    With ``md5``, an existing ``dst`` with that checksum is reused, and a download with another checksum is removed
    and raises ``ValueError`` naming the file, the expected and the actual md5. Without it, ``dst`` is always
    downloaded again. Bounded in time, so that a trickling or silent server cannot hang a run:
    ``DownloadTimeoutError`` after ``deadline`` s for this file in all, when fewer than ``min_rate`` bytes/s
    arrived over the last ``rate_window`` s (0 disables), or after ``timeout`` s without any data (None: no
    limit). A cut connection is resumed with HTTP Range (restarted if the server ignores Range) up to ``retries``
    times. Every network failure raises a ``ConnectionError`` naming the URL; timeouts add the bytes received and
    the time taken.
    """
    dst = Path(dst).expanduser()
    if md5 is not None and dst.is_file():
        if md5sum(dst) == md5:
            return dst
        logger.warning("%s: md5 differs from %s, downloading it again", dst, md5)
    transfer = _Transfer(url, timeout, deadline, min_rate, rate_window)
    with atomic_path(dst) as tmp:
        got = _download(url, tmp, transfer, retries)
        if md5 is not None and got != md5:
            dst.unlink(missing_ok=True)  # an older copy with a wrong checksum is bad too
            raise ValueError(
                f"{dst.name}: md5 mismatch for the download of {url!r}: expected {md5}, got {got} "
                "(the file is corrupted or was changed upstream); the bad file was removed."
            )
    return dst


def check_cremi_file(
    path: PathLike,
    keys: Sequence[str] = CREMI_KEYS,
    shape: Sequence[int] | None = None,
    dtypes: Sequence[str] | None = None,
    labels_inside: bool = False,
) -> str | None:
    """Why the CREMI-layout HDF5 ``path`` is unusable, or None when it is fine.

    Checks that it opens, holds every dataset in ``keys`` (the first is the raw volume), with
    ``shape`` (default: all equal to the first's) and ``dtypes`` if given; ``labels_inside``
    allows the other datasets to be smaller than the first (CREMI's padded files).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            found = {}
            for key in keys:
                dataset = f.get(key)
                if not isinstance(dataset, h5py.Dataset):
                    return f"no dataset {key!r}"
                found[key] = (tuple(dataset.shape), str(dataset.dtype))
    except OSError as e:  # truncated, not HDF5, unreadable
        return f"not a readable HDF5 file ({e})"
    want = tuple(shape) if shape is not None else found[keys[0]][0]
    for i, key in enumerate(keys):
        got_shape, got_dtype = found[key]
        if labels_inside and i > 0 and shape is None:
            if len(got_shape) != len(want) or any(g > w for g, w in zip(got_shape, want)):
                return f"{key!r} has shape {got_shape}, expected at most {want} (the shape of {keys[0]!r})"
        elif got_shape != want:
            return f"{key!r} has shape {got_shape}, expected {want}"
        if dtypes is not None and got_dtype != dtypes[i]:
            return f"{key!r} has dtype {got_dtype}, expected {dtypes[i]}"
    return None


def _medulla_problem(path: Path) -> str | None:
    return check_cremi_file(path, CREMI_KEYS, MEDULLA_SHAPE, ("uint8", "uint64"))


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "L":
            raise ValueError(f"{path.name}: expected an 8-bit grayscale (mode 'L') PNG, got mode {im.mode!r}.")
        array = np.array(im)
    if array.shape != MEDULLA_SHAPE[1:]:
        raise ValueError(f"{path.name}: expected a slice of shape {MEDULLA_SHAPE[1:]}, got shape {array.shape}.")
    return array


def _medulla_bodies(gt_gz: Path) -> np.ndarray:
    """Body ids (uint64, z-y-x) from NeuroProof's ground truth: supervoxel ``stack`` mapped through ``transforms``."""
    import h5py

    with gzip.open(gt_gz, "rb") as gz, h5py.File(io.BytesIO(gz.read()), "r") as f:
        stack = f["stack"][()]
        transforms = np.asarray(f["transforms"][()], dtype=np.int64)
    if stack.shape != MEDULLA_SHAPE:
        raise ValueError(f"{MEDULLA_GT}: expected 'stack' of shape {MEDULLA_SHAPE}, got shape {stack.shape}.")
    if transforms.ndim != 2 or transforms.shape[1] != 2:
        raise ValueError(f"{MEDULLA_GT}: expected 'transforms' of shape (N, 2), got shape {transforms.shape}.")
    if stack.min() < 0 or transforms.min() < 0:
        raise ValueError(f"{MEDULLA_GT}: expected non-negative supervoxel and body ids.")
    # supervoxels absent from the table keep their own id (NeuroProof's convention)
    lut = np.arange(max(int(stack.max()), int(transforms[:, 0].max())) + 1, dtype=np.uint64)
    lut[transforms[:, 0]] = transforms[:, 1].astype(np.uint64)
    return lut[stack]


def download_medulla(
    root: PathLike,
    base_url: str = MEDULLA_BASE_URL,
    force: bool = False,
    timeout: float = TIMEOUT,
    workers: int = 4,
    deadline: float = DEADLINE,
    min_rate: float = MIN_RATE,
) -> Path:
    """Download the FIB-SEM medulla cube (NeuroProof ``training_sample2``) and convert it to ``root/medulla_fibsem.h5``.

    Fetches the 250 PNG slices, ``groundtruth.h5.gz`` and ``LICENSE.txt``, each md5-checked against
    :data:`MEDULLA_MD5` and bounded in time (``timeout``, ``deadline``, ``min_rate``: see :func:`fetch`), from
    ``base_url`` (the repository root ``janelia-flyem/neuroproof_examples`` on branch master, or a
    mirror of it) and writes CREMI-layout HDF5: ``volumes/raw`` uint8 (z, y, x),
    ``volumes/labels/neuron_ids`` uint64, each with ``resolution`` (10, 10, 10) nm, and the source,
    licence (CC BY 3.0) and attribution as file attributes. An existing complete file is reused
    unless ``force``; an unusable one (unreadable, missing dataset, wrong shape) is downloaded again.
    Raises ``ConnectionError`` naming the URL and where to put a copy by hand when offline.
    """
    root = Path(root).expanduser()
    out = root / MEDULLA_FILE
    if out.exists() and not force:
        problem = _medulla_problem(out)
        if problem is None:
            return out
        logger.warning("%s is unusable (%s): downloading it again", out, problem)
    root.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    with tempfile.TemporaryDirectory(prefix=".medulla_download.", dir=root) as tmp_dir:
        tmp = Path(tmp_dir)
        names = [MEDULLA_LICENSE, MEDULLA_GT, *MEDULLA_SLICES]
        limits = {"timeout": timeout, "deadline": deadline, "min_rate": min_rate}
        try:
            fetch(f"{base}/{names[0]}", tmp / names[0], MEDULLA_MD5[names[0]], **limits)  # fail fast when offline
            pool = ThreadPoolExecutor(max(1, workers))
            try:
                jobs = [pool.submit(fetch, f"{base}/{n}", tmp / n, MEDULLA_MD5[n], **limits) for n in names[1:]]
                for job in jobs:
                    job.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # on failure: stop, don't fetch the rest
        except ConnectionError as e:  # the same type: a DownloadTimeoutError stays one
            raise type(e)(
                f"{e} The medulla volume could not be downloaded from {base!r}. {_offline_hint(out)} "
                f"A mirror of the upstream files (LICENSE.txt, {MEDULLA_GT}, training_sample2/grayscale_maps/) "
                "also works: download_medulla(root, base_url='file:///path/to/neuroproof_examples')."
            ) from e
        raw = np.stack([_read_png(tmp / n) for n in MEDULLA_SLICES])
        labels = _medulla_bodies(tmp / MEDULLA_GT)
        license_text = (tmp / MEDULLA_LICENSE).read_text(encoding="utf-8", errors="replace")
        part = tmp / (MEDULLA_FILE + ".part")
        _write_cremi(part, raw, labels, MEDULLA_RESOLUTION, {**MEDULLA_ATTRS, "license_text": license_text})
        problem = _medulla_problem(part)
        if problem is not None:
            raise RuntimeError(f"{MEDULLA_FILE}: the converted file is unusable ({problem}).")
        os.replace(part, out)
    return out


def _write_cremi(path: Path, raw: np.ndarray, labels: np.ndarray, resolution: Sequence[float], attrs: dict) -> None:
    import h5py

    chunks = tuple(max(1, min(s, c)) for s, c in zip(raw.shape, (25, 125, 125)))
    with h5py.File(path, "w") as f:
        for key, array in (("volumes/raw", raw), ("volumes/labels/neuron_ids", labels)):
            dataset = f.create_dataset(key, data=array, chunks=chunks, compression="gzip", compression_opts=4)
            dataset.attrs["resolution"] = np.asarray(resolution, dtype=np.float64)
        for name, value in attrs.items():
            f.attrs[name] = value


def download_cremi(
    sample: str,
    root: PathLike,
    base_url: str | None = None,
    padded: bool = False,
    force: bool = False,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
    min_rate: float = MIN_RATE,
) -> Path:
    """Download a CREMI training volume, ``root/sample_{A,B,C}[_padded]_20160501.hdf``, from ``base_url``
    (default :data:`CREMI_BASE_URL`, cremi.org).

    CREMI publishes no checksum, so the download is accepted when it opens as HDF5 with
    ``volumes/raw`` and ``volumes/labels/neuron_ids`` of equal shape (padded files: the labels fit
    inside the padded raw, positioned by their ``offset`` attribute). An existing usable file is
    reused unless ``force``. ``timeout``, ``deadline`` and ``min_rate`` bound the transfer (see :func:`fetch`).
    """
    key = str(sample).upper()
    if key not in CREMI_SAMPLES:
        raise ValueError(f"sample: expected one of {CREMI_SAMPLES}, got {sample!r}.")
    name = f"sample_{key}_{'padded_' if padded else ''}20160501.hdf"
    root = Path(root).expanduser()
    out = root / name
    if out.exists() and not force:
        problem = check_cremi_file(out, labels_inside=padded)
        if problem is None:
            return out
        logger.warning("%s is unusable (%s): downloading it again", out, problem)
    url = f"{(base_url or CREMI_BASE_URL).rstrip('/')}/{name}"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cremi_download.", dir=root) as tmp_dir:
        part = Path(tmp_dir) / name
        try:
            fetch(url, part, timeout=timeout, deadline=deadline, min_rate=min_rate)
        except ConnectionError as e:
            raise type(e)(f"{e} {_offline_hint(out)}") from e  # a DownloadTimeoutError stays one
        problem = check_cremi_file(part, labels_inside=padded)
        if problem is not None:
            raise ValueError(f"{name}: the download from {url!r} is not a usable CREMI HDF5 file: {problem}.")
        os.replace(part, out)
    return out


def check_zip(path: PathLike) -> list[str]:
    """Names of all members of the zip ``path``, after checking every one before anything is extracted.

    Raises ``ValueError`` listing each unsafe member: an absolute path or drive, a ``..`` component, a symbolic link
    or other special file, or a name given twice (a later copy would silently replace the first). MONAI's
    ``extractall`` checks member by member while extracting, so the members before a bad one are already written.
    """
    problems, seen = [], set()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{Path(path).name}: not a zip file ({e}).") from e
    for info in infos:
        name = info.filename
        parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
        kind = stat.S_IFMT(info.external_attr >> 16)
        if not parts or "\0" in name:
            problems.append(f"{name!r}: empty or invalid name")
        elif name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
            problems.append(f"{name!r}: absolute path")
        elif ".." in parts:
            problems.append(f"{name!r}: '..' leads out of the target folder")
        elif kind == stat.S_IFLNK:
            problems.append(f"{name!r}: symbolic link")
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            problems.append(f"{name!r}: special file (mode {oct(kind)})")
        elif "/".join(parts) in seen:
            problems.append(f"{name!r}: given twice")
        seen.add("/".join(parts))
    if problems:
        raise ValueError(f"{Path(path).name}: refused, nothing extracted: {len(problems)} unsafe member(s): "
                         + "; ".join(problems) + ".")
    return [info.filename for info in infos]


def extract_zip(path: PathLike, dest: PathLike) -> list[Path]:
    """Extract the zip ``path`` into ``dest`` all or nothing; return the top-level paths it created.

    The whole archive is checked first (:func:`check_zip`), then extracted into a temporary folder in ``dest``
    whose top-level entries are renamed into place; an existing entry of the same name raises ``FileExistsError``
    and an error while extracting (bad CRC, full disk) leaves ``dest`` as it was.
    """
    check_zip(path)
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract.", dir=dest) as tmp_dir, zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_dir)
        tops = sorted(Path(tmp_dir).iterdir())
        existing = [dest / top.name for top in tops if (dest / top.name).exists()]
        if existing:
            raise FileExistsError(f"{Path(path).name}: not extracted, {', '.join(map(str, existing))} exist(s) "
                                  "already; delete it to extract again.")
        for top in tops:
            os.replace(top, dest / top.name)
    return [dest / top.name for top in tops]


def download_bundle(url: str, bundle_dir: PathLike, name: str, md5: str | None = None, **limits) -> Path:
    """Download the Model Zoo zip at ``url`` and extract it into ``bundle_dir/name``; return that folder.

    What ``monai.bundle download --url`` does, but bounded in time (``limits``: ``timeout``, ``deadline``,
    ``min_rate``, ``retries`` of :func:`fetch`), md5-checked when ``md5`` is given, checked as a whole before
    anything is extracted (:func:`extract_zip`), and refusing a zip whose top folder is not ``name`` or an existing
    ``bundle_dir/name`` (MONAI silently keeps an old one).
    """
    bundle_dir = Path(bundle_dir).expanduser()
    out = bundle_dir / name
    if out.exists():
        raise FileExistsError(f"{str(out)!r} exists already; delete it to download the bundle again.")
    bundle_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle_download.", dir=bundle_dir) as tmp_dir:
        archive = fetch(url, Path(tmp_dir) / f"{name}.zip", md5=md5, **limits)
        tops = {re.split(r"[/\\]", member)[0] for member in check_zip(archive)}
        if tops != {name}:
            raise ValueError(f"{url!r}: a bundle zip must hold the single top folder {name!r}, got {sorted(tops)}.")
        extract_zip(archive, bundle_dir)
    return out


# The md5 of every file that download_medulla fetches, computed once from the upstream files (as mirrored in
# ../shared/data/mirror/neuroproof_examples), in ``md5sum`` format relative to the base URL: ``md5sum -c`` checks a
# local mirror with it. Every fetched file is checked against it, so that a replaced slice is refused, not converted.
_MEDULLA_MD5SUMS = """\
86511b9288fa746af5d3fee8c51f1f77  LICENSE.txt
d074de42dc9e158a3f22c4dfcc453381  training_sample2/groundtruth.h5.gz
ab1a26703df48ccd447f35b488714c24  training_sample2/grayscale_maps/iso.2600.png
10a910a66bbeafe3f1153d08872bb58c  training_sample2/grayscale_maps/iso.2601.png
330c90dbf5d9b16b31208ac29b856984  training_sample2/grayscale_maps/iso.2602.png
1c71822f796df55f538ecffdad36573f  training_sample2/grayscale_maps/iso.2603.png
f4d5c35f45d8184417a1622d32e41ec8  training_sample2/grayscale_maps/iso.2604.png
5c3125f13d5a292b903135e223cb1f3a  training_sample2/grayscale_maps/iso.2605.png
3cbc76727bbb376f6d80f80fbb49aa73  training_sample2/grayscale_maps/iso.2606.png
0587b298a1e5b0d4cdb852ad8ed8dbf4  training_sample2/grayscale_maps/iso.2607.png
d423cc27014119d1b01785ac321440b3  training_sample2/grayscale_maps/iso.2608.png
afa8f33fe6aaad8da0a90dd33d4434d4  training_sample2/grayscale_maps/iso.2609.png
79a919272dd7766c2348ab30915361a1  training_sample2/grayscale_maps/iso.2610.png
012fcee50cdc132cbfbe45afb484d141  training_sample2/grayscale_maps/iso.2611.png
23a10d56946370f1e371ad1cf159faca  training_sample2/grayscale_maps/iso.2612.png
4dff1ae72864b2c1ab3bbd7e3de84007  training_sample2/grayscale_maps/iso.2613.png
779fc46dcaf64408d3adb5f90efd2b2b  training_sample2/grayscale_maps/iso.2614.png
92cf5fd16b3acfc3d2c904c00b6d9df2  training_sample2/grayscale_maps/iso.2615.png
7f733be27c7affeab81aa1c22d5fc752  training_sample2/grayscale_maps/iso.2616.png
63aa8e20d19ee84e1a2e166c315081b5  training_sample2/grayscale_maps/iso.2617.png
49d67258efd82ef574f9c1c1e2d72641  training_sample2/grayscale_maps/iso.2618.png
577523c00b720b4ec7cfc169eb044b7e  training_sample2/grayscale_maps/iso.2619.png
babbe38222f91b31fa90b7817b07a8f7  training_sample2/grayscale_maps/iso.2620.png
a8b7a40aafca596bc0b5a1531045497c  training_sample2/grayscale_maps/iso.2621.png
5e4be4dee76d54ee51219c578a892c43  training_sample2/grayscale_maps/iso.2622.png
2fa4548422abad471d8c5416f908bd69  training_sample2/grayscale_maps/iso.2623.png
14ac54d15f97b88f5086d22d9251b03c  training_sample2/grayscale_maps/iso.2624.png
000dbf42659737334971f774d7995f00  training_sample2/grayscale_maps/iso.2625.png
7d18be45e693e463fd5d2e3e7a3aab93  training_sample2/grayscale_maps/iso.2626.png
cc76fe951211bc834de7dd4e35a528fb  training_sample2/grayscale_maps/iso.2627.png
595a79f428c3d84f6758b3c3bda5ed36  training_sample2/grayscale_maps/iso.2628.png
b37966898ba7f777f10ee0edb9a3f0d6  training_sample2/grayscale_maps/iso.2629.png
b117c6aba187188fc13305fe907fba1d  training_sample2/grayscale_maps/iso.2630.png
f47a9f08c6a59bd7450203ff6a28e2c0  training_sample2/grayscale_maps/iso.2631.png
35d90e4817112a09c4fbd71c426bd38e  training_sample2/grayscale_maps/iso.2632.png
eef3de86c9eb7aa5515579872bd2ef55  training_sample2/grayscale_maps/iso.2633.png
6559823718c48b8fc05ed20cd041761e  training_sample2/grayscale_maps/iso.2634.png
5d9464d522fecdccb5a50faae16dfa7c  training_sample2/grayscale_maps/iso.2635.png
51df07419f722cd3d29f5992ec54b747  training_sample2/grayscale_maps/iso.2636.png
2cbe7a649b15fc939896b25e01556b60  training_sample2/grayscale_maps/iso.2637.png
de0edc0d2c50bd70d3c01b483131593d  training_sample2/grayscale_maps/iso.2638.png
f6b4d4ce55fb589d457fea70514f04dc  training_sample2/grayscale_maps/iso.2639.png
3343e52a7c17f0bad194201141611381  training_sample2/grayscale_maps/iso.2640.png
deed16abab3f1375d273f9d31317e364  training_sample2/grayscale_maps/iso.2641.png
e6fe87087e6553602a787a77696ed882  training_sample2/grayscale_maps/iso.2642.png
8ceba715550272400f291cb2444a665c  training_sample2/grayscale_maps/iso.2643.png
6fc13417882586966b75f8ad5d7e4883  training_sample2/grayscale_maps/iso.2644.png
68cf8fcd9ea14d61364ec1b7609caae5  training_sample2/grayscale_maps/iso.2645.png
5a23946c55f7c8333717f99ba712a88c  training_sample2/grayscale_maps/iso.2646.png
c48d4a142c7f445280ca7593262b6656  training_sample2/grayscale_maps/iso.2647.png
4b029a7347a2c9b631f28644c22db45b  training_sample2/grayscale_maps/iso.2648.png
aa6f269a3ec625bb6cca0c7fcb51d170  training_sample2/grayscale_maps/iso.2649.png
05cfe720c54589fdf3de1526da739e07  training_sample2/grayscale_maps/iso.2650.png
22e5ae6e538a7df6ef415f2f49eee7ec  training_sample2/grayscale_maps/iso.2651.png
763922400b2906f3326a304bea3e6e0f  training_sample2/grayscale_maps/iso.2652.png
85039a1d394cc42bb53fc2b95b4d3aef  training_sample2/grayscale_maps/iso.2653.png
e8fc261d37b5cc0cb11a212f8566a347  training_sample2/grayscale_maps/iso.2654.png
10dee31a0b825debedbecdc1cc5c55c8  training_sample2/grayscale_maps/iso.2655.png
2d35f665c027bcbb79b59ec4094cec8d  training_sample2/grayscale_maps/iso.2656.png
99f1a70337e49c5acd95b5725569b5b7  training_sample2/grayscale_maps/iso.2657.png
880be0b44b3f525db39ea45d582f6e94  training_sample2/grayscale_maps/iso.2658.png
7e0e0387492ad44e7c4a13f5b5e9a951  training_sample2/grayscale_maps/iso.2659.png
ca428b0dc66f53abd1f12525ad49b3f2  training_sample2/grayscale_maps/iso.2660.png
3680eab0f1355163f2b83f06303c718e  training_sample2/grayscale_maps/iso.2661.png
560867ab3c09cd9eb8b6125111f6e516  training_sample2/grayscale_maps/iso.2662.png
e9b6c49deaffb474f6df2528390a5004  training_sample2/grayscale_maps/iso.2663.png
d58bd64695e47dc31e81d965fc3ca166  training_sample2/grayscale_maps/iso.2664.png
8af50c6d91bd8d2d739326ee6539125c  training_sample2/grayscale_maps/iso.2665.png
0be252e910f82c19fd1ae339969a1382  training_sample2/grayscale_maps/iso.2666.png
0ff439666584a7437942258246cbcfaf  training_sample2/grayscale_maps/iso.2667.png
ad14b870557eae78f8a32d101dca3bed  training_sample2/grayscale_maps/iso.2668.png
c6f818442eef57dc595a97c9d517474d  training_sample2/grayscale_maps/iso.2669.png
a7161ec606d4bd4f435ca7310509e386  training_sample2/grayscale_maps/iso.2670.png
4bae2a917d4a725874a25f3b0e901413  training_sample2/grayscale_maps/iso.2671.png
b43ca40c9dbb5884f1766ec4b526999a  training_sample2/grayscale_maps/iso.2672.png
d0664880c5bac35b356cb5dce5317acb  training_sample2/grayscale_maps/iso.2673.png
fd39aeee183e3d8f52698bce9d589bae  training_sample2/grayscale_maps/iso.2674.png
3a48dcdf5f9514c3745210ea430ad98e  training_sample2/grayscale_maps/iso.2675.png
7f437d263e4ff4df4edf87fbf7fae82a  training_sample2/grayscale_maps/iso.2676.png
c67aa64261119acb829c0a0c2b90a08a  training_sample2/grayscale_maps/iso.2677.png
8fde0c9051739db49a556cc2a72aaad7  training_sample2/grayscale_maps/iso.2678.png
ff3f24d241d8ac0de7bcd470335dc437  training_sample2/grayscale_maps/iso.2679.png
8d8570578ddda57fc00b62ad31d2b443  training_sample2/grayscale_maps/iso.2680.png
a4d3797ec91683b2d260fae2a958e99e  training_sample2/grayscale_maps/iso.2681.png
89a575e1dbac14042971833ba89919c6  training_sample2/grayscale_maps/iso.2682.png
7396c7cbab03769a8e9c1d64c569d4c0  training_sample2/grayscale_maps/iso.2683.png
2f0d61a63effa282fd2dcf1f33518d07  training_sample2/grayscale_maps/iso.2684.png
39a5a4e69961a96fb9b376d5bebe0bd5  training_sample2/grayscale_maps/iso.2685.png
1bb4af190640e928106a5a468ea3aa59  training_sample2/grayscale_maps/iso.2686.png
ef32e9c8aaa4cd29f43fc2b0307ba7d9  training_sample2/grayscale_maps/iso.2687.png
f2219d01915788f46d5882a2ae3ccfaa  training_sample2/grayscale_maps/iso.2688.png
18353b502799f6996d36db2ade432f56  training_sample2/grayscale_maps/iso.2689.png
16565b52e314a7b274630a998a32ae78  training_sample2/grayscale_maps/iso.2690.png
11a562d836aec64bfba1eb86632462fb  training_sample2/grayscale_maps/iso.2691.png
dbda28fadcedd77d2eaaefa8f82d069a  training_sample2/grayscale_maps/iso.2692.png
01a4a512b15210d06252313a801ee792  training_sample2/grayscale_maps/iso.2693.png
9a434808ee22ddf290995e2e5b892bd8  training_sample2/grayscale_maps/iso.2694.png
c02724c855cd00ba6b46819dc14eced5  training_sample2/grayscale_maps/iso.2695.png
786f144397beeb79582f390ade2ed8ac  training_sample2/grayscale_maps/iso.2696.png
d80179f0e154fedbf34572dcfbc0033d  training_sample2/grayscale_maps/iso.2697.png
b3a37a0f44cb33e85ac211f65ddfbe10  training_sample2/grayscale_maps/iso.2698.png
d1e888562402133117273db8cf62a355  training_sample2/grayscale_maps/iso.2699.png
95939b469e85c9e268488c766201ef43  training_sample2/grayscale_maps/iso.2700.png
8d75680748ee38a61b512884cf7adb74  training_sample2/grayscale_maps/iso.2701.png
3bffd33e66914629937c854ae5990c68  training_sample2/grayscale_maps/iso.2702.png
fadb9b3b0ffc609b5754d5cb6aa55ead  training_sample2/grayscale_maps/iso.2703.png
0e25f8dc8612be292dfd984c14c17f21  training_sample2/grayscale_maps/iso.2704.png
00d0a75078700cd4b092fbf417872665  training_sample2/grayscale_maps/iso.2705.png
8373322333e3a3f9ab550e065fded0d5  training_sample2/grayscale_maps/iso.2706.png
8f2fb3ca5c2010343ebd795101f1eb67  training_sample2/grayscale_maps/iso.2707.png
1b0b36263a145ab658d52e58f10dbaf5  training_sample2/grayscale_maps/iso.2708.png
a0d287b203f392c987d9e1025fb0552a  training_sample2/grayscale_maps/iso.2709.png
26224a3c7d69738fa58fb4e26f4898e1  training_sample2/grayscale_maps/iso.2710.png
51104d9adedf1313746f247feea3adaa  training_sample2/grayscale_maps/iso.2711.png
27cce1830729ded4ed560c8d8efa2c8c  training_sample2/grayscale_maps/iso.2712.png
ac60a98aaf7009292475f9f7de8c1a55  training_sample2/grayscale_maps/iso.2713.png
765103925b4c14aedec076d44cffdbc0  training_sample2/grayscale_maps/iso.2714.png
ba4b29c7cc0610fa4a318b380d84bc85  training_sample2/grayscale_maps/iso.2715.png
7334e95fb397fa312508393fd781f0d9  training_sample2/grayscale_maps/iso.2716.png
6a08e5ee794bec2a5930a4619d4c9d1a  training_sample2/grayscale_maps/iso.2717.png
cff10d2ffd5cf150c2fb91adc957d391  training_sample2/grayscale_maps/iso.2718.png
cfb9631c17c10c808e24c491b611c2f3  training_sample2/grayscale_maps/iso.2719.png
b272fa68942489a3b5894dbb02bb7f39  training_sample2/grayscale_maps/iso.2720.png
fbce43c78b910ec24aa1c151ab9f48bb  training_sample2/grayscale_maps/iso.2721.png
d30569b7999b3a5a40d1cb24d598b738  training_sample2/grayscale_maps/iso.2722.png
3221a850ec1407cdbf317827a2efd98b  training_sample2/grayscale_maps/iso.2723.png
098f3c87d4fc9f1ab75e6cc34152799b  training_sample2/grayscale_maps/iso.2724.png
fbb8efa8be0bebb461a1066bfe9b3514  training_sample2/grayscale_maps/iso.2725.png
e7b394d75e03f268ffadc32968d97c41  training_sample2/grayscale_maps/iso.2726.png
0b80528536865a61bd82fc521583fe55  training_sample2/grayscale_maps/iso.2727.png
bc1d3f483fe3fe8754e2b02cf8de0ace  training_sample2/grayscale_maps/iso.2728.png
62de678ca149925b4a4293b7afad9c4e  training_sample2/grayscale_maps/iso.2729.png
98df7ff7fea15cf9470cc1e93b179a1c  training_sample2/grayscale_maps/iso.2730.png
fa87014976b2eed4bfa8d7c6ba90a657  training_sample2/grayscale_maps/iso.2731.png
24d779b6f57b42377140eda9414bce99  training_sample2/grayscale_maps/iso.2732.png
34505b23c975d67eb5718448b714d81e  training_sample2/grayscale_maps/iso.2733.png
708ccf619fcd76c056e85a670229d5f5  training_sample2/grayscale_maps/iso.2734.png
e986eb08eb6fd572adea50830fc41f16  training_sample2/grayscale_maps/iso.2735.png
709937e446c1d41318deb4f4f0449314  training_sample2/grayscale_maps/iso.2736.png
a2878fc51e672057d5bf8a6a813a1b4f  training_sample2/grayscale_maps/iso.2737.png
c47de94d9788347e6d3757567c1f8d6d  training_sample2/grayscale_maps/iso.2738.png
ec227059f3131bc41b395d5f2b049e88  training_sample2/grayscale_maps/iso.2739.png
c6804cdf98248c63b3c26ed84bc9b042  training_sample2/grayscale_maps/iso.2740.png
cebb6b350c203575138f5667429c243a  training_sample2/grayscale_maps/iso.2741.png
20428d26f005b50a98a14eececdc0afe  training_sample2/grayscale_maps/iso.2742.png
2a12e2d2318f75a82c3db072474672ee  training_sample2/grayscale_maps/iso.2743.png
6494f9133e33f67b4f04710bbabf5f6d  training_sample2/grayscale_maps/iso.2744.png
df7d5c7a65aef39ca65a0e7fb2fdba82  training_sample2/grayscale_maps/iso.2745.png
e0d3723a4a14b4fa2ad548f92ec8458f  training_sample2/grayscale_maps/iso.2746.png
0a215b05deedceca57fd47c4c70f67bb  training_sample2/grayscale_maps/iso.2747.png
d78834b3634cc901e37f29932e1d148a  training_sample2/grayscale_maps/iso.2748.png
b64c9e8d9bc8a841a580f2ca9c7fcdc6  training_sample2/grayscale_maps/iso.2749.png
02a9fe77a0aa3ae177e9572b080fd660  training_sample2/grayscale_maps/iso.2750.png
c914bf353a58b7c93659c1bd01c04ce0  training_sample2/grayscale_maps/iso.2751.png
fdc84a788caa7cf09e271bb082812b05  training_sample2/grayscale_maps/iso.2752.png
2e9989066f83559b0db3f33a8bcdfd7d  training_sample2/grayscale_maps/iso.2753.png
1859fa38311f46743ced85c04a3356b5  training_sample2/grayscale_maps/iso.2754.png
48952e742ab90bd4ca1f09af944cd083  training_sample2/grayscale_maps/iso.2755.png
81aa98b0844f1a51c0453fa0b283f2b4  training_sample2/grayscale_maps/iso.2756.png
3dddd597c46ee6db394c3b242101b4ef  training_sample2/grayscale_maps/iso.2757.png
e6062438076908fd99a3a7b5e755548f  training_sample2/grayscale_maps/iso.2758.png
aa20a9f69a0795954048d28a7f1f30b5  training_sample2/grayscale_maps/iso.2759.png
44993306ec88dc5e504b92d161559ef6  training_sample2/grayscale_maps/iso.2760.png
0ab495a8640888f472a7c87faf64b9b2  training_sample2/grayscale_maps/iso.2761.png
6178318b4439deb315f443fc1debef8c  training_sample2/grayscale_maps/iso.2762.png
095f9dfdc1a9c84ced6bb3bf7f2f6c9e  training_sample2/grayscale_maps/iso.2763.png
dd8cd73feda3c0efb4bda4e6e991e1bf  training_sample2/grayscale_maps/iso.2764.png
ab9823389638ac387a69b77b9071dfec  training_sample2/grayscale_maps/iso.2765.png
aea25473c44e88490ba04dc97b907f4d  training_sample2/grayscale_maps/iso.2766.png
370271818f77ecb5c6cc341dbf300cf4  training_sample2/grayscale_maps/iso.2767.png
af2c9624317773922ddb228ae0da2a20  training_sample2/grayscale_maps/iso.2768.png
92fad5ff7e2b86f801fffe398dcbbcb5  training_sample2/grayscale_maps/iso.2769.png
3314c5d14e34c91163e32e3729f61f59  training_sample2/grayscale_maps/iso.2770.png
fdbb237507e0bbbc3c13fff6383adf47  training_sample2/grayscale_maps/iso.2771.png
be6e6a669dd52078b00d860158703114  training_sample2/grayscale_maps/iso.2772.png
f50416f3f3bdfdceeb3a040cc55decca  training_sample2/grayscale_maps/iso.2773.png
7e20f098b0df3ecb886ec7d24c2a2471  training_sample2/grayscale_maps/iso.2774.png
fb7afae732dfaf1d91d427826182db83  training_sample2/grayscale_maps/iso.2775.png
fd4822bf6691c66dbe4f5ce6e7b49a68  training_sample2/grayscale_maps/iso.2776.png
d791d637af5af3a5361355f8042054bd  training_sample2/grayscale_maps/iso.2777.png
646c8b6473b50d5349e4b54c6a8f4af2  training_sample2/grayscale_maps/iso.2778.png
a5a3cf1bbb2e39a9a21a71ea5842e477  training_sample2/grayscale_maps/iso.2779.png
a12ebd0e9880c16f38bc608fbae51cc1  training_sample2/grayscale_maps/iso.2780.png
7162bc1874425aa3207d821ca61c49ad  training_sample2/grayscale_maps/iso.2781.png
3e4960d5a17b284b7be6886dc5955134  training_sample2/grayscale_maps/iso.2782.png
9f4d850ce64032ae18226a6270aae1a4  training_sample2/grayscale_maps/iso.2783.png
285b866000c2d68cfea8b67680e3c016  training_sample2/grayscale_maps/iso.2784.png
fcc2b7885a976743f60ffe165b856a91  training_sample2/grayscale_maps/iso.2785.png
8b7ff5533ba6671d6e7c845e612c8b14  training_sample2/grayscale_maps/iso.2786.png
cac3d70a9fe66eefa4d6ef1cb4bf70b1  training_sample2/grayscale_maps/iso.2787.png
7a16f438c980e3b8f80bb0e51cbd7404  training_sample2/grayscale_maps/iso.2788.png
6c17174f5957bc8f4efe2919c0ac41a1  training_sample2/grayscale_maps/iso.2789.png
3e00cdbc816db75fe1c610cf32d0fcf8  training_sample2/grayscale_maps/iso.2790.png
8c29338ec54eec93542d749670cd7ed1  training_sample2/grayscale_maps/iso.2791.png
e50ec31a2c68e155cd760e2c8b7d1ed9  training_sample2/grayscale_maps/iso.2792.png
94ed39f85c39888b5eaa6af85c9b58c2  training_sample2/grayscale_maps/iso.2793.png
606a124fc6d834be2a3e8ff3e966fa91  training_sample2/grayscale_maps/iso.2794.png
76b079dc30f0847052216b1661ac3080  training_sample2/grayscale_maps/iso.2795.png
7ae7e8c5afcbbc6ffacb968ed0dddf15  training_sample2/grayscale_maps/iso.2796.png
fd1fd648891f2edf0eb61d6cf70508b1  training_sample2/grayscale_maps/iso.2797.png
5aa70756cd9577a89f94ddfb99bf618f  training_sample2/grayscale_maps/iso.2798.png
8b21c17fb65b315c8db4ed01d1500bce  training_sample2/grayscale_maps/iso.2799.png
8a178c0b04ccf7a526e739f6452568eb  training_sample2/grayscale_maps/iso.2800.png
8c7e81f3d928ecae7dffcc3e57368de6  training_sample2/grayscale_maps/iso.2801.png
fc397b18de554b00b0efa73a2eb29e83  training_sample2/grayscale_maps/iso.2802.png
bc248bb43bb16f23af8b31faab96c697  training_sample2/grayscale_maps/iso.2803.png
86657229b832c72fb0fcc63e2171b72a  training_sample2/grayscale_maps/iso.2804.png
fafeadbdb59ca2a0c5200cfe5861103d  training_sample2/grayscale_maps/iso.2805.png
25237bbba200ef1e4b72265f45199cbf  training_sample2/grayscale_maps/iso.2806.png
d55b859ce12327330541971ad33040ff  training_sample2/grayscale_maps/iso.2807.png
9b8bd9a09639dbdc76b33894be28f7c9  training_sample2/grayscale_maps/iso.2808.png
504c02ba7b99b09d337019a09dcc71c7  training_sample2/grayscale_maps/iso.2809.png
481865e064592ebb074409a1d4058d22  training_sample2/grayscale_maps/iso.2810.png
24603c8b3e38b20babe48eed1118ee42  training_sample2/grayscale_maps/iso.2811.png
415d4af821445b9455d251c5731a5fe7  training_sample2/grayscale_maps/iso.2812.png
fc2217f5d7d710bd6cd78bc730f93dff  training_sample2/grayscale_maps/iso.2813.png
8046d24c34614036bf4f2fcbc5c781e5  training_sample2/grayscale_maps/iso.2814.png
df511f604e1a83cf228194765f1f89fd  training_sample2/grayscale_maps/iso.2815.png
731a77171c5f8885805742c434bbd369  training_sample2/grayscale_maps/iso.2816.png
87be4f91134c04ebf27ef79384887187  training_sample2/grayscale_maps/iso.2817.png
1ca188bf41fb1ea7b0f4d8681ce8c219  training_sample2/grayscale_maps/iso.2818.png
5f940de5edd33bdcbc7412527e19bd6e  training_sample2/grayscale_maps/iso.2819.png
bea6058d32674aeb6acc397f9079199d  training_sample2/grayscale_maps/iso.2820.png
9019b50151cb0f4efc0fbd390a60aee7  training_sample2/grayscale_maps/iso.2821.png
42bbe818c164e8b71f88cd2ed75f7c17  training_sample2/grayscale_maps/iso.2822.png
dcc9fe3a48e368371409277e4567ab79  training_sample2/grayscale_maps/iso.2823.png
1eb486c3bc5eea383ab18b3965f34f40  training_sample2/grayscale_maps/iso.2824.png
b05f09f493c105bb03a572e56af4bea4  training_sample2/grayscale_maps/iso.2825.png
73f704d8e1958f5084d5cc77246bf9cf  training_sample2/grayscale_maps/iso.2826.png
28ced2d6c8f9e1c9954281627a575980  training_sample2/grayscale_maps/iso.2827.png
763b5ff00652561fc8e7850b6da74715  training_sample2/grayscale_maps/iso.2828.png
7ddee2630565cbeecb1fabaf93d27359  training_sample2/grayscale_maps/iso.2829.png
812610f107fbb686a7359bcb5240fe50  training_sample2/grayscale_maps/iso.2830.png
5921b661dfa426ff1e5d8fde1da30e22  training_sample2/grayscale_maps/iso.2831.png
f0239c3139be4c62f02509f4668836bd  training_sample2/grayscale_maps/iso.2832.png
30635338f6d883b22f71eae4e9c85335  training_sample2/grayscale_maps/iso.2833.png
ab88d4f62b44ea4237e0f9d27b8e4599  training_sample2/grayscale_maps/iso.2834.png
5bc4549fcb93491aafb3aa6858769c3e  training_sample2/grayscale_maps/iso.2835.png
454c040220acc5dde97fcbcdec47ae86  training_sample2/grayscale_maps/iso.2836.png
5e8565de61c19a401a0727c491ba961b  training_sample2/grayscale_maps/iso.2837.png
d0fde76415737c4d145d17d099324a74  training_sample2/grayscale_maps/iso.2838.png
74317d5c7c08a8e854e4cc32cfc0cc44  training_sample2/grayscale_maps/iso.2839.png
006d038ae3c9389f2a7b045b979c1d96  training_sample2/grayscale_maps/iso.2840.png
f7c21839cc8be9a04b003d351aca1670  training_sample2/grayscale_maps/iso.2841.png
d1ccd7715d504a3d335bc5490c65b18a  training_sample2/grayscale_maps/iso.2842.png
c86eec55069e06911728f1ecee5b3b25  training_sample2/grayscale_maps/iso.2843.png
5fd9df34a7e7a481060f1958a85c2edc  training_sample2/grayscale_maps/iso.2844.png
c3be587968abffc997c461592e3474df  training_sample2/grayscale_maps/iso.2845.png
c418c72222b0afce93bff3e4447e1e82  training_sample2/grayscale_maps/iso.2846.png
52761bc61f6d9cbc3c559a204de6e82e  training_sample2/grayscale_maps/iso.2847.png
fc4f013f08f25e8673e42ddbb63c3fbe  training_sample2/grayscale_maps/iso.2848.png
b62302e09bc94ea73293d788e849fecf  training_sample2/grayscale_maps/iso.2849.png
"""
MEDULLA_MD5 = {name: md5 for md5, name in (line.split() for line in _MEDULLA_MD5SUMS.splitlines())}
MEDULLA_GT_MD5 = MEDULLA_MD5[MEDULLA_GT]
