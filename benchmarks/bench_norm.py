"""Benchmark (not a test): instance norm with its second derivative, ltdistill's closed form
against torch's GroupNorm, at the first ConvNet layer of the MTT reference setting.

One measurement = forward (with ReLU), the gradient w.r.t. (x, weight, bias) with a kept graph,
then the backward of a function of that gradient (what MTT's unroll and DC's gradient matching do
at every norm layer). Prints milliseconds per part, median of --reps after a warm-up.

Usage: python benchmarks/bench_norm.py [--shape 100 128 28 28] [--threads 2] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def measure(norm, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, reps: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    gy = torch.randn(x.shape, generator=g)
    u = torch.randn(x.shape, generator=g)
    uw, ub = torch.randn(x.shape[1], generator=g), torch.randn(x.shape[1], generator=g)
    parts = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        y = torch.relu(norm(x, w, b))
        t1 = time.perf_counter()
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
        t2 = time.perf_counter()
        loss = (gx * u).sum() + (gw * uw).sum() + (gb * ub).sum()
        t3 = time.perf_counter()
        torch.autograd.grad(loss, (x, w))
        t4 = time.perf_counter()
        parts.append((t1 - t0, t2 - t1, t4 - t3))
    return [statistics.median(p[i] for p in parts[1:]) * 1e3 for i in range(3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, default=[100, 128, 28, 28])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from ltdistill.allocator import ensure_job_environment, tune_allocator

    ensure_job_environment("auto")
    tune_allocator("auto")
    torch.set_num_threads(args.threads)
    from ltdistill.models.fast_ops import _InstanceNorm

    n, c, h, wd = args.shape
    x = torch.randn(n, c, h, wd, requires_grad=True)
    w = (torch.rand(c) + 0.5).requires_grad_(True)
    b = torch.randn(c).requires_grad_(True)
    norms = {"torch GroupNorm": lambda x, w, b: F.group_norm(x, c, w, b, 1e-5),
             "ltdistill InstanceNorm": lambda x, w, b: _InstanceNorm.apply(x, w, b, 1e-5)}
    print(f"shape {tuple(args.shape)}, {args.threads} threads, median of {args.reps} (ms)")
    print(f"{'':24s} {'forward':>8s} {'gradient':>9s} {'2nd bwd':>8s} {'total':>8s}")
    for name, fn in norms.items():
        f, g, d = measure(fn, x, w, b, args.reps)
        print(f"{name:24s} {f:8.1f} {g:9.1f} {d:8.1f} {f + g + d:8.1f}")


if __name__ == "__main__":
    main()
