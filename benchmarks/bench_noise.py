"""Time the synthetic EM noise: one 1024 x 1024 slice per transform and input kind, and a whole fixed noisy copy.

    python benchmarks/bench_noise.py [--repeats 7] [--threads 1] [--volume ../shared/data/medulla_fibsem.h5] [--json]

Prints a table of median (and min) milliseconds over ``--repeats`` runs; ``--json`` prints the same
rows as JSON. The volume row times ``make_noisy_copy`` on the ``volumes/raw`` dataset of ``--volume``
(the 250^3 FIB-SEM medulla cube by default), skipped when the file is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from monai_denoiseg.data.noisy_copy import make_noisy_copy
from monai_denoiseg.transforms.noise import RandFilmNoise, RandGaussianPoissonNoise

DEFAULT_VOLUME = Path(__file__).resolve().parents[2] / "shared" / "data" / "medulla_fibsem.h5"


def median_ms(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def run(repeats: int, volume: Path) -> list[dict]:
    image = np.random.default_rng(0).integers(0, 256, (1, 1024, 1024)).astype(np.uint8)
    rows = []
    for transform in (RandGaussianPoissonNoise(), RandFilmNoise()):
        name = type(transform).__name__
        transform.set_random_state(0)
        for kind, x in [("numpy uint8", image), ("torch float32", torch.as_tensor(image, dtype=torch.float32))]:
            med, best = median_ms(lambda: transform(x), repeats)
            rows.append({"case": f"{name}, 1x1024x1024 {kind}", "median_ms": med, "min_ms": best})
    if volume.is_file():
        import h5py

        with h5py.File(volume, "r") as f:
            raw = f["volumes/raw"][()]
        for noise in ("gaussian_poisson", "film"):
            med, best = median_ms(lambda: make_noisy_copy(raw, noise, seed=0), max(1, repeats // 3))
            case = f"make_noisy_copy {noise}, {'x'.join(map(str, raw.shape))} uint8"
            rows.append({"case": case, "median_ms": med, "min_ms": best})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME, help="CREMI-layout HDF5 file for the copy row")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.repeats, args.volume)
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
    }
    if args.json:
        print(json.dumps({"environment": env, "repeats": args.repeats, "rows": rows}, indent=2))
        return
    print(f"repeats={args.repeats}, " + ", ".join(f"{k}={v}" for k, v in env.items()))
    width = max(len(r["case"]) for r in rows)
    print(f"| {'case':<{width}} | median ms | min ms |")
    print(f"|{'-' * (width + 2)}|----------:|-------:|")
    for r in rows:
        print(f"| {r['case']:<{width}} | {r['median_ms']:9.1f} | {r['min_ms']:6.1f} |")


if __name__ == "__main__":
    main()
