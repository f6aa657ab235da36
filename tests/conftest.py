"""Shared fixtures: small crops of the real EM volumes in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA_DIR = Path(os.environ.get("MONAI_DENOISEG_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """Path of a file in the shared data folder; fails loudly (not skips) when it is missing."""
    p = DATA_DIR.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"test data {p} is missing: set MONAI_DENOISEG_TEST_DATA to the shared data folder")
    return p


@pytest.fixture(scope="session")
def medulla():
    """(raw uint8, neuron ids uint64) crop of the FIB-SEM medulla cube, z-y-x, shape (8, 96, 96)."""
    import h5py

    with h5py.File(data_path("medulla_fibsem.h5"), "r") as f:
        raw = f["volumes/raw"][100:108, 60:156, 60:156]
        lab = f["volumes/labels/neuron_ids"][100:108, 60:156, 60:156]
    return raw, lab


@pytest.fixture(scope="session")
def isbi():
    """(raw uint8, neurite ids uint32 with 0 = membrane, mitochondria uint8) crop of ISBI 2012, shape (4, 128, 128)."""
    import tifffile

    sl = (slice(0, 4), slice(200, 328), slice(200, 328))
    raw = tifffile.imread(data_path("isbi2012", "train-input.tif"))[sl]
    lab = tifffile.imread(data_path("isbi2012", "train-labels.tif"))[sl]
    mito = tifffile.imread(data_path("isbi2012", "train-mitochondria.tif"))[sl]
    return raw, lab, mito


@pytest.fixture(scope="session")
def lucchi():
    """(raw uint8, mitochondria 0/1 uint8) crop of Lucchi++ train, shape (2, 256, 256)."""
    import tifffile

    sl = (slice(0, 2), slice(256, 512), slice(384, 640))
    raw = tifffile.imread(data_path("lucchi_pp", "train-input.tif"), key=range(0, 2))[(slice(None),) + sl[1:]]
    lab = tifffile.imread(data_path("lucchi_pp", "train-labels.tif"), key=range(0, 2))[(slice(None),) + sl[1:]]
    return raw, lab


@pytest.fixture
def rng():
    return np.random.default_rng(0)


BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def run_bundle(name: str, cmd: str, configs, out: Path, *overrides: str, cwd=None, timeout: int = 600):
    """``python -m monai.bundle run <cmd>`` of bundle ``name`` (configs merged in order), outputs under ``out``,
    data from the shared folder only (``$MONAI_DENOISEG_DATA`` cleared); fails with the run's stderr."""
    import subprocess
    import sys

    files = "[" + ",".join(repr(str(BUNDLES_DIR / name / "configs" / c)) for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", cmd, "--config_file", files,
            "--output_dir", str(out / "out"), "--model_dir", str(out / "models"),
            "--cache_dir", str(out / "cache"), "--data_dir", str(DATA_DIR), *overrides]
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd or BUNDLES_DIR.parent,
                         env={**os.environ, "MONAI_DENOISEG_DATA": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    return res
