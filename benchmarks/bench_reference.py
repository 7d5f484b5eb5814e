"""Benchmark (not a test): straightforward MTT, DM and DC iterations in the reference code's
structure, timed on this machine beside ltdistill's, so that "faster than the reference" is
measured on one host rather than against figures from another machine.

The straightforward iteration follows the published algorithm and the original implementation's
structure (trajectory_methods.md; MTT's distill.py): one flat parameter vector, a functional
ConvNet-3 forward over views of it, torch's stock layers (GroupNorm(C, C) instance norm, ReLU,
avg_pool2d), DSA on every unroll step, `torch.autograd.grad(..., create_graph=True)` for every
step and one backward through the whole unrolled graph, the default allocator and no slicing.
ltdistill's iteration is `bench_trajectory.py`'s `mtt` (whole graph) and `mtt_segmented`
(`exact_segment: 5`), with its allocator settings. Same setting as issue 8's timing: Fashion-MNIST
1x28x28, ConvNet-3 width 128, IPC 10 (100 images), syn_steps 20, the whole synthetic set per
step. Each measurement runs in its own process (its own peak RSS); one whole iteration warms up
(a distillation runs thousands: the first one also pays for first-touching the process's memory)
and the mean of the next two is reported.

DM (Zhao & Bilen's structure): every iteration a freshly initialised stock ConvNet-3 (GroupNorm,
ReLU, avg_pool2d modules), and per class 256 real images of that class and the class's synthetic
images, both DSA-augmented with one seed, embedded separately; the loss is the sum over classes of
the squared distance of the mean embeddings; one SGD step on the images. ltdistill's iteration is
`methods/dm.py` with its defaults (`bench_matching.py`'s data: Fashion-MNIST-sized long-tailed
random data, n_max 6000, IPC 10, width 128). Mean of 3 iterations after a warm-up one.

DC (Zhao et al.'s structure, the same data): a fresh stock ConvNet-3 with its classifier; per
matching step and class, the gradient of the CE loss on 256 real images of the class (detached)
and, with create_graph, on the class's synthetic images; the layer-wise distance ("ours": 1 -
cosine per output node of every weight, biases and norm parameters left out), summed; one SGD
step on the images. Between matching steps, `inner` epochs of SGD on the synthetic set. As in
`bench_matching.py`, an iteration is estimated from its parts, outer x matching step + (outer -
1) x inner x inner epoch (outer 10, inner 50 at IPC 10), and ltdistill's figure is
`bench_matching.py`'s for the same setting.

Usage: python benchmarks/bench_reference.py [--threads 2] [--reps 2] [--methods mtt dm dc]
           [--out benchmarks/results/reference.json]
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


def stock_convnet(seed: int) -> torch.nn.Module:
    """The reference code's ConvNet-3 (instance norm, ReLU, average pooling) from torch's stock
    modules, without the classifier (DM matches embeddings)."""
    torch.manual_seed(seed)
    layers, c = [], CHANNELS
    for d in range(3):
        layers += [torch.nn.Conv2d(c, WIDTH, 3, padding=3 if d == 0 and CHANNELS == 1 else 1),
                   torch.nn.GroupNorm(WIDTH, WIDTH, affine=True), torch.nn.ReLU(inplace=True),
                   torch.nn.AvgPool2d(2, 2)]
        c = WIDTH
    return torch.nn.Sequential(*layers, torch.nn.Flatten())


def straightforward_dm(data, iterations: int) -> float:
    from ltdistill.data.augment import DSAParams, dsa

    g = torch.Generator().manual_seed(0)
    labels = data.train_labels
    by_class = [torch.nonzero(labels == c).flatten() for c in range(CLASSES)]
    images = torch.cat([data.train_images[idx[torch.randperm(len(idx), generator=g)[:IPC]]]
                        for idx in by_class]).clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    t0 = time.perf_counter()
    for it in range(iterations):
        net = stock_convnet(it)
        for p in net.parameters():
            p.requires_grad_(False)
        loss = torch.tensor(0.0)
        for c, idx in enumerate(by_class):
            real = data.train_images[idx[torch.randperm(len(idx), generator=g)[:256]]]
            syn = images[c * IPC:(c + 1) * IPC]
            seed = int(torch.randint(2**31, (1,), generator=g))
            real = dsa(real, DSAParams(), generator=torch.Generator().manual_seed(seed))
            syn = dsa(syn, DSAParams(), generator=torch.Generator().manual_seed(seed))
            loss = loss + ((net(real).detach().mean(0) - net(syn).mean(0)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / iterations


def _layer_distance(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor | float:
    """DC's distance ("ours") for one parameter's gradients: 1 - cosine per output node."""
    if real.dim() == 1:  # biases and norm parameters are not matched
        return 0.0
    real, syn = real.reshape(real.shape[0], -1), syn.reshape(syn.shape[0], -1)
    cos = (real * syn).sum(-1) / (real.norm(dim=-1) * syn.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def straightforward_dc(data) -> float:
    """Seconds of one DC outer iteration at IPC 10, estimated from its timed parts."""
    from ltdistill.methods.gradient_matching import DEFAULT_LOOPS, get_loops

    outer, inner = get_loops(IPC, DEFAULT_LOOPS)
    g = torch.Generator().manual_seed(0)
    by_class = [torch.nonzero(data.train_labels == c).flatten() for c in range(CLASSES)]
    syn = torch.randn(CLASSES * IPC, CHANNELS, SIZE, SIZE, generator=g).requires_grad_(True)
    syn_labels = torch.arange(CLASSES).repeat_interleave(IPC)
    side = (SIZE + 6 - 2) // 8
    net = torch.nn.Sequential(*stock_convnet(0), torch.nn.Linear(WIDTH * side * side, CLASSES))
    params = list(net.parameters())
    opt_img = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    opt_net = torch.optim.SGD(params, lr=0.01)

    def match_step() -> None:
        loss = torch.tensor(0.0)
        for c, idx in enumerate(by_class):
            real = data.train_images[idx[torch.randperm(len(idx), generator=g)[:256]]]
            lab = torch.full((len(real),), c)
            g_real = [t.detach() for t in torch.autograd.grad(
                F.cross_entropy(net(real), lab), params)]
            sl = slice(c * IPC, (c + 1) * IPC)
            g_syn = torch.autograd.grad(F.cross_entropy(net(syn[sl]), syn_labels[sl]), params,
                                        create_graph=True)
            loss = loss + sum(_layer_distance(a, b) for a, b in zip(g_real, g_syn, strict=True))
        opt_img.zero_grad()
        loss.backward()
        opt_img.step()

    def inner_epoch() -> None:
        order = torch.randperm(len(syn_labels), generator=g)
        for i in range(0, len(order), 256):
            idx = order[i:i + 256]
            opt_net.zero_grad()
            F.cross_entropy(net(syn.detach()[idx]), syn_labels[idx]).backward()
            opt_net.step()

    match_step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(2):
        match_step()
    t_match = (time.perf_counter() - t0) / 2
    inner_epoch()
    t0 = time.perf_counter()
    for _ in range(5):
        inner_epoch()
    t_inner = (time.perf_counter() - t0) / 5
    return outer * t_match + (outer - 1) * inner * t_inner


def ltdistill_dm(data, iterations: int) -> float:
    from ltdistill.methods import DistillContext, run_method
    from ltdistill.methods import dm as _dm  # noqa: F401  (registers dm)
    from ltdistill.models import ModelSpec

    spec = ModelSpec("convnet", CHANNELS, CLASSES, SIZE, width=WIDTH)
    ctx = DistillContext(data=data, ipc=IPC, seed=0, device=torch.device("cpu"), model=spec)
    run_method("dm", ctx, {"iterations": 1})  # warm-up
    t0 = time.perf_counter()
    run_method("dm", ctx, {"iterations": iterations})
    return (time.perf_counter() - t0) / iterations


def child(what: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    if what.endswith("_dc"):
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_matching import make_data, worker

        if what == "ltdistill_dc":
            from ltdistill.allocator import tune_allocator

            tune_allocator("auto")
            seconds = worker("reference", "dc", False)["s_per_iteration"]
        else:
            seconds = straightforward_dc(make_data("reference")[0])
    elif what.endswith("_dm"):
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_matching import make_data

        data, _ = make_data("reference")
        if what == "ltdistill_dm":
            from ltdistill.allocator import tune_allocator

            tune_allocator("auto")
            seconds = ltdistill_dm(data, 3)
        else:
            straightforward_dm(data, 1)
            seconds = straightforward_dm(data, 3)
    elif what == "straightforward":
        straightforward_iteration(STEPS)  # warm-up
        seconds = sum(straightforward_iteration(STEPS) for _ in range(2)) / 2
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_trajectory import _iteration

        from ltdistill.allocator import tune_allocator

        tune_allocator("auto")
        phases = [("hard", STEPS, False, *((5,) if what == "ltdistill_segmented" else ()))]
        _iteration("reference", phases)  # warm-up
        seconds = sum(_iteration("reference", phases) for _ in range(2)) / 2
    return {"seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["mtt", "dm", "dc"], choices=["mtt", "dm", "dc"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reference.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return
    from ltdistill.allocator import job_environment

    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    tuned = {**plain, **job_environment("auto", plain)}
    envs = {}
    if "mtt" in args.methods:
        envs |= {"straightforward": plain, "ltdistill_whole": tuned, "ltdistill_segmented": tuned}
    if "dm" in args.methods:
        envs |= {"straightforward_dm": plain, "ltdistill_dm": tuned}
    if "dc" in args.methods:
        envs |= {"straightforward_dc": plain, "ltdistill_dc": tuned}
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
    results["speedup"] = {}
    for what, base in (("ltdistill_whole", "straightforward"),
                       ("ltdistill_segmented", "straightforward"),
                       ("ltdistill_dm", "straightforward_dm"), ("ltdistill_dc", "straightforward_dc")):
        if what in best:
            results["speedup"][what] = best[base] / best[what]
            print(f"{what}: {best[base] / best[what]:.2f}x {base} (best of reps)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
