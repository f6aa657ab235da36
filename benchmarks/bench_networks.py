"""Time and peak memory of the joint denoise-segment-fuse network (paper defaults) and of one IEM.

Each case runs in its own subprocess, so the peak resident memory it reports (``VmHWM`` from
``/proc/self/status``; on CUDA ``torch.cuda.max_memory_allocated``) belongs to that case alone.

    python benchmarks/bench_networks.py                       # all cases on the CPU
    python benchmarks/bench_networks.py --cases infer1024 --device cuda --amp
    python benchmarks/bench_networks.py --cases infer1024 --attention-mode window --window-size 32

Cases:
    train2d    training step (forward + backward + Adam), batch 8 of 256x256, 2-D
    train3d    training step, batch 1 of 64x128x128, 3-D
    infer1024  inference of one whole 1024x1024 slice (no_grad, eval)
    iem        one IEM (64 channels, 4 heads) on a 128x128 feature map (16384 tokens), forward:
               SDPA's default kernel vs the math kernel with chunk_size=1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext

CASES = ("train2d", "train3d", "infer1024", "iem")


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _vm_kib("VmHWM") / 1024


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_case(case: str, device: str, amp: bool, steps: int, fusion_kwargs: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from monai_denoiseg.networks.blocks.iem import InstanceAwareEmbedding
    from monai_denoiseg.networks.nets.joint import paper_joint_net

    torch.manual_seed(0)
    autocast = torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16, enabled=amp)
    result = {"case": case, "device": device, "amp": amp, "threads": torch.get_num_threads(), "fusion": fusion_kwargs}

    if case == "iem":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        x = torch.randn(1, 64, 128, 128, device=device)
        timings = {}
        for label, chunk, backend in (("sdpa_default", None, None), ("math_chunk1024", 1024, SDPBackend.MATH)):
            block = InstanceAwareEmbedding(2, 64, 4, chunk_size=chunk).to(device).eval()
            base = _peak_mib(device)
            t = time.perf_counter()
            with torch.no_grad(), autocast, (sdpa_kernel(backend) if backend else nullcontext()):
                block(x, x)
            _sync(device)
            timings[label] = {"s": time.perf_counter() - t, "peak_mib": _peak_mib(device), "before_mib": base}
        result["iem"] = timings
        result["full_score_matrix_mib"] = 4 * (128 * 128) ** 2 * 4 / 2**20
        return result

    spatial_dims = 3 if case == "train3d" else 2
    net = paper_joint_net(spatial_dims, **fusion_kwargs).to(device)
    result["parameters"] = sum(p.numel() for p in net.parameters())
    if case == "infer1024":
        x = torch.randn(1, 1, 1024, 1024, device=device)
        net.eval()
        result["baseline_mib"] = _peak_mib(device)
        t = time.perf_counter()
        with torch.no_grad(), autocast:
            out = net(x)
        _sync(device)
        result["step_s"] = [time.perf_counter() - t]
        result["peak_mib"] = _peak_mib(device)
        result["output_shape"] = list(out["final"].shape)
        return result

    shape = (8, 1, 256, 256) if case == "train2d" else (1, 1, 64, 128, 128)
    x = torch.rand(shape, device=device) * 2 - 1
    clean = torch.rand(shape, device=device) * 2 - 1
    affs = (torch.rand((shape[0], 10) + shape[2:], device=device) > 0.3).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, eps=0.01, amsgrad=True, weight_decay=1e-6)  # the reference's
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")
    net.train()
    result["baseline_mib"] = _peak_mib(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = net(x)
            loss = (
                F.mse_loss(out["coarse"].float(), clean)
                + 3 * F.binary_cross_entropy_with_logits(out["affinity"].float(), affs)
                + 50 * F.mse_loss(out["final"].float(), clean)
            )
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        times.append(time.perf_counter() - t)
    result["step_s"] = times
    result["peak_mib"] = _peak_mib(device)
    return result


def _row(r: dict) -> str:
    if r["case"] == "iem":
        lines = []
        for label, v in r["iem"].items():
            lines.append(
                f"| iem 128x128 ({label}) | {v['s']:.2f} | {v['peak_mib'] - v['before_mib']:.0f} MiB above the "
                f"{v['before_mib']:.0f} MiB before (full score matrix: {r['full_score_matrix_mib']:.0f} MiB) |"
            )
        return "\n".join(lines)
    steps = r["step_s"]
    per = f"{min(steps):.2f} (steps: {', '.join(f'{s:.1f}' for s in steps)})" if len(steps) > 1 else f"{steps[0]:.2f}"
    return f"| {r['case']} | {per} | {r['peak_mib'] / 1024:.2f} GiB (after build: {r['baseline_mib'] / 1024:.2f} GiB) |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on the CPU)")
    p.add_argument("--steps", type=int, default=3, help="training steps per training case")
    p.add_argument("--attention-mode", default="spatial", choices=("spatial", "window", "channel"), help="IEM mode")
    p.add_argument("--window-size", type=int, default=None, help="IEM window side for --attention-mode window")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    fusion_kwargs = {"attention_mode": a.attention_mode, "window_size": a.window_size}
    if a.child:
        print(json.dumps(run_case(a.child, a.device, a.amp, a.steps, fusion_kwargs)))
        return
    import torch

    print(f"torch {torch.__version__}, {a.device}{' + AMP' if a.amp else ''}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, IEM {fusion_kwargs}")
    print("| case | seconds (per step) | peak memory |\n|---|---|---|")
    for case in a.cases.split(","):
        cmd = [sys.executable, __file__, "--child", case, "--device", a.device, "--steps", str(a.steps),
               "--attention-mode", a.attention_mode] + (["--window-size", str(a.window_size)] if a.window_size else [])
        proc = subprocess.run(cmd + (["--amp"] if a.amp else []), capture_output=True, text=True)
        if proc.returncode:
            print(f"| {case} | failed (exit {proc.returncode}) | {proc.stderr.strip().splitlines()[-1:]} |")
            continue
        print(_row(json.loads(proc.stdout.strip().splitlines()[-1])), flush=True)


if __name__ == "__main__":
    main()
