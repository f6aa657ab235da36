"""Kill a real training run again and again at random points; every re-run must resume and the end must be
bit-identical to the uninterrupted run.

Usage: python benchmarks/bench_faults.py [--kills 20] [--seed 0] [--epochs 6] [--json benchmarks/results/faults.json]

The training is tests/test_faults.py's (tiny joint net on real medulla crops, 3 iterations an epoch,
validation every epoch keeping the best model). Each kill is drawn (seeded) from: after a random iteration,
in the middle of writing an epoch checkpoint or the best model (a random fraction of its bytes written), or
a SIGKILL from outside after a random delay (anywhere: start-up, data loading, training, saving). After each
kill the next process must resume from the newest complete checkpoint on disk; when a sequence of kills
reaches the end of training, its final weights and best model are compared with the uninterrupted run's,
and a new sequence starts until ``--kills`` kills have been made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_faults import ITERS, RUN, data_path  # noqa: E402


def script(folder: Path, epochs: int) -> str:
    return RUN.format(tests=str(ROOT / "tests"), path=str(data_path("medulla_fibsem.h5")),
                      ckpt=str(folder / "checkpoints"), models=str(folder / "models"), out=str(folder / "final.pt"),
                      epochs=epochs)


def launch(folder: Path, epochs: int, fault: str = "", delay: float | None = None) -> tuple[int, str, float]:
    """Run one training process (``delay``: SIGKILL it from outside after that many seconds); (rc, log, seconds)."""
    env = {**os.environ, "FAULT": fault, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-c", script(folder, epochs)], env=env, stdout=log, stderr=log, text=True)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        log.seek(0)
        return proc.returncode, log.read(), time.perf_counter() - t0


def complete_checkpoint_epoch(folder: Path) -> int:
    """Epoch of the newest checkpoint on disk that loads (0: none)."""
    found = sorted(((int(m.group(1)), p) for p in (folder / "checkpoints").glob("*epoch=*.pt")
                    if (m := re.search(r"epoch=(\d+)\.pt$", p.name))), reverse=True)
    for epoch, path in found:
        try:
            torch.load(path, weights_only=True)
            return epoch
        except Exception:
            continue
    return 0


def same(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    sa, sb = sa.get("network", sa), sb.get("network", sb)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def draw_fault(rng: random.Random, done_epoch: int, epochs: int, run_seconds: float) -> tuple[str, float | None]:
    """A random kill point after the resume point ``done_epoch``: (FAULT value, external kill delay or None)."""
    if done_epoch >= epochs:  # killed after the last checkpoint (e.g. writing the final weights): just finish
        return "", None
    kind = rng.choice(["iteration", "checkpoint", "model", "external"])
    frac = round(rng.uniform(0.05, 0.95), 2)
    if kind == "iteration":
        return f"iter:{rng.randint(done_epoch * ITERS + 1, epochs * ITERS)}", None
    if kind == "checkpoint":
        return f"save:checkpoint_epoch={rng.randint(done_epoch + 1, epochs)}:1:{frac}", None
    if kind == "model":  # the first best model this process writes (none left to write: the run completes)
        return f"save:model.pt:1:{frac}", None
    return "", round(rng.uniform(0.3, 1.0) * run_seconds, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_faults."))
    t_start = time.perf_counter()
    try:
        ref = work / "reference"
        rc, log, ref_seconds = launch(ref, args.epochs)
        if rc != 0:
            raise SystemExit(f"uninterrupted run failed:\n{log[-3000:]}")
        kills, sequences, problems = [], [], []
        while len(kills) < args.kills:
            folder = work / f"sequence{len(sequences)}"
            seq = {"kills": 0, "runs": 0}
            while True:
                done = complete_checkpoint_epoch(folder)
                fault, delay = draw_fault(rng, done, args.epochs, ref_seconds) if len(kills) < args.kills else ("", None)
                rc, log, seconds = launch(folder, args.epochs, fault, delay)
                seq["runs"] += 1
                m = re.search(r"resumed from \S+epoch=(\d+)\.pt at epoch (\d+)", log)
                resumed = int(m.group(2)) if m else 0
                # a kill may land before the process logs anything after its resume point (imports, data, epoch 1): then
                # there is nothing to check
                started = rc == 0 or m is not None or "Epoch[" in log or "validation at epoch" in log
                if not started:
                    resumed = None
                elif resumed != done:
                    problems.append(f"{folder.name} run {seq['runs']}: resumed at epoch {resumed}, newest complete "
                                    f"checkpoint is epoch {done}")
                if rc not in (0, -9):
                    problems.append(f"{folder.name} run {seq['runs']}: exit code {rc}\n{log[-2000:]}")
                    break
                if rc == -9:
                    kills.append({"sequence": len(sequences), "fault": fault or f"external after {delay} s",
                                  "resumed_at_epoch": resumed, "seconds": round(seconds, 2)})
                    seq["kills"] += 1
                    where = "killed before its first log line after the resume point" if resumed is None \
                        else f"resumed at epoch {resumed}"
                    print(f"kill {len(kills):2d}: {kills[-1]['fault']:<36} (this process {where}, {seconds:.0f} s)",
                          flush=True)
                    continue
                seq["identical_final_weights"] = same(ref / "final.pt", folder / "final.pt")
                seq["identical_best_model"] = same(ref / "models" / "model.pt", folder / "models" / "model.pt")
                print(f"sequence {len(sequences)} complete (resumed at epoch {resumed}): final weights identical "
                      f"{seq['identical_final_weights']}, best model identical {seq['identical_best_model']}", flush=True)
                if not (seq["identical_final_weights"] and seq["identical_best_model"]):
                    problems.append(f"{folder.name}: final weights or best model differ from the uninterrupted run")
                break
            sequences.append(seq)
        by_kind: dict[str, int] = {}
        for k in kills:
            kind = k["fault"].split(":")[0] if ":" in k["fault"] else "external"
            kind = {"iter": "after an iteration", "save": "during a save"}.get(kind, "external SIGKILL")
            if "model.pt" in k["fault"]:
                kind = "during a best-model save"
            elif "checkpoint_epoch" in k["fault"]:
                kind = "during a checkpoint save"
            by_kind[kind] = by_kind.get(kind, 0) + 1
        result = {
            "benchmark": "bench_faults", "seed": args.seed, "epochs": args.epochs, "iterations_per_epoch": ITERS,
            "kills": len(kills), "kills_by_kind": by_kind, "sequences": sequences, "kill_log": kills,
            "all_resumed_from_newest_complete_checkpoint": not any("resumed at" in p for p in problems),
            "all_identical": all(s.get("identical_final_weights") and s.get("identical_best_model") for s in sequences),
            "problems": problems, "uninterrupted_run_seconds": round(ref_seconds, 2),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(kills)} kills in {len(sequences)} sequences ({by_kind}); "
          f"every re-run resumed from the newest complete checkpoint: "
          f"{result['all_resumed_from_newest_complete_checkpoint']}; final weights and best model identical to "
          f"the uninterrupted run: {result['all_identical']}; {result['wall_seconds']} s")
    for p in problems:
        print("PROBLEM:", p)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    from monai_denoiseg.utils.atomic import atomic_open

    with atomic_open(args.json) as f:
        json.dump(result, f, indent=2)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
