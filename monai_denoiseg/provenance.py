"""Provenance of a result: which code, which configuration, which data, which packages, which seed.

Every result JSON of the benchmarks records :func:`provenance`, and every training checkpoint a
:class:`ProvenanceRecord`, so that a figure or a model can be traced back to the commit (and whether the
tree had uncommitted changes), the resolved configuration (its hash), the data files (md5) and the versions
of torch, MONAI, volara and numpy that produced it. Caches are named by :func:`cache_key` of everything
that determines them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["provenance", "md5_file", "config_hash", "cache_key", "cache_dir", "ProvenanceRecord"]

logger = logging.getLogger(__name__)

_PACKAGES = ("torch", "monai", "pytorch-ignite", "numpy", "volara", "daisy", "zarr", "python-elf", "bm3d",
             "monai-denoiseg")
CACHE_ENV = "MONAI_DENOISEG_CACHE"
_REPO = Path(__file__).resolve().parent
COMPARED = ("commit", "config_hash", "data_md5")  # a resumed checkpoint differing in these is reported


def cache_dir() -> Path:
    """The toolkit's cache folder: ``$MONAI_DENOISEG_CACHE``, else ``~/.cache/monai_denoiseg``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "monai_denoiseg").expanduser()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, unreadable or half-written by an older version: start afresh
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict) -> None:
    """Temporary file beside ``path``, then ``os.replace``: a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def md5_file(path: str | os.PathLike, chunk: int = 2**22, cache: bool = True) -> str:
    """md5 of a file, read in 4 MiB chunks (never whole into memory); of a folder (a zarr / N5 volume), md5
    over its files in sorted order, each as its relative path then its bytes.

    With ``cache`` the digest is kept in ``cache_dir()/md5.json`` under the absolute path with its size and
    ``st_mtime_ns`` (a folder: the md5 of every file's path, size and mtime), so a multi-GB volume is hashed
    once, not once per run; one whose stamp changed is hashed again. A cache that cannot be written
    (read-only home) is skipped.
    """
    real = Path(path).resolve()
    files = sorted(f for f in real.rglob("*") if f.is_file()) if real.is_dir() else [real]
    if real.is_dir():
        listing = hashlib.md5()
        for f in files:
            st = f.stat()
            listing.update(f"{f.relative_to(real).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        stamp = {"listing": listing.hexdigest()}
    else:
        st = real.stat()
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    store = cache_dir() / "md5.json"
    if cache:
        hit = _read_json(store).get(str(real))
        if isinstance(hit, dict) and {k: hit.get(k) for k in stamp} == stamp and isinstance(hit.get("md5"), str):
            return hit["md5"]
    h = hashlib.md5()
    for file in files:
        if real.is_dir():
            h.update(file.relative_to(real).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    digest = h.hexdigest()
    if cache:
        entries = _read_json(store)  # re-read: another process may have added entries meanwhile
        entries[str(real)] = {**stamp, "md5": digest}  # one entry per path: a changed file replaces its own
        try:
            _write_json_atomic(store, entries)
        except OSError as e:
            logger.debug("md5 cache %s not written: %s", store, e)
    return digest


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: sets in sorted order (their iteration order varies between runs), else ``str``."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def config_hash(config: Any) -> str:
    """sha256 (16 hex digits) of a configuration's canonical JSON (sorted keys, sets sorted, other values ``str``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=_jsonable).encode()).hexdigest()[:16]


def cache_key(*parts: Any) -> str:
    """Key of a cache: :func:`config_hash` of ``parts`` (everything that determines the cached value).

    Parts must be JSON-like or have a stable ``str`` (paths, numbers); an object whose ``str`` holds its
    memory address would give a new key every run.
    """
    return config_hash({"cache_key": list(parts)})


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(config: Any = None, data_files: Iterable[str | os.PathLike] = (), seed: int | None = None,
               repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """A JSON-ready record: git commit and dirty flag, config hash, md5 of each data file, versions, seed.

    ``repo``: the git work tree asked for commit and dirty flag (default: the one holding this package);
    ``dirty`` counts changes to tracked files only. Outside a git tree both are None.
    """
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    where = Path(repo) if repo is not None else _REPO
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git(where, "rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "config_hash": None if config is None else config_hash(config),
        "data_md5": {str(p): md5_file(p) for p in data_files},
        "versions": versions,
        "python": platform.python_version(),
        "seed": seed,
    }


def differing(a: Mapping[str, Any], b: Mapping[str, Any], fields: Iterable[str] = COMPARED) -> list[str]:
    """The ``fields`` in which two records differ; ``data_md5`` by content (the digests), not by path."""
    def value(rec, k):
        v = rec.get(k)
        return sorted(v.values()) if k == "data_md5" and isinstance(v, Mapping) else v

    return [k for k in fields if value(a, k) != value(b, k)]


class ProvenanceRecord:
    """The provenance of a training run, for a checkpoint's ``save_dict`` (MONAI/ignite ``CheckpointSaver``).

    :meth:`state_dict` is :func:`provenance` computed once, at construction; a resumed run keeps its own
    record (the code that continues) and lists what each earlier checkpoint held under ``resumed_from``.
    :meth:`load_state_dict` keeps the checkpoint's record as :attr:`loaded` and warns, naming the fields,
    if it was written by another commit, config or data.
    """

    def __init__(self, config: Any = None, data_files: Iterable[str | os.PathLike] = (), seed: int | None = None,
                 repo: str | os.PathLike | None = None) -> None:
        self.record = provenance(config, data_files, seed, repo=repo)
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        out = dict(self.record)
        if self.loaded is not None:
            earlier = {k: v for k, v in self.loaded.items() if k != "resumed_from"}
            out["resumed_from"] = [*self.loaded.get("resumed_from", []), earlier]
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.loaded = dict(state_dict)
        if diff := differing(self.loaded, self.record):
            logger.warning("resumed checkpoint differs from this run in %s: %s", ", ".join(diff),
                           "; ".join(f"{k} {self.loaded.get(k)!r} -> {self.record.get(k)!r}" for k in diff))
