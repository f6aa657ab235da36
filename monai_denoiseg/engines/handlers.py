"""Ignite handlers that a config attaches like MONAI's own (an ``attach(engine)`` method), and the
crash-safe checkpointing that :class:`~monai_denoiseg.engines.DenoiSegTrainer` gives every checkpoint.

A kill (SIGKILL, out of memory, a preempted job) may come at any instant, also in the middle of writing a
checkpoint. :class:`AtomicDiskSaver` is the save handler of MONAI's :class:`~monai.handlers.CheckpointSaver`
(ignite's ``Checkpoint``) that makes this harmless: a file appears under its name only once it is complete
(:func:`~monai_denoiseg.utils.atomic.atomic_path`), and a file ignite drops (``n_saved``) is deleted only
after the new one is on disk, so the last good checkpoint always survives. :class:`ResumeFromCheckpoint`
resumes from the newest checkpoint that loads and names (and skips) any it cannot read.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, ProgressBar
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_denoiseg.utils.atomic import atomic_path

__all__ = ["ProgressBarHandler", "PredictionWriter", "AtomicDiskSaver", "AtomicCheckpointSaver", "make_atomic", "ResumeFromCheckpoint",
           "checkpoint_candidates", "attach_validation_log"]

_UMASK = os.umask(0)
os.umask(_UMASK)
EPOCH_PATTERN = re.compile(r"epoch=(\d+)\.pt$")


class ProgressBarHandler:
    """A console progress bar (tqdm) showing every loss term of the current iteration."""

    def __init__(self, persist: bool = True) -> None:
        self.bar = ProgressBar(persist=persist)

    def attach(self, engine) -> None:
        self.bar.attach(engine, output_transform=lambda out: out["terms"])


class PredictionWriter:
    """Save what an evaluator predicted for each volume next to its metrics, so that it can be looked at and
    re-scored: ``<output_dir>/predictions_<name>.h5`` with ``volume<i>/denoised`` (uint8, the final image or
    the coarse one), ``volume<i>/instances`` (the narrowest unsigned type: uint32 opens in Fiji) or
    ``volume<i>/mask`` (uint8 0/1), and with ``affinities`` ``volume<i>/affinities`` (float16, C x Z x Y x X).
    ``<name>`` is the evaluator's run name (e.g. ``test_epoch1``); an existing dataset is refused unless
    ``overwrite``. Every dataset is written atomically (``write_volume``)."""

    def __init__(self, output_dir: str | os.PathLike, affinities: bool = False, overwrite: bool = False) -> None:
        self.output_dir, self.affinities, self.overwrite = Path(output_dir), bool(affinities), bool(overwrite)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def path(self, engine) -> Path:
        name = engine._name() if hasattr(engine, "_name") else f"epoch{engine.state.epoch}"
        return self.output_dir / f"predictions_{name}.h5"

    def __call__(self, engine) -> None:
        import numpy as np

        from monai_denoiseg.data.datasets import write_volume
        from monai_denoiseg.engines.inference import narrowest_uint

        out, path = engine.state.output, self.path(engine)
        group = f"volume{out.get('index', engine.state.iteration - 1)}"
        image = out.get("final", out.get("coarse"))
        arrays = {}
        if image is not None:
            arrays["denoised"] = np.round(np.clip(image[0, 0].cpu().numpy(), 0, 1) * 255).astype(np.uint8)
        if out.get("instances") is not None:
            arrays["instances"] = narrowest_uint(np.asarray(out["instances"][0, 0]))
        if out.get("mask") is not None:
            arrays["mask"] = np.asarray(out["mask"][0, 0]).astype(np.uint8)
        if self.affinities and out.get("affinity_prob") is not None:
            arrays["affinities"] = out["affinity_prob"][0].cpu().numpy().astype(np.float16)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for key, array in arrays.items():
            write_volume(path, array, f"{group}/{key}", overwrite=self.overwrite)


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing each checkpoint atomically; removals wait for the next complete save.

    Ignite's ``Checkpoint`` asks its handler to ``remove`` the checkpoint it drops *before* it saves the new
    one, so with ``n_saved=1`` a kill during the save lost the only checkpoint. Here ``remove`` only queues
    the file; it is deleted once the next save has been fsynced and renamed into place.

    Args:
        dirname: folder of the checkpoints.
        filename: a fixed file name (MONAI's ``key_metric_filename``, e.g. ``model.pt``), else ignite's.
        best_metric: ``(metric name, lower is better)`` of a key-metric saver: each save is logged as
            ``best model (<metric> <value>) saved to <path>``.
        logger: where that line goes (default this module's logger).
        announce: log that line here (False: a validation log prints it after the metrics, see
            :func:`attach_validation_log`).
        save_on_rank: the one rank of a distributed run that writes.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None,
                 best_metric: tuple[str | None, bool] | None = None, logger: logging.Logger | None = None,
                 announce: bool = True, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname).expanduser()
        self.filename = filename
        self.best_metric = best_metric
        self.logger = logger or logging.getLogger(__name__)
        self.announce = bool(announce)
        self.save_on_rank = int(save_on_rank)
        self.pending_removal: list[str] = []
        self.last_saved: tuple[Path, float | None] | None = None  # (path, metric value); read by validation logs

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        path = self.dirname / name
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide models from the group
        for old in self.pending_removal:  # only now: the new checkpoint is complete
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self.pending_removal.clear()
        for stale in self.dirname.glob(f".{_glob_escape(name)}.*.part"):  # left by a kill during an earlier save
            stale.unlink(missing_ok=True)
        value = None
        if self.best_metric is not None and metadata is not None and "priority" in metadata:
            metric, lower_is_better = self.best_metric
            value = float(metadata["priority"]) * (-1.0 if lower_is_better else 1.0)
            if self.announce:
                self.logger.info("best model (%s %.4f) saved to %s", metric or "key metric", value, path)
        self.last_saved = (path, value)

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            self.pending_removal.append(self.filename or filename)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _key_metric(checkpoint: Checkpoint) -> tuple[str | None, bool]:
    """``(key_metric_name, key_metric_negative_sign)`` of a MONAI key-metric ``Checkpoint`` (its score function's
    closure; MONAI keeps them nowhere else), ``(None, False)`` when they cannot be read."""
    fn = checkpoint.score_function
    try:
        cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
    except (AttributeError, ValueError):
        return None, False
    name = cells.get("key_metric_name")
    return (name if isinstance(name, str) else None), bool(cells.get("key_metric_negative_sign", False))


def make_atomic(saver: CheckpointSaver, logger: logging.Logger | None = None) -> CheckpointSaver:
    """Give every ``Checkpoint`` of a MONAI ``CheckpointSaver`` an :class:`AtomicDiskSaver` (same folder and
    fixed file name as MONAI's own handler); idempotent. Returns ``saver``."""
    for attr in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        cp = getattr(saver, attr, None)
        if cp is None:
            continue
        old = cp.save_handler
        if isinstance(old, AtomicDiskSaver):
            if logger is not None:
                old.logger = logger
            continue
        cp.save_handler = AtomicDiskSaver(getattr(old, "dirname", saver.save_dir), getattr(old, "filename", None),
                                          best_metric=_key_metric(cp) if attr == "_key_metric_checkpoint" else None,
                                          logger=logger, save_on_rank=getattr(old, "save_on_rank", 0))
    return saver


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written by :class:`AtomicDiskSaver`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        make_atomic(self)

    def attach(self, engine) -> None:
        super().attach(engine)
        make_atomic(self, self.logger)


def checkpoint_candidates(folder: str | os.PathLike) -> list[Path]:
    """Epoch-end checkpoints (``*epoch=<n>.pt``) in ``folder``, newest first."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("*epoch=*.pt") if (m := EPOCH_PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class ResumeFromCheckpoint(CheckpointLoader):
    """At ``STARTED``, load the newest *loadable* checkpoint of ``folder`` into ``load_dict`` (MONAI's
    ``CheckpointLoader`` otherwise): one that does not read (truncated, empty, not a checkpoint) or lacks a
    ``load_dict`` key is logged as a warning naming the file and skipped. Logs ``resumed from <file> at
    epoch N``. Keys in ``optional`` are loaded when present (checkpoints of older versions lack them).

    After loading, ``loaded`` is the file used and ``others`` the rest of the folder's checkpoints.
    """

    def __init__(self, folder: str | os.PathLike, load_dict: dict, optional: Sequence[str] = (),
                 name: str | None = None, map_location=None) -> None:
        super().__init__(str(folder), load_dict, name=name, map_location=map_location)
        self.folder = Path(folder)
        self.optional = set(optional)
        self.loaded: Path | None = None
        self.others: list[Path] = []

    def __call__(self, engine) -> None:
        candidates = checkpoint_candidates(self.folder)
        required = set(self.load_dict) - self.optional
        for path in candidates:
            try:
                checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
            except Exception as e:  # a kill or a full disk during the write of a non-atomic copy
                self.logger.warning("checkpoint %s is unreadable (%s: %s); skipped, trying an older one",
                                    path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                continue
            missing = required - set(checkpoint) if isinstance(checkpoint, Mapping) else required
            if missing:
                self.logger.warning("checkpoint %s lacks %s; skipped, trying an older one", path, sorted(missing))
                continue
            to_load = {k: v for k, v in self.load_dict.items() if k in checkpoint}
            prior_max_epochs = engine.state.max_epochs
            Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint, strict=self.strict)
            if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
                raise ValueError(f"{path}: epoch {engine.state.epoch} is beyond max_epochs={prior_max_epochs}; "
                                 "raise max_epochs to train on, or use another checkpoint_dir.")
            engine.state.max_epochs = prior_max_epochs
            self.loaded, self.others = path, [p for p in candidates if p != path]
            self.logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
            return
        if candidates:
            self.logger.warning("no loadable checkpoint in %s; training from the start", self.folder)


def attach_validation_log(validator, logger: logging.Logger, savers: Sequence[AtomicDiskSaver] = ()) -> None:
    """Log a validator's metrics after each of its runs (``validation at epoch N: {...}``) and, when one of
    ``savers`` (its key-metric savers) wrote during that run, ``best model (<metric> <value>) saved to <path>``
    after them (so the line follows the metrics it is chosen by)."""
    for saver in savers:
        saver.announce = False

    def log(engine) -> None:
        metrics = {k: round(float(v), 4) for k, v in engine.state.metrics.items() if _is_number(v)}
        logger.info("validation at epoch %d: %s", engine.state.epoch, metrics)
        for saver in savers:
            if saver.last_saved is not None:
                path, value = saver.last_saved
                metric = (saver.best_metric or ("key metric", False))[0] or "key metric"
                logger.info("best model (%s %s) saved to %s", metric,
                            "?" if value is None else f"{value:.4f}", path)
                saver.last_saved = None

    validator.add_event_handler(Events.EPOCH_COMPLETED, log)


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
