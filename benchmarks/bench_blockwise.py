"""Blockwise (volara + daisy) against the in-RAM whole-volume path: peak memory, throughput, same answer.

Volumes are tiled from the real medulla cube (slices mirrored in-plane to ``--plane``, stacked in z) into
zarr arrays in a temporary folder (never committed). For each volume, in its own process:

- ``blockwise``: :func:`monai_denoiseg.blockwise.run_blockwise` with the bundle's 2-D network (paper widths,
  random weights: the cost does not depend on them), default block shape, 1 or 2 workers x 1 thread;
  peak RSS of the main process and of every worker (sampled every 50 ms with psutil), voxels/s.
- ``in-RAM``: the path this replaced: the whole volume read, one sliding window over every whole slice,
  one global per-slice mutex watershed; its peak RSS and voxels/s.

``--segmentation-3d`` compares volara's two-pass 3-D segmentation with the global mutex watershed on the 250^3
cube (ground-truth affinities + Gaussian noise), VOI and adapted Rand against the ground truth, >= 8 blocks.

    python benchmarks/bench_blockwise.py [--plane 512] [--depths 8 16 64] [--repeats 3]
    python benchmarks/bench_blockwise.py --segmentation-3d [--block 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("MONAI_DENOISEG_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
FEATURES = [16, 32, 64, 128]


def make_volume(path: Path, depth: int, plane: int) -> Path:
    """``depth`` medulla slices, each mirrored to ``plane`` x ``plane``, as a zarr array written slice by slice."""
    import h5py
    import zarr

    arr = zarr.create_array(path, shape=(depth, plane, plane), chunks=(1, 256, 256), dtype=np.uint8)
    with h5py.File(DATA / "medulla_fibsem.h5", "r") as f:
        raw = f["volumes/raw"]
        for z in range(depth):
            sl = raw[z % raw.shape[0]]
            reps = -(-plane // sl.shape[0])
            tile = np.block([[sl if (i + j) % 2 == 0 else sl[::-1, ::-1] for j in range(reps)] for i in range(reps)])
            arr[z] = tile[:plane, :plane]
    return path


class PeakRSS:
    """Peak resident memory of this process and of each of its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.me, self.interval = psutil.Process(), interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def main_gib(self) -> float:
        return self.peaks.get(self.me.pid, 0) / 2**30

    @property
    def worker_gib(self) -> float:
        return max([v for k, v in self.peaks.items() if k != self.me.pid] or [0]) / 2**30


def _network():
    import torch

    from monai_denoiseg.networks import paper_joint_net

    torch.manual_seed(0)
    return paper_joint_net(features=FEATURES, denoiser_kwargs={"features": FEATURES},
                           segmenter_kwargs={"features": FEATURES}).eval()


def run_one(mode: str, volume: Path, workers: int, out: Path) -> dict:
    """One measurement in this process (the caller starts a fresh process per measurement)."""
    import torch
    import zarr

    torch.set_num_threads(1)
    net = _network()
    shape = zarr.open_array(volume, mode="r").shape
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        if mode == "blockwise":
            from monai_denoiseg.blockwise import run_blockwise

            run_blockwise(net, volume, out, num_workers=workers, threads_per_worker=1, pyramid_levels=0)
        else:
            from monai_denoiseg.inferers import BlockInferer
            from monai_denoiseg.postprocessing import segment
            from monai_denoiseg.transforms import PAPER_OFFSETS_2D

            x = torch.as_tensor(zarr.open_array(volume, mode="r")[...] / 255.0, dtype=torch.float32)[None]
            pred = BlockInferer((256, 256))(net, x)  # the former predict_volume: one window grid per whole slice
            segment(pred["affinity_prob"], PAPER_OFFSETS_2D)
        seconds = time.perf_counter() - t0
    return {"mode": mode, "shape": list(shape), "workers": workers, "seconds": seconds,
            "voxels_per_s": float(np.prod(shape)) / seconds, "main_gib": rss.main_gib, "worker_gib": rss.worker_gib}


def bench_memory_throughput(plane: int, depths: list[int], repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_blockwise.") as tmp:
        for depth in depths:
            vol = make_volume(Path(tmp) / f"medulla_{depth}.zarr", depth, plane)
            for mode, workers in (("blockwise", 1), ("blockwise", 2), ("in-RAM", 1)):
                runs = []
                for r in range(repeats):
                    out = Path(tmp) / f"out_{depth}_{mode}_{workers}_{r}"
                    res = subprocess.run([sys.executable, __file__, "--one", mode, str(vol), str(workers), str(out)],
                                         check=True, capture_output=True, text=True)
                    runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                row = {k: runs[0][k] for k in ("mode", "shape", "workers")}
                for k in ("seconds", "voxels_per_s", "main_gib", "worker_gib"):
                    row[k] = statistics.median(r[k] for r in runs)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def bench_segmentation_3d(block: int, sigma: float, size: int) -> dict:
    import h5py
    import zarr

    from monai_denoiseg.blockwise import prepare_array, segment_blockwise
    from monai_denoiseg.metrics import AdaptedRandErrorMetric, VariationOfInformationMetric
    from monai_denoiseg.postprocessing import segment
    from monai_denoiseg.transforms import DEFAULT_OFFSETS_3D, LabelToAffinity

    with h5py.File(DATA / "medulla_fibsem.h5", "r") as f:
        gt = f["volumes/labels/neuron_ids"][:size, :size, :size].astype(np.int64)
    aff = np.asarray(LabelToAffinity(DEFAULT_OFFSETS_3D)(gt[None]))
    noisy = np.clip(0.05 + 0.9 * aff + np.random.default_rng(0).normal(0, sigma, aff.shape), 0, 1)
    aff_u8 = np.rint(noisy * 255).astype(np.uint8)
    del aff, noisy

    def scores(seg):
        v = VariationOfInformationMetric(mode="volume", ignore_gt=(0,))(seg[None, None], gt[None, None])[0]
        a = AdaptedRandErrorMetric(mode="volume", ignore_gt=(0,))(seg[None, None], gt[None, None])[0]
        return {"voi": float(v[0]), "arand": float(a[0]), "segments": int(len(np.unique(seg)))}

    with tempfile.TemporaryDirectory(prefix="bench_seg3d.") as tmp:
        root = Path(tmp) / "cube.zarr"
        arr = prepare_array(root / "affinities", gt.shape, (block,) * 3, (1, 1, 1), np.uint8,
                            channels=len(DEFAULT_OFFSETS_3D), attrs={"neighborhood": [list(o) for o in DEFAULT_OFFSETS_3D]})
        arr[arr.roi] = aff_u8
        t0 = time.perf_counter()
        blockwise = zarr.open_array(segment_blockwise(root, (block,) * 3, num_workers=2))[...]
        t_block = time.perf_counter() - t0
    t0 = time.perf_counter()
    whole = segment(aff_u8.astype(np.float32) / 255.0, DEFAULT_OFFSETS_3D)
    t_whole = time.perf_counter() - t0
    blocks = int(np.prod([-(-s // block) for s in gt.shape]))
    row = {"shape": list(gt.shape), "block": block, "blocks": blocks, "sigma": sigma,
           "blockwise": {**scores(blockwise), "seconds": t_block}, "global": {**scores(whole), "seconds": t_whole}}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=4, metavar=("MODE", "VOLUME", "WORKERS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--plane", type=int, default=512)
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--segmentation-3d", action="store_true")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "blockwise.json")
    args = ap.parse_args(argv)
    if args.one:
        mode, vol, workers, out = args.one
        print(json.dumps(run_one(mode, Path(vol), int(workers), Path(out))))
        return 0
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    if args.segmentation_3d:
        results["segmentation_3d"] = [bench_segmentation_3d(args.block, s, args.size) for s in args.sigmas]
    else:
        results["memory_throughput"] = bench_memory_throughput(args.plane, args.depths, args.repeats)
    from monai_denoiseg.provenance import provenance

    results.setdefault("provenance", {}).update(provenance(data_files=[DATA / "medulla_fibsem.h5"]))
    args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
