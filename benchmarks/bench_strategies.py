"""Training iteration per strategy, and whole-volume inference (2-D per slice and 3-D), at the bundles' scale.

One real batch of the medulla bundle (noisy Gaussian-Poisson copy, 10 affinity offsets) is fed to
a ``DenoiSegTrainer`` of every strategy (MONAI's SupervisedTrainer iteration); the median over ``--repeats``
iterations (after one warm-up) is reported. ``--inference`` also times the whole 250^3 medulla cube through ``predict_volume`` with the 2-D
bundle network (per slice) and with the 3-D configuration's network, with the peak resident memory of
each (its own process).

    OMP_NUM_THREADS=2 python benchmarks/bench_strategies.py [--features 16 32 64 128] [--patch 128] [--batch 4]
    python benchmarks/bench_strategies.py --inference
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("MONAI_DENOISEG_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def _peak_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20


def bench_steps(features, patch, batch, repeats) -> list[dict]:
    import torch
    from ignite.engine import Events

    from monai_denoiseg.data.datasets import PatchDataset, load_split, train_transforms
    from monai_denoiseg.engines import DenoiSegTrainer
    from monai_denoiseg.engines.strategies import STRATEGIES, get_strategy
    from monai_denoiseg.networks import paper_joint_net

    split = load_split(DATA / "medulla_fibsem.h5", (0, 20))
    ds = PatchDataset(split, (patch, patch), batch, train_transforms(), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch)
    data = next(iter(loader))
    rows = []
    for name in STRATEGIES:
        net = paper_joint_net(features=features, denoiser_kwargs={"features": features},
                              segmenter_kwargs={"features": features})
        strategy = get_strategy(name)
        # iterations only: pretrain_iterations=0 leaves the stages a strategy pretrains at their initial weights
        trainer = DenoiSegTrainer("cpu", 1, [data] * (repeats + 1), net, name, pretrain_iterations=0)
        times, t0 = [], [0.0]
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: t0.__setitem__(0, time.perf_counter()))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.append(time.perf_counter() - t0[0]))
        trainer.run()
        rows.append({"strategy": name, "median_s": statistics.median(times[1:]), "stages": list(strategy.stages),
                     "trainable": list(strategy.trainable)})
        print(f"{name:24s} {rows[-1]['median_s']:.3f} s/iteration", flush=True)
    return rows


def bench_inference(case: str) -> dict:
    import torch

    from monai_denoiseg.data.datasets import read_volume
    from monai_denoiseg.engines.evaluation import predict_volume, segment
    from monai_denoiseg.networks import paper_joint_net
    from monai_denoiseg.transforms import DEFAULT_OFFSETS_3D, PAPER_OFFSETS_2D

    vol = torch.as_tensor(read_volume(DATA / "medulla_fibsem.h5", "volumes/raw") / 255.0, dtype=torch.float32)
    if case == "volume2d":
        f, roi, offsets = [16, 32, 64, 128], (256, 256), PAPER_OFFSETS_2D
    else:
        f, roi, offsets = [8, 16, 32, 64], (32, 128, 128), DEFAULT_OFFSETS_3D
    net = paper_joint_net(spatial_dims=len(roi), n_offsets=len(offsets), features=f, denoiser_kwargs={"features": f},
                          segmenter_kwargs={"features": f}).eval()
    t0 = time.perf_counter()
    pred = predict_volume(net, vol, roi, spatial_dims=len(roi))
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    segment(pred["affinity_prob"], offsets)
    return {"case": case, "shape": list(vol.shape), "roi": list(roi), "features": f, "network_s": t_net,
            "mws_s": time.perf_counter() - t0, "peak_gib": _peak_gib()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", nargs=4, type=int, default=[16, 32, 64, 128])
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--inference", action="store_true", help="whole-volume inference instead of training steps")
    p.add_argument("--case", choices=("volume2d", "volume3d"), help=argparse.SUPPRESS)  # one inference case, in-process
    a = p.parse_args(argv)
    if a.case:
        print(json.dumps(bench_inference(a.case)))
    elif a.inference:
        for case in ("volume2d", "volume3d"):
            out = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{case}: {r['shape']} roi {r['roi']} widths {r['features']}: network {r['network_s']:.1f} s, "
                  f"mutex watershed {r['mws_s']:.1f} s, peak {r['peak_gib']:.2f} GiB", flush=True)
    else:
        bench_steps(a.features, a.patch, a.batch, a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
