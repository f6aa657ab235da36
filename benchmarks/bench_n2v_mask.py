"""Time Noise2Void blind-spot masking (RandN2VMask) on a batch of patches, one CPU thread.

Usage: python benchmarks/bench_n2v_mask.py [--repeats 200] [--json results.json]

Reference (CAREamics 0.3.5, same machine kind, one thread, 64 patches of 64x64 float32 at
0.2 %): 0.40 ms uniform, 2.8 ms median, 3.2 ms struct. CAREamics does not exclude the other blind
spots from a replacement; RandN2VMask does (see docs/n2v_masking.md, "The blind-spot guarantee").
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from monai_denoiseg.transforms.n2v import RandN2VMask

CAREAMICS_MS = {"uniform": 0.40, "median": 2.8, "struct": 3.2}

# (name, batch shape, transform kwargs)
CASES = [
    ("uniform", (64, 1, 64, 64), {}),
    ("median", (64, 1, 64, 64), {"strategy": "median"}),
    ("struct", (64, 1, 64, 64), {"struct_mask": np.ones((1, 5))}),
    ("median+struct", (64, 1, 64, 64), {"strategy": "median", "struct_mask": np.ones((1, 5))}),
    ("zero", (64, 1, 64, 64), {"strategy": "zero"}),
    ("gaussian", (64, 1, 64, 64), {"strategy": "gaussian"}),
    ("uniform 3-D", (8, 1, 64, 64, 64), {"spatial_dims": 3}),
    ("median 3-D", (8, 1, 64, 64, 64), {"spatial_dims": 3, "strategy": "median"}),
    ("median 3-D, window 5", (8, 1, 64, 64, 64), {"spatial_dims": 3, "strategy": "median", "window": 5}),
    ("struct 3-D", (8, 1, 64, 64, 64), {"spatial_dims": 3, "struct_mask": np.ones((1, 1, 5))}),
    # the second paper's grid (169 blind spots per 256x256 patch), and a grid denser than the window
    # (4-pixel cells, 11-pixel window), where excluding the other blind spots costs the most
    ("uniform, grid 13", (16, 1, 256, 256), {"grid_shape": 13}),
    ("median, grid 13", (16, 1, 256, 256), {"grid_shape": 13, "strategy": "median"}),
    ("uniform, grid 16", (64, 1, 64, 64), {"grid_shape": 16}),
    ("median, grid 16", (64, 1, 64, 64), {"grid_shape": 16, "strategy": "median"}),
]


def time_case(shape, kwargs, repeats: int, warmup: int) -> dict[str, float]:
    """Wall-clock median and quartiles (ms) of one masking call, and the median CPU time of the
    calling thread (ms), which leaves out the time the thread waited for a core on a shared machine."""
    x = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    t = RandN2VMask(masked_pixel_percentage=0.2, **kwargs)
    t.set_random_state(0)
    for _ in range(warmup):
        t(x)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        t(x)
        cpu.append((time.thread_time() - start_cpu) * 1e3)
        wall.append((time.perf_counter() - start) * 1e3)
    q25, q50, q75 = np.percentile(wall, [25, 50, 75])
    return {"median_ms": float(q50), "q25_ms": float(q25), "q75_ms": float(q75), "cpu_median_ms": float(np.median(cpu))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per 2-D case (after warm-up)")
    parser.add_argument("--repeats-3d", type=int, default=20, help="timed runs per 3-D case")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    print(f"{'case':<22} {'batch':<14} {'median ms':>10} {'IQR ms':>16} {'CPU ms':>8} {'CAREamics ms':>13}")
    for name, shape, kwargs in CASES:
        repeats = args.repeats_3d if len(shape) == 5 else args.repeats
        r = time_case(shape, kwargs, repeats, min(args.warmup, repeats))
        ref = CAREAMICS_MS.get(name)
        rows.append({"case": name, "batch": list(shape), **r, "repeats": repeats, "careamics_ms": ref})
        iqr = f"{r['q25_ms']:.3f}-{r['q75_ms']:.3f}"
        ref_s = f"{ref:.2f}" if ref is not None else "-"
        batch = "x".join(map(str, shape))
        print(f"{name:<22} {batch:<14} {r['median_ms']:>10.3f} {iqr:>16} {r['cpu_median_ms']:>8.3f} {ref_s:>13}")

    if args.json:
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                "machine": platform.machine(), "processor": platform.processor(), "masked_pixel_percentage": 0.2}
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
