"""Download the public EM datasets from their official sources, verified, into CREMI-layout HDF5.

The project never ships data: a dataset is read from a local copy (``data_dir`` / the bundle key
``data_dir``, or ``$MONAI_DENOISEG_DATA``, see ``monai_denoiseg.bundle_utils.locate_data``) or downloaded here. Every
download goes to a temporary name in the target folder and is renamed only once it is complete and
checked, so that a killed download never leaves a file that looks finished; an existing output that
does not open, lacks a dataset or has the wrong shape is detected and downloaded again.

Only urllib is used (``http``, ``https`` and ``file`` URLs), so that a loopback server or a local
mirror (``base_url="file:///path/to/mirror"``) replaces the internet in tests and on offline machines.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = [
    "fetch",
    "download_medulla",
    "download_cremi",
    "check_cremi_file",
    "md5sum",
    "DATA_ENV",
    "MEDULLA_BASE_URL",
    "MEDULLA_FILE",
    "CREMI_BASE_URL",
]

logger = logging.getLogger(__name__)

PathLike = str | Path
DATA_ENV = "MONAI_DENOISEG_DATA"
TIMEOUT = 60.0
_CHUNK = 1 << 20

# Janelia FlyEM NeuroProof example: FIB-SEM Drosophila medulla, 10 nm isotropic, CC BY 3.0.
MEDULLA_BASE_URL = "https://raw.githubusercontent.com/janelia-flyem/neuroproof_examples/master"
MEDULLA_FILE = "medulla_fibsem.h5"
MEDULLA_SHAPE = (250, 250, 250)
MEDULLA_RESOLUTION = (10.0, 10.0, 10.0)
MEDULLA_SLICES = [f"training_sample2/grayscale_maps/iso.{z:04d}.png" for z in range(2600, 2600 + MEDULLA_SHAPE[0])]
MEDULLA_GT = "training_sample2/groundtruth.h5.gz"
MEDULLA_GT_MD5 = "d074de42dc9e158a3f22c4dfcc453381"
MEDULLA_LICENSE = "LICENSE.txt"
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


def _urlopen(url: str, timeout: float):
    """``urlopen`` that turns every network failure into a ``ConnectionError`` naming the URL."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http, https and file URLs are intended)
    except urllib.error.HTTPError as e:
        raise ConnectionError(f"could not download {url!r}: HTTP {e.code} {e.reason}.") from e
    except urllib.error.URLError as e:
        raise ConnectionError(f"could not download {url!r}: {e.reason} (is this machine offline?).") from e
    except (socket.timeout, TimeoutError, OSError) as e:
        raise ConnectionError(f"could not download {url!r}: {e!r} (timeout {timeout} s; is this machine offline?).") from e


def fetch(url: str, dst: PathLike, md5: str | None = None, timeout: float = TIMEOUT) -> Path:
    """Download ``url`` to ``dst`` (a temporary name in the same folder, renamed when complete).

    With ``md5``, an existing ``dst`` with that checksum is reused, and a download with another
    checksum is removed and raises ``ValueError`` naming the file, the expected and the actual md5.
    Without it, ``dst`` is always downloaded again (nothing to check it against). Network failures
    (offline, refused, HTTP error, timeout after ``timeout`` s without data) raise ``ConnectionError``
    naming the URL.
    """
    dst = Path(dst).expanduser()
    if md5 is not None and dst.is_file():
        if md5sum(dst) == md5:
            return dst
        logger.warning("%s: md5 differs from %s, downloading it again", dst, md5)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, _urlopen(url, timeout) as response:
            expected_size = response.headers.get("Content-Length")
            size = 0
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (socket.timeout, TimeoutError, OSError) as e:
                    raise ConnectionError(f"could not download {url!r}: {e!r} after {size} bytes.") from e
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
        if expected_size is not None and expected_size.isdigit() and int(expected_size) != size:
            raise ConnectionError(f"could not download {url!r}: got {size} of {expected_size} bytes (connection cut).")
        if md5 is not None and h.hexdigest() != md5:
            dst.unlink(missing_ok=True)  # an older copy with a wrong checksum is bad too
            raise ValueError(
                f"{dst.name}: md5 mismatch for the download of {url!r}: expected {md5}, got {h.hexdigest()} "
                "(the file is corrupted or was changed upstream); the bad file was removed."
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
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
    root: PathLike, base_url: str = MEDULLA_BASE_URL, force: bool = False, timeout: float = TIMEOUT, workers: int = 4
) -> Path:
    """Download the FIB-SEM medulla cube (NeuroProof ``training_sample2``) and convert it to ``root/medulla_fibsem.h5``.

    Fetches the 250 PNG slices, ``groundtruth.h5.gz`` (md5-verified) and ``LICENSE.txt`` from
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
        md5s = {MEDULLA_GT: MEDULLA_GT_MD5}
        try:
            fetch(f"{base}/{MEDULLA_LICENSE}", tmp / MEDULLA_LICENSE, timeout=timeout)  # fail fast when offline
            pool = ThreadPoolExecutor(max(1, workers))
            try:
                jobs = [pool.submit(fetch, f"{base}/{n}", tmp / n, md5s.get(n), timeout) for n in names[1:]]
                for job in jobs:
                    job.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # on failure: stop, don't fetch the rest
        except ConnectionError as e:
            raise ConnectionError(
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
) -> Path:
    """Download a CREMI training volume, ``root/sample_{A,B,C}[_padded]_20160501.hdf``, from ``base_url``
    (default :data:`CREMI_BASE_URL`, cremi.org).

    CREMI publishes no checksum, so the download is accepted when it opens as HDF5 with
    ``volumes/raw`` and ``volumes/labels/neuron_ids`` of equal shape (padded files: the labels fit
    inside the padded raw, positioned by their ``offset`` attribute). An existing usable file is
    reused unless ``force``.
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
            fetch(url, part, timeout=timeout)
        except ConnectionError as e:
            raise ConnectionError(f"{e} {_offline_hint(out)}") from e
        problem = check_cremi_file(part, labels_inside=padded)
        if problem is not None:
            raise ValueError(f"{name}: the download from {url!r} is not a usable CREMI HDF5 file: {problem}.")
        os.replace(part, out)
    return out
