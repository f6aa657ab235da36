"""Denoise and segment a volume of any size, block by block, on volara + daisy; resumable, local or on a cluster.

``run_blockwise`` builds one volara pipeline:

    DenoiSegPredict ─┬─ 2-D offsets: SliceInstances (the papers' per-slice protocol, whole slices)
                     ├─ 3-D offsets: ExtractFrags -> AffAgglom -> GraphMWS -> Relabel (two-pass, no seams)
                     └─ Downsample s1, s2, ... (the denoised image's pyramid)

and writes ``<output_dir>/<name>.zarr`` (OME-Zarr 0.5: the denoised image ``s0..sN``, ``labels/instances``
or ``labels/mask``, plus ``affinities`` uint8 and, in 3-D, ``fragments``), and ``<output_dir>/<name>.blockwise/``
(volara's done-block records and worker logs, the fragment graph database, the look-up table). Rerunning the
same call resumes: finished blocks are skipped. A different call on an existing output is refused unless
``overwrite=True``. See ``docs/scale.md``.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from funlib.geometry import Coordinate

from monai_denoiseg.blockwise.storage import open_volume, write_ome_metadata
from monai_denoiseg.blockwise.tasks import DenoiSegPredict, Downsample, SliceInstances, register_network
from monai_denoiseg.inferers import BlockInferer
from monai_denoiseg.provenance import config_hash
from monai_denoiseg.transforms.affinity import PAPER_OFFSETS_2D
from monai_denoiseg.utils.validation import check_offsets

__all__ = ["run_blockwise", "segment_blockwise", "output_root", "BlockwiseError"]

logger = logging.getLogger(__name__)

def output_root(input_file: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """``<output_dir>/<input name without its suffixes>.zarr``."""
    name = Path(str(input_file).rstrip("/")).name
    for suffix in (".ome.zarr", ".zarr", ".n5", ".hdf5", ".tiff", ".hdf", ".he5", ".h5", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(output_dir) / f"{name}.zarr"


def _claim_output(root: Path, work: Path, settings: dict, overwrite: bool) -> bool:
    """Resume an output made by the same settings, refuse any other unless ``overwrite``; True if resuming."""
    fingerprint = config_hash(settings)
    if root.exists() or work.exists():
        try:
            previous = dict(zarr.open_group(root, mode="r").attrs).get("monai_denoiseg", {}).get("fingerprint")
        except Exception:  # not ours, or not a zarr group at all
            previous = None
        if previous == fingerprint and not overwrite:
            logger.info("resuming %s: finished blocks are skipped", root)
            return True
        if not overwrite:
            raise FileExistsError(
                f"output {str(root)!r} exists already (made by {'other settings' if previous else 'something else'}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another output_dir."
            )
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    group = zarr.open_group(root, mode="w")
    group.attrs["monai_denoiseg"] = {"fingerprint": fingerprint, "settings": settings, "complete": False}
    return False


def _segmentation_3d(affinities: Path, root: Path, work: Path, offsets, shape, voxel_size, block_shape,
                     num_workers: int, db: Mapping | None, worker_config):
    """volara's two-pass segmentation: fragments per block with context, mean-affinity edges, one graph MWS."""
    from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
    from volara.datasets import Affs, Labels
    from volara.dbs import PostgreSQL, SQLite
    from volara.lut import LUT

    n_attr = 3  # the nearest neighbours: attractive, as AffinityToInstances' default
    edge_attrs = {"adj_aff": "float", "lr_aff": "float"}
    graph = (SQLite(path=work / "fragments.db", edge_attrs=edge_attrs) if not db or db.get("db_type", "sqlite") == "sqlite"
             else PostgreSQL(**{k: v for k, v in db.items() if k != "db_type"}, edge_attrs=edge_attrs))
    affs = Affs(store=affinities, neighborhood=[Coordinate(o) for o in offsets])
    frags = Labels(store=root / "fragments")
    segments = Labels(store=root / "labels" / "instances" / "s0")
    reach = Coordinate(max(abs(o[d]) for o in offsets) for d in range(3))
    common = dict(block_size=Coordinate(block_shape), num_workers=num_workers, worker_config=worker_config)
    # elf's mutex watershed as mwatershed weights: nearest neighbours attract with p (bias 0), long-range
    # edges repel with 1 - p (bias -1); the long-range ones on the reference's (1, 5, 5) grid
    extract = ExtractFrags(db=graph, affs_data=affs, frags_data=frags, context=reach * 2,
                           bias=[0.0] * n_attr + [-1.0] * (len(offsets) - n_attr),
                           strides=[Coordinate(1, 1, 1)] * n_attr + [Coordinate(1, 5, 5)] * (len(offsets) - n_attr),
                           **common)
    agglom = AffAgglom(db=graph, affs_data=affs, frags_data=frags, context=reach,
                       scores={"adj_aff": affs.neighborhood[:n_attr], "lr_aff": affs.neighborhood[n_attr:]}, **common)
    lut = LUT(path=work / "lut.npz")  # a Path is taken as given: keep the suffix np.savez adds
    total = Coordinate(shape) * Coordinate(voxel_size)
    mws = GraphMWS(db=graph, lut=lut, weights={"adj_aff": (1.0, 0.0), "lr_aff": (1.0, -1.0)},
                   roi=(Coordinate(0, 0, 0), total), worker_config=worker_config)
    relabel = Relabel(lut=lut, frags_data=frags, seg_data=segments, **common)
    return extract + agglom + mws + relabel


def _pyramid_tasks(root: Path, shape, voxel_size, block, levels: int | None, workers: int, worker_config):
    """Downsample tasks s1, s2, ... of the denoised image (2x in-plane, z too when the voxels are isotropic) down
    to ~256 in-plane, or ``levels`` of them; returns the tasks and every level's ``(path, voxel size)``."""
    tasks, out = [], [("s0", tuple(voxel_size))]
    factor = (2 if voxel_size[0] <= voxel_size[1] else 1, 2, 2)
    level_shape = tuple(shape)
    for level in range(1, 1 + (levels if levels is not None else 16)):
        nxt = tuple(max(1, n // f) for n, f in zip(level_shape, factor))
        if (levels is None and max(nxt[1:]) < 256) or nxt == level_shape:
            break
        vs = tuple(v * f for v, f in zip(out[-1][1], factor))
        tasks.append(Downsample(source=root / out[-1][0], target=root / f"s{level}", factor=Coordinate(factor),
                                shape=Coordinate(nxt), voxel_size=Coordinate(vs),
                                block_size=Coordinate(tuple(min(b, n) for b, n in zip(block, nxt))),
                                num_workers=workers, worker_config=worker_config))
        out.append((f"s{level}", vs))
        level_shape = nxt
    return tasks, out


def _segmentation_tasks(root: Path, work: Path, offsets, shape, voxel_size, block, workers: int, db, worker_config,
                        mws_kwargs):
    """The tasks that turn ``root/affinities`` into ``root/labels/instances/s0``: per slice (2-D offsets) or
    volara's two-pass segmentation (3-D offsets)."""
    if len(offsets[0]) == 2:
        geometry = dict(shape=Coordinate(shape), voxel_size=Coordinate(voxel_size))
        return SliceInstances(affinities=root / "affinities", instances=root / "labels" / "instances" / "s0",
                              offsets=offsets, mws_kwargs=dict(mws_kwargs or {}),
                              block_size=Coordinate(block[0], shape[1], shape[2]),  # whole slices
                              num_workers=workers, worker_config=worker_config, **geometry)
    return _segmentation_3d(root / "affinities", root, work, offsets, shape, voxel_size, block, workers, db, worker_config)


def segment_blockwise(root: str | os.PathLike, block_shape: Sequence[int], num_workers: int = 1,
                      db: Mapping[str, Any] | None = None, worker_config: Any = None,
                      mws_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Instances ``root/labels/instances/s0`` of the affinities ``root/affinities`` (uint8 or float (C, Z, Y, X)
    with a ``neighborhood`` attribute, e.g. from another model), blockwise; returns the instances' path."""
    root = Path(root)
    affs = zarr.open_array(root / "affinities", mode="r")
    offsets = [list(o) for o in check_offsets(affs.attrs.get("neighborhood"), key=f"{root / 'affinities'} neighborhood")]
    voxel_size = tuple(int(v) for v in affs.attrs.get("voxel_size", (1, 1, 1)))
    work = root.with_suffix(".blockwise")
    work.mkdir(parents=True, exist_ok=True)
    _run(_segmentation_tasks(root, work, offsets, affs.shape[1:], voxel_size, tuple(block_shape), num_workers, db,
                             worker_config, mws_kwargs), work)
    return root / "labels" / "instances" / "s0"


def run_blockwise(
    network: torch.nn.Module | str,
    input_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    input_key: str | None = None,
    *,
    network_kwargs: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    stages: Sequence[str] | None = None,
    offsets: Sequence[Sequence[int]] | None = PAPER_OFFSETS_2D,
    binary: bool = False,
    roi_size: Sequence[int] = (256, 256),
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    block_shape: Sequence[int] | None = None,
    num_workers: int | None = None,
    threads_per_worker: int | None = None,
    device: str = "auto",
    amp: bool = False,
    intensity_range: Sequence[float] | None = None,
    voxel_size: Sequence[int] | None = None,
    mws_kwargs: Mapping[str, Any] | None = None,
    pyramid_levels: int | None = None,
    db: Mapping[str, Any] | None = None,
    worker_config: Any = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Denoise and segment ``input_file[input_key]`` blockwise; returns the paths written.

    Args:
        network: a module (local workers only), or the import path of a network factory called with
            ``network_kwargs`` and loaded from ``checkpoint`` in every worker (any worker, also on a cluster).
        stages: the strategy's stages (``Strategy.stages``), passed as ``network(x, stages=...)``.
        offsets: the segmenter's affinity offsets: 2-D = per-slice mutex watershed, 3-D = volara's two-pass
            segmentation; ``binary=True`` writes a mask (p > 0.5) instead.
        roi_size, overlap, sw_batch_size, amp: the sliding window (:class:`~monai_denoiseg.inferers.BlockInferer`).
        block_shape: (z, y, x) voxels written per block, multiples of the window stride in-plane (2-D) or on
            every axis (3-D); default :meth:`BlockInferer.default_block_shape`.
        num_workers: worker processes (default: the cores available); ``threads_per_worker`` torch threads each
            (default: cores // workers). ``device="auto"``: one GPU per worker when there are GPUs.
        intensity_range: the input's (low, high) for non-uint8 input (uint8 is 0-255).
        voxel_size: (z, y, x) in nm when the file does not say.
        db: the fragment graph for 3-D: None = SQLite in the work folder; ``{"db_type": "postgresql", "host": ...,
            "port": ..., "name": ..., "user": ..., "password": ...}`` for a cluster.
        worker_config: a volara ``Worker`` (``LocalWorker``, ``SlurmWorker(queue=...)``, ``LSFWorker(queue=...)``)
            to start workers as separate jobs; None = forked local processes.
        overwrite: replace an output made by other settings (the same settings always resume).
    """
    src = Path(input_file).expanduser().resolve()
    volume = open_volume(src, input_key, voxel_size=voxel_size)
    shape, vs = tuple(int(s) for s in volume.shape), tuple(int(v) for v in volume.voxel_size)
    if volume.dtype != np.uint8 and intensity_range is None:
        raise ValueError(f"{str(src)!r}{f', key {input_key!r}' if input_key else ''}: dtype {volume.dtype}, shape "
                         f"{shape}: expected uint8 0-255, or declare intensity_range=(low, high) for other input.")
    root, work = output_root(src, output_dir), output_root(src, output_dir).with_suffix(".blockwise")
    if root.resolve() == src or src in root.resolve().parents:
        raise ValueError(f"output_dir: the output {str(root)!r} would overwrite the input {str(src)!r}.")
    inferer = BlockInferer(roi_size, overlap=overlap, sw_batch_size=sw_batch_size, amp=amp)
    block = inferer.check_block_shape(block_shape if block_shape is not None else inferer.default_block_shape(shape))
    offs = None if binary or offsets is None else [list(o) for o in check_offsets(offsets)]
    if offs is not None and len(offs[0]) != inferer.spatial_dims and len(offs[0]) == 2:
        raise ValueError(f"offsets: 2-D offsets with a 3-D roi_size {tuple(roi_size)}; use 3-D offsets.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(num_workers or cores)
    threads = int(threads_per_worker or max(1, cores // workers))
    live: dict[str, torch.nn.Module] = {}
    if isinstance(network, torch.nn.Module):
        live[f"live-{id(network):x}"] = network
        spec: dict[str, Any] = {"network_token": next(iter(live))}
        if worker_config is not None:
            raise ValueError("network: a live module cannot reach cluster workers; pass the factory's import path, "
                             "network_kwargs and checkpoint.")
    else:
        spec = {"network_target": str(network), "network_kwargs": dict(network_kwargs or {}),
                "checkpoint": None if checkpoint is None else Path(checkpoint).resolve()}
    settings = dict(input=str(src), key=input_key, shape=shape, voxel_size=vs, mtime=os.stat(src).st_mtime_ns,
                    network=str(network) if "network_target" in spec else "live module", network_kwargs=network_kwargs,
                    checkpoint=str(checkpoint), stages=list(stages or []), offsets=offs, binary=binary,
                    roi_size=list(roi_size), overlap=overlap, block_shape=list(block), intensity_range=intensity_range,
                    mws_kwargs=dict(mws_kwargs or {}), amp=amp)
    _claim_output(root, work, settings, overwrite)
    work.mkdir(parents=True, exist_ok=True)

    geometry = dict(shape=Coordinate(shape), voxel_size=Coordinate(vs))
    predict = DenoiSegPredict(
        input_store=src, input_key=input_key, intensity_range=None if intensity_range is None else tuple(intensity_range),
        out_root=root, stages=list(stages) if stages else None, offsets=offs or [], binary=binary,
        roi_size=list(inferer.roi_size), overlap=overlap, sw_batch_size=sw_batch_size, device=device, amp=amp,
        threads=threads, block_size=Coordinate(block), num_workers=workers, worker_config=worker_config,
        **geometry, **spec)
    paths = {"zarr": root, "denoised": root / "s0"}
    after = []
    if binary:
        paths["mask"] = root / "labels" / "mask" / "s0"
    elif offs is not None:
        after.append(_segmentation_tasks(root, work, offs, shape, vs, block, workers, db, worker_config, mws_kwargs))
        paths.update(affinities=root / "affinities", instances=root / "labels" / "instances" / "s0")
    pyramid, levels = _pyramid_tasks(root, shape, vs, block, pyramid_levels, workers, worker_config)
    if pyramid:  # the levels one after another, beside the segmentation
        after.append(functools.reduce(operator.add, pyramid))
    pipeline = predict + functools.reduce(operator.or_, after) if after else predict
    _run(pipeline, work, live)
    write_ome_metadata(root, levels, labels=["mask" if binary else "instances"] if (binary or offs) else [])
    group = zarr.open_group(root, mode="a")
    meta = dict(group.attrs["monai_denoiseg"])
    meta["complete"] = True
    group.attrs["monai_denoiseg"] = meta
    return paths


class _FirstFailures(logging.Handler):
    """Keeps the first block failures daisy's server logs (the worker's exception, e.g. a bad input block)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 3 and "failed in worker" in record.getMessage():
            self.messages.append(record.getMessage())


def _run(pipeline, work: Path, networks: Mapping[str, torch.nn.Module] | None = None) -> None:
    """Run ``pipeline`` on daisy's server in a fresh Python process, which forks the workers.

    Forking the workers from the caller is unsafe once the caller has run torch: libgomp's thread pool does not
    survive ``fork`` (a forked worker with more than one thread hangs in its first parallel op) and CUDA cannot
    be re-initialised in a forked child. A fresh interpreter has never run torch, so the workers it forks start
    clean; unlike multiprocessing's spawn it does not re-run the caller's script. The pipeline, the log folder
    ``work`` and the live ``networks`` (token: module, sent on the CPU) travel pickled on stdin, the outcome
    comes back on a pipe."""
    import copy
    import pickle
    import subprocess
    import sys

    cpu = {token: copy.deepcopy(net).cpu() if any(p.is_cuda for p in net.parameters()) else net
           for token, net in (networks or {}).items()}
    request = pickle.dumps((pipeline, Path(work), cpu))
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}  # the caller's modules
    server = subprocess.Popen([sys.executable, "-c", f"from {__name__} import _serve; _serve({write_end})"],
                              stdin=subprocess.PIPE, pass_fds=(write_end,), env=env)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as replies:
            server.stdin.write(request)
            server.stdin.close()
            reply = replies.read()
        server.wait()
    except BaseException:  # Ctrl-C: stop the server; its workers end with it
        server.terminate()
        server.wait()
        raise
    outcome = pickle.loads(reply) if reply else BlockwiseError(
        f"the blockwise server process died (exit code {server.returncode}); rerun the same command to resume "
        "from the finished blocks.")
    if outcome is not None:
        raise outcome


def _serve(reply_fd: int) -> None:
    """The server process: volara's ``Pipeline.run_blockwise`` on daisy's server, keeping the task states
    (``daisy.run_blockwise`` reports success even when blocks failed); replies None or the exception to raise."""
    import contextlib
    import ctypes
    import pickle
    import signal
    import sys

    import daisy
    import networkx as nx
    from daisy.cl_monitor import CLMonitor
    from volara.blockwise.pipeline import Pipeline
    from volara.logging import set_log_basedir

    with contextlib.suppress(Exception):  # Linux: die with the caller, so a killed run leaves no server behind
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    outcome: BaseException | None = None
    failures = _FirstFailures()
    server_log = logging.getLogger("daisy.server")
    server_log.addHandler(failures)
    try:
        pipeline, work, networks = pickle.loads(sys.stdin.buffer.read())
        set_log_basedir(work)  # volara's and the workers' logs in the work folder
        for token, network in networks.items():
            register_network(network, token)
        graph = (pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)).task_graph
        with contextlib.ExitStack() as stack:
            tasks: dict = {}
            for node in nx.topological_sort(graph):
                upstream = [tasks[u] for u in graph.predecessors(node)]
                tasks[node] = stack.enter_context(node.task(upstream_tasks=upstream, multiprocessing=True))
            server = daisy.Server()
            CLMonitor(server)  # daisy's progress bar per task
            states = server.run_blockwise(list(tasks.values()))
        bad = {name: f"{s.failed_count} failed, {s.orphaned_count} orphaned of {s.total_block_count}"
               for name, s in states.items() if s.failed_count or s.orphaned_count}
        if bad:
            first = "\n  ".join(failures.messages) or "see the worker logs"
            outcome = BlockwiseError(f"blockwise run failed: {bad}.\n  {first}\nRerun the same command to resume "
                                     "from the finished blocks once the cause is fixed.")
    except Exception as e:  # e.g. an output array that cannot be prepared
        outcome = e
    finally:
        server_log.removeHandler(failures)
    with os.fdopen(reply_fd, "wb") as reply:
        try:
            message = pickle.dumps(outcome)
        except Exception:  # an exception that does not pickle
            message = pickle.dumps(BlockwiseError(f"{type(outcome).__name__}: {outcome}"))
        reply.write(message)


class BlockwiseError(RuntimeError):
    """Blocks of a blockwise run failed (the message holds the first failures)."""