"""Median time of VOI / adapted Rand error per 1024x1024 slice: monai_denoiseg vs scikit-image.

Real labels read in place from the shared data folder (never copied): ISBI 2012 neurite labels
tiled 2x2 to 1024x1024 (0 = membrane, ignored), and medulla FIB-SEM slices upsampled 4x to 1000x1000
(dense uint64 ids), the latter also with CREMI-style ids >= 2^63. The segmentation is the ground
truth with a fifth of its ids merged and every cell crossing the middle column split.

Columns (ms per slice): our function and scikit-image's called slice by slice, and our cumulative
metric given the whole (1, 1, D, H, W) stack at once (``mode="slice"``).

    python benchmarks/bench_metrics.py [--slices 4] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

DATA_DIR = Path(os.environ.get("MONAI_DENOISEG_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def perturb(gt: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seg = gt.astype(np.int64)
    ids = np.unique(seg[seg > 0])
    seg[np.isin(seg, rng.choice(ids, size=len(ids) // 5, replace=False))] = ids[0]
    seg[..., seg.shape[-1] // 2 :] += seg.max() + 1
    return seg


def cases(n_slices: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (segmentation, ground truth), each (D, H, W)."""
    import h5py
    import tifffile

    isbi = tifffile.imread(DATA_DIR / "isbi2012" / "train-labels.tif", key=range(n_slices))
    isbi = isbi.reshape(n_slices, *isbi.shape[-2:]).astype(np.int64)
    step = isbi.max() + 1
    isbi = np.block([[isbi + (2 * i + j) * step * (isbi > 0) for j in range(2)] for i in range(2)])
    with h5py.File(DATA_DIR / "medulla_fibsem.h5", "r") as f:
        medulla = f["volumes/labels/neuron_ids"][125 : 125 + n_slices]
    medulla = np.kron(medulla, np.ones((1, 4, 4), dtype=medulla.dtype))
    return {
        "isbi 2x2 tile, 1024^2, 0 ignored": (perturb(isbi), isbi),
        "medulla x4, 1000^2, uint64": (perturb(medulla).astype(np.uint64), medulla),
        "medulla x4, uint64 ids >= 2^63": (
            perturb(medulla).astype(np.uint64) + np.uint64(2**63),
            medulla * np.uint64(2**40) + np.uint64(2**63),
        ),
    }


def median_ms(fn, repeats: int, per: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    from skimage.metrics import adapted_rand_error as sk_arand
    from skimage.metrics import variation_of_information as sk_voi

    from monai_denoiseg.metrics import (
        AdaptedRandErrorMetric,
        VariationOfInformationMetric,
        adapted_rand_error,
        variation_of_information,
    )

    def batched(metric_cls, seg, gt):
        metric = metric_cls()
        metric(seg[None, None], gt[None, None])
        return metric.aggregate()

    rows = []
    for name, (seg, gt) in cases(args.slices).items():
        d = gt.shape[0]
        time_it = lambda fn: median_ms(fn, args.repeats, d)  # noqa: E731
        row = {
            "case": name,
            "voi_ms": time_it(lambda: [variation_of_information(seg[z], gt[z]) for z in range(d)]),
            "voi_batched_ms": time_it(lambda: batched(VariationOfInformationMetric, seg, gt)),
            "arand_ms": time_it(lambda: [adapted_rand_error(seg[z], gt[z]) for z in range(d)]),
            "arand_batched_ms": time_it(lambda: batched(AdaptedRandErrorMetric, seg, gt)),
        }
        try:
            row["skimage_voi_ms"] = time_it(lambda: [sk_voi(gt[z], seg[z], ignore_labels=(0,)) for z in range(d)])
            row["skimage_arand_ms"] = time_it(lambda: [sk_arand(gt[z], seg[z]) for z in range(d)])
            row["max_abs_diff"] = max(
                max(
                    abs(variation_of_information(s, g).total - sum(sk_voi(g, s, ignore_labels=(0,)))),
                    abs(adapted_rand_error(s, g).error - sk_arand(g, s)[0]),
                )
                for s, g in zip(seg, gt)
            )
        except Exception as err:  # noqa: BLE001 - scikit-image sizes its table by the largest raw id
            row.update(skimage_voi_ms=float("nan"), skimage_arand_ms=float("nan"), skimage_error=repr(err)[:70])
        rows.append(row)

    if args.json:
        meta = {"slices": args.slices, "repeats": args.repeats, "unit": "ms per slice, median"}
        print(json.dumps({**meta, "rows": rows}, indent=2))
        return
    cols = [("voi_ms", "VOI"), ("voi_batched_ms", "VOI batch"), ("skimage_voi_ms", "VOI skimage"),
            ("arand_ms", "ARAND"), ("arand_batched_ms", "ARAND batch"), ("skimage_arand_ms", "ARAND skimage")]
    print(f"{'case (ms per slice)':<34}" + "".join(f"{title:>15}" for _, title in cols))
    for r in rows:
        print(f"{r['case']:<34}" + "".join(f"{r[key]:>15.1f}" for key, _ in cols))
        if "skimage_error" in r:
            print(f"{'':<34}scikit-image fails: {r['skimage_error']}")
        else:
            print(f"{'':<34}largest |ours - scikit-image|: {r['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
