"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

A kill (SIGKILL, power loss, a full disk) during a write leaves only a hidden temporary file beside the
target; the target itself is replaced in one ``os.replace`` after the data are flushed to disk. Every
checkpoint, model, result JSON and output file of the toolkit is written through :func:`atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_open", "refuse_existing"]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is fsynced and moved onto ``path``.

    The temporary file keeps ``suffix`` (e.g. ``".h5"``) so that writers choosing a format by the file
    name still work. On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """``open`` for writing, atomically: the file appears under ``path`` only once it is complete."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"mode: expected a write mode ('w', 'wb', 'x', ...), got {mode!r}.")
    with atomic_path(path) as tmp, open(tmp, mode.replace("x", "w"), **kwargs) as f:
        yield f
        f.flush()


def refuse_existing(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Raise ``FileExistsError`` if ``path`` exists and ``overwrite`` is False: outputs are never replaced silently."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{what}: {str(p)!r} exists already; pass overwrite=True (--overwrite) to replace it.")
    return p
