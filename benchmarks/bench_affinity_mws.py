"""Benchmark: labels -> affinity targets -> mutex watershed, on real EM labels (read in place, never copied).

2-D: a 1024x1024 slice = 2x2 tiles of an ISBI 2012 label slice (512x512, ids made disjoint per tile),
the paper's 10 offsets. 3-D: a 128^3 crop of the FIB-SEM medulla neuron ids, ``DEFAULT_OFFSETS_3D``.
The mutex watershed is timed on "predictions" = exact affinities squashed to [0.1, 0.9] plus Gaussian
noise (sigma 0.1; exact 0/1 affinities are all ties, which is not what a network gives), and the round
trip is scored by the adapted Rand error against the ground truth (background 0 ignored in ISBI; the
ground truth split into face-connected pieces, since a mutex watershed segment is always connected).

    python benchmarks/bench_affinity_mws.py [--repeats 5] [--json out.json] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error

from monai_denoiseg.transforms.affinity import DEFAULT_OFFSETS_3D, PAPER_OFFSETS_2D, LabelToAffinity
from monai_denoiseg.transforms.instances import AffinityToInstances

DEFAULT_DATA = Path(os.environ.get("MONAI_DENOISEG_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load_2d(data_dir: Path) -> np.ndarray:
    import tifffile

    tile = tifffile.imread(data_dir / "isbi2012" / "train-labels.tif", key=0).astype(np.int64)
    step = int(tile.max()) + 1  # ids disjoint per tile; 0 (membrane) stays 0
    tiles = [np.where(tile > 0, tile + k * step, 0) for k in range(4)]
    return np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])


def load_3d(data_dir: Path) -> np.ndarray:
    import h5py

    with h5py.File(data_dir / "medulla_fibsem.h5", "r") as f:
        return f["volumes/labels/neuron_ids"][:128, :128, :128]


def median_time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and process-CPU seconds (CPU time is the steadier figure on a shared machine), last output."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu)), out


def run(repeats: int, data_dir: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    cases = [
        ("2-D 1024x1024", load_2d(data_dir), PAPER_OFFSETS_2D, 0, [(5, 5), (1, 1)]),
        ("3-D 128^3", load_3d(data_dir), DEFAULT_OFFSETS_3D, None, [(1, 5, 5), (1, 1, 1)]),
    ]
    for name, lab, offsets, background, strides_list in cases:
        to_aff = LabelToAffinity(offsets, background_label=background)
        t, c, (aff, _, _) = median_time(lambda: to_aff.compute(lab[None]), repeats)
        rows.append({"step": "labels -> affinity, weight, mask", "data": name, "channels": len(offsets), "strides": "-",
                     "median_s": t, "median_cpu_s": c})
        pred = np.clip(0.1 + 0.8 * aff + rng.normal(0, 0.1, aff.shape), 0, 1).astype(np.float32)
        mask = None if background is None else lab[None] != background
        gt = connected_components(lab.astype(np.int64) + (background is None), connectivity=1)
        for strides in strides_list:
            mws = AffinityToInstances(offsets, strides=strides)
            t, c, seg = median_time(lambda: mws(pred, mask=mask), repeats)
            err = adapted_rand_error(gt, seg[0], ignore_labels=(0,))[0]
            rows.append({"step": "mutex watershed (noisy affinities)", "data": name, "channels": len(offsets),
                         "strides": str(strides), "median_s": t, "median_cpu_s": c, "arand": float(err),
                         "segments": int(seg.max())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    rows = run(args.repeats, args.data_dir)
    print(f"{'step':36s} {'data':14s} {'ch':>3s} {'strides':10s} {'wall s':>7s} {'CPU s':>7s} {'ARAND':>7s}")
    for r in rows:
        arand = f"{r['arand']:.4f}" if "arand" in r else ""
        print(f"{r['step']:36s} {r['data']:14s} {r['channels']:3d} {r['strides']:10s} {r['median_s']:7.3f} "
              f"{r['median_cpu_s']:7.3f} {arand:>7s}")
    if args.json:
        meta = {"repeats": args.repeats, "machine": platform.platform(), "cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
