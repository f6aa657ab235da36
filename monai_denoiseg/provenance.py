"""Provenance of a result: which code, which configuration, which data, which packages, which seed.

Every result JSON of the benchmarks records :func:`provenance`, so that a figure can be traced back to the
commit (and whether the tree had uncommitted changes), the resolved configuration (its hash), the data
files (md5) and the versions of torch, MONAI, volara and numpy that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["provenance", "md5_file", "config_hash"]

_PACKAGES = ("torch", "monai", "pytorch-ignite", "numpy", "volara", "daisy", "zarr", "python-elf", "monai-denoiseg")


def md5_file(path: str | os.PathLike, chunk: int = 2**22) -> str:
    """md5 of a file, read in 4 MiB chunks (never whole into memory)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of a configuration's canonical JSON (sorted keys; non-JSON values as ``str``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(config: Mapping[str, Any] | None = None, data_files: Iterable[str | os.PathLike] = (),
               seed: int | None = None) -> dict[str, Any]:
    """A JSON-ready record: git commit and dirty flag, config hash, md5 of each data file, versions, seed."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "config_hash": None if config is None else config_hash(config),
        "data_md5": {str(p): md5_file(p) for p in data_files},
        "versions": versions,
        "python": platform.python_version(),
        "seed": seed,
    }
