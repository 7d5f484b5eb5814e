"""Benchmark (not a test): seconds per outer iteration of DC, DSA and DM, with peak memory.

Settings (random tensors with long-tailed class counts; the content does not affect the timing):
  cpu    Fashion-MNIST-LT-like 1x28x28, 10 classes, IF 100 from n_max 1000, IPC 10, ConvNet-3 width 32
  paper  CIFAR-10-LT-like 3x32x32, 10 classes, IF 100 from n_max 5000, IPC 10, ConvNet-3 width 128
  reference  Fashion-MNIST-like 1x28x28, n_max 6000, IPC 10, ConvNet-3 width 128: the setting at
         which the original DC / DM code was timed (issue 8: DC 200-260 s, DM 2.5-3.5 s per iteration)

Every (setting, method) runs in its own subprocess so that its peak RSS (ru_maxrss) is its own.
DM: whole iterations are timed (after one warm-up iteration), batched fast path and per-class path.
DC/DSA: one outer iteration is `outer` matching steps and `outer - 1` inner trainings of `inner`
epochs. The components (one matching step incl. the pixel update, with both synthetic-gradient
paths; one inner epoch) are timed and the iteration is estimated from them; at the cpu setting
(and at the paper setting with --full-paper) one whole iteration is also timed end to end.

Usage: python benchmarks/bench_matching.py [--settings cpu paper] [--threads 1] [--full-paper]
           [--allocator auto|system]
           [--out benchmarks/results/matching.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SETTINGS = {
    "cpu": dict(channels=1, size=28, n_max=1000, width=32, ipc=10),
    "paper": dict(channels=3, size=32, n_max=5000, width=128, ipc=10),
    # the setting the reference implementations were timed at (issue 8): Fashion-MNIST 1x28x28,
    # ConvNet-3 width 128, IPC 10, the methods' default hyperparameters
    "reference": dict(channels=1, size=28, n_max=6000, width=128, ipc=10),
}
IMBALANCE = 100
METHODS = ("dc", "dsa", "dm")


def make_data(setting: str):
    from ltdistill.data.base import RawDataset
    from ltdistill.data.long_tail import lt_counts, make_split
    from ltdistill.data.prepared import prepare
    from ltdistill.data.preprocess import make_preprocessing

    s = SETTINGS[setting]
    counts = lt_counts(s["n_max"], 10, IMBALANCE)
    g = torch.Generator().manual_seed(0)
    labels = torch.repeat_interleave(torch.arange(10), torch.tensor(counts))
    images = torch.randint(0, 256, (len(labels), s["channels"], s["size"], s["size"]), generator=g,
                           dtype=torch.uint8)
    test_labels = torch.arange(10)
    test_images = torch.zeros((10, s["channels"], s["size"], s["size"]), dtype=torch.uint8)
    raw = RawDataset(f"bench_{setting}", images, labels, test_images, test_labels,
                     [f"c{c}" for c in range(10)], (0.5,) * s["channels"], (0.25,) * s["channels"])
    split = make_split(raw.name, labels.numpy(), test_labels.numpy(), 10, IMBALANCE,
                       n_max=s["n_max"])
    return prepare(raw, split, make_preprocessing("normalise", raw.mean, raw.std)), counts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def worker(setting: str, method: str, full_paper: bool) -> dict:
    from ltdistill.data.augment import siamese_seed_for
    from ltdistill.methods import DistillContext, run_method
    from ltdistill.methods import dc as _dc  # noqa: F401
    from ltdistill.methods import dm as _dm  # noqa: F401
    from ltdistill.methods import dsa as _dsa  # noqa: F401
    from ltdistill.methods.dc import DCConfig
    from ltdistill.methods.dm import DMConfig
    from ltdistill.methods.dsa import DSAConfig
    from ltdistill.methods.gradient_matching import (
        RealBatches,
        class_bounds,
        dsa_params_or_none,
        get_loops,
        gm_loss,
        init_synthetic,
        memory_format_for,
        train_inner,
    )
    from ltdistill.models import ModelSpec, build_model

    rss_import = peak_rss_mb()
    s = SETTINGS[setting]
    data, counts = make_data(setting)
    spec = ModelSpec("convnet", s["channels"], 10, s["size"], width=s["width"])
    device = torch.device("cpu")
    ctx = DistillContext(data=data, ipc=s["ipc"], seed=0, device=device, model=spec)
    out: dict = {"setting": setting, "method": method, "counts": counts,
                 "train_images": int(len(data.train_labels)), **s,
                 "peak_rss_after_imports_mb": round(rss_import, 1)}

    if method == "dm":
        reps = 10 if setting == "cpu" else 3
        for cl in (True, False):
            for batched in (True, False):
                params = {"iterations": 1, "batched": batched, "channels_last": cl}
                run_method("dm", ctx, params)  # warm-up
                t0 = time.perf_counter()
                run_method("dm", ctx, {**params, "iterations": reps})
                key = (f"s_per_iteration_{'batched' if batched else 'per_class'}_"
                       f"{'channels_last' if cl else 'contiguous'}")
                out[key] = round((time.perf_counter() - t0) / reps, 4)
        default = DMConfig()
        out["s_per_iteration"] = out[
            f"s_per_iteration_{'batched' if default.batched else 'per_class'}_"
            f"{'channels_last' if default.channels_last else 'contiguous'}"]
        out["timing"] = f"measured: mean of {reps} whole iterations after one warm-up iteration"
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return out

    cfg = DCConfig() if method == "dc" else DSAConfig()
    params = dsa_params_or_none(cfg.dsa_strategy) if method == "dsa" else None
    outer, inner = get_loops(s["ipc"], cfg.loops)
    x0, labels = init_synthetic(data.train_images, data.train_labels, 10, s["ipc"], cfg.init,
                                cfg.ipc_policy, torch.Generator().manual_seed(0))
    bounds = class_bounds(labels, 10)
    syn = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
    real = RealBatches(data.train_images, data.train_labels, 10,
                       torch.Generator().manual_seed(1), device)
    reps = 3 if setting == "cpu" else 1
    for cl in (True, False):
        mf = memory_format_for(device, cl)
        net = build_model(spec, 0)
        if cl:
            net = net.to(memory_format=torch.channels_last)
        tag = "channels_last" if cl else "contiguous"
        for mode in ("loop", "vmap"):
            def match_step(mode=mode, net=net, mf=mf):
                seeds = ([siamese_seed_for(0, 0, c) for c in range(10)]
                         if params is not None else None)
                loss = gm_loss(net, syn, bounds, real.all_classes(cfg.batch_real), seeds, params,
                               cfg.dis_metric, mode, mf)
                (syn.grad,) = torch.autograd.grad(loss, [syn])  # as in gradient_matching()
                opt.step()

            out[f"s_match_step_{mode}_{tag}"] = round(timed(match_step, reps), 4)
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
        g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
        out[f"s_inner_epoch_{tag}"] = round(timed(
            lambda net=net, opt_net=opt_net, mf=mf, g1=g1, g2=g2: train_inner(
                net, opt_net, syn.detach(), labels, 1, cfg.batch_train, params, g1, g2, mf),
            3 * reps), 4)
    tag = "channels_last" if cfg.channels_last else "contiguous"
    match = out[f"s_match_step_{cfg.syn_grads}_{tag}"]
    out.update(outer_loop=outer, inner_loop=inner,
               s_per_iteration_estimated=round(
                   outer * match + (outer - 1) * inner * out[f"s_inner_epoch_{tag}"], 2))
    out["timing"] = ("estimated from components: outer x match step + (outer - 1) x inner x "
                     f"inner epoch, default paths (syn_grads {cfg.syn_grads}, {tag})")
    if setting == "cpu" or full_paper:
        run_method(method, ctx, {"iterations": 1, "loops": [[1, 1, 1]]})  # warm-up
        t0 = time.perf_counter()
        run_method(method, ctx, {"iterations": 1})
        out["s_per_iteration_measured"] = round(time.perf_counter() - t0, 2)
        out["timing"] += "; s_per_iteration_measured: one whole iteration (default config) timed"
    out["s_per_iteration"] = out.get("s_per_iteration_measured", out["s_per_iteration_estimated"])
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-paper", action="store_true",
                    help="also time one whole DC/DSA iteration at the paper setting (minutes)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "matching.json"))
    ap.add_argument("--allocator", default="auto", choices=["auto", "system"],
                    help="runtime.allocator of the measured processes (system = malloc as is)")
    ap.add_argument("--worker", nargs=2, metavar=("SETTING", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    from ltdistill.allocator import ensure_job_environment

    ensure_job_environment(args.allocator)  # measured processes allocate as workflow jobs do
    torch.set_num_threads(args.threads)
    from ltdistill.allocator import tune_allocator

    tune_allocator(args.allocator)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.full_paper)))
        return
    results = []
    for setting in args.settings:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--worker", setting, method, "--threads",
                   str(args.threads), "--allocator", args.allocator]
            cmd += ["--full-paper"] if args.full_paper else []
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"worker {setting} {method} failed")
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            rec["wall_s"] = round(time.perf_counter() - start, 1)
            rec["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
            results.append(rec)
            how = "measured" if "s_per_iteration_measured" in rec or method == "dm" else "estimated"
            print(f"{setting:6s} {method:4s} {rec['s_per_iteration']:9.3f} s/iteration ({how})  "
                  f"peak RSS {rec['peak_rss_mb']:8.1f} MB", flush=True)
    payload = {"torch": torch.__version__, "threads": args.threads, "allocator": args.allocator,
               "machine": platform.machine(), "cpu_count": os.cpu_count(),
               "note": "shared machine: compare load_average_after; timings inflate with load",
               "processor": platform.processor(), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
