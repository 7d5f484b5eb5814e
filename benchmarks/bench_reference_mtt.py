"""Benchmark (not a test): a straightforward MTT iteration in the reference code's structure,
timed on this machine beside ltdistill's, so that "faster than the reference" is measured on one
host rather than against figures from another machine.

The straightforward iteration follows the published algorithm and the original implementation's
structure (trajectory_methods.md; MTT's distill.py): one flat parameter vector, a functional
ConvNet-3 forward over views of it, torch's stock layers (GroupNorm(C, C) instance norm, ReLU,
avg_pool2d), DSA on every unroll step, `torch.autograd.grad(..., create_graph=True)` for every
step and one backward through the whole unrolled graph, the default allocator and no slicing.
ltdistill's iteration is `bench_trajectory.py`'s `mtt` (whole graph) and `mtt_segmented`
(`exact_segment: 5`), with its allocator settings. Same setting as issue 8's timing: Fashion-MNIST
1x28x28, ConvNet-3 width 128, IPC 10 (100 images), syn_steps 20, the whole synthetic set per
step. Each measurement runs in its own process (its own peak RSS); a warm-up iteration of 2 steps
comes first.

Usage: python benchmarks/bench_reference_mtt.py [--threads 2] [--reps 2]
           [--out benchmarks/results/reference_mtt.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CHANNELS, SIZE, WIDTH, CLASSES, IPC, STEPS = 1, 28, 128, 10, 10, 20


def _shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes, c = [], CHANNELS
    for d in range(3):
        shapes += [(f"conv{d}.w", (WIDTH, c, 3, 3)), (f"conv{d}.b", (WIDTH,)),
                   (f"norm{d}.w", (WIDTH,)), (f"norm{d}.b", (WIDTH,))]
        c = WIDTH
    side = (SIZE + 6 - 2) // 8  # padding 3 on the one-channel first layer: 32 -> 16 -> 8 -> 4
    return shapes + [("fc.w", (CLASSES, WIDTH * side * side)), ("fc.b", (CLASSES,))]


def forward(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ConvNet-3 (instance norm, ReLU, average pooling) over views of one flat vector."""
    p, offset = {}, 0
    for name, shape in _shapes():
        n = 1
        for s in shape:
            n *= s
        p[name] = flat[offset:offset + n].view(shape)
        offset += n
    for d in range(3):
        x = F.conv2d(x, p[f"conv{d}.w"], p[f"conv{d}.b"], padding=3 if d == 0 and CHANNELS == 1 else 1)
        x = F.group_norm(x, WIDTH, p[f"norm{d}.w"], p[f"norm{d}.b"])
        x = F.avg_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), p["fc.w"], p["fc.b"])


def straightforward_iteration(steps: int) -> float:
    from ltdistill.data.augment import DSAParams, dsa

    g = torch.Generator().manual_seed(0)
    num = sum(torch.Size(s).numel() for _, s in _shapes())
    start = 0.05 * torch.randn(num, generator=g)
    target = start + 1e-3 * torch.randn(num, generator=g)
    images = torch.randn(CLASSES * IPC, CHANNELS, SIZE, SIZE, generator=g).requires_grad_(True)
    labels = torch.arange(CLASSES).repeat_interleave(IPC)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    opt_img = torch.optim.SGD([images], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
    t0 = time.perf_counter()
    params = [start.clone().requires_grad_(True)]
    for step in range(steps):
        x = dsa(images, DSAParams(), generator=torch.Generator().manual_seed(step))
        ce = F.cross_entropy(forward(params[-1], x), labels)
        grad = torch.autograd.grad(ce, params[-1], create_graph=True)[0]
        params.append(params[-1] - syn_lr * grad)
    loss = F.mse_loss(params[-1], target, reduction="sum") / F.mse_loss(start, target, reduction="sum")
    opt_img.zero_grad()
    opt_lr.zero_grad()
    loss.backward()
    opt_img.step()
    opt_lr.step()
    return time.perf_counter() - t0


def child(what: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    if what == "straightforward":
        straightforward_iteration(2)
        seconds = straightforward_iteration(STEPS)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_trajectory import _iteration

        from ltdistill.allocator import tune_allocator

        tune_allocator("auto")
        segment = (5,) if what == "ltdistill_segmented" else ()
        _iteration("reference", [("hard", 2, False, *segment)])
        seconds = _iteration("reference", [("hard", STEPS, False, *segment)])
    return {"seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reference_mtt.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return
    from ltdistill.allocator import job_environment

    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    envs = {"straightforward": plain, "ltdistill_whole": {**plain, **job_environment("auto", plain)},
            "ltdistill_segmented": {**plain, **job_environment("auto", plain)}}
    results: dict = {"threads": args.threads, "torch": torch.__version__, "runs": {}}
    for rep in range(args.reps):  # interleaved, so a change in the machine's speed hits all three
        for what, env in envs.items():
            out = subprocess.run([sys.executable, __file__, "--child", what, "--threads",
                                  str(args.threads)], env=env, capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results["runs"].setdefault(what, []).append(r)
            print(f"rep {rep}  {what:20s} {r['seconds']:6.2f} s/iteration  peak {r['peak_rss_mb']:6.0f} MB",
                  flush=True)
    best = {w: min(r["seconds"] for r in rs) for w, rs in results["runs"].items()}
    for what in ("ltdistill_whole", "ltdistill_segmented"):
        print(f"{what}: {best['straightforward'] / best[what]:.2f}x the straightforward iteration "
              "(best of reps)")
    results["speedup"] = {w: best["straightforward"] / best[w] for w in best}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
