"""Benchmark (not a test): expert-training images/s and seconds per distillation iteration of MTT,
DATM and DAMED, with peak memory, and TESLA's memory as syn_steps grows.

Settings (random tensors; the content does not affect the timing):
  cpu    Fashion-MNIST-LT-like 1x28x28, 10 classes, IPC 10 (100 images), ConvNet-3 width 32, with
         the CPU-sized settings of config/config.yaml: batch_syn 50, mtt exact N 10, datm TESLA
         N 10, damed TESLA N_rep 10 + N_cls 10
  paper  CIFAR-10-LT-like 3x32x32, 10 classes, IPC 10, ConvNet-3 width 128; MTT exact N 20,
         DATM TESLA N 80, DAMED TESLA N_rep 80 + N_cls 80; batch_syn = all 100 images

A distillation iteration is what the methods run per iteration: sample an expert snapshot pair,
unroll, match, back-propagate (trajectory_core.match_step), and one optimiser step. Expert snapshots
are random vectors (the cost does not depend on them). Every measurement runs in its own subprocess
so its peak RSS (ru_maxrss, minus the process's RSS before the measurement) is its own.

At the paper setting whole iterations take minutes on a CPU, so by default they are estimated:
TESLA cost is linear in N with no fixed part, so N_probe steps are timed and scaled; the exact
unroll is timed at N = 2 and 4 and extrapolated linearly (time and memory). --full-paper times
whole iterations instead.

  reference  Fashion-MNIST 1x28x28, ConvNet-3 width 128, IPC 10, syn_steps 20 for all three, the
         whole synthetic set per step: where the reference MTT code was timed (issue 8)
  ipc50  CIFAR-10-sized 3x32x32, IPC 50 (500 images, all of them per step), ConvNet-3 width 128,
         TESLA mode: MTT N 30, DATM N 80, DAMED N 80 + 80 (issue 8: peak memory within 24 GiB);
         estimated from probe steps like paper (TESLA's memory does not grow with N)

Usage: python benchmarks/bench_trajectory.py [--settings cpu paper reference ipc50] [--threads 1] [--full-paper]
           [--norm fast|stock] [--blocks fused|stock] [--allocator auto|system]
           [--out benchmarks/results/trajectory.json]
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
    "cpu": dict(channels=1, size=28, width=32, ipc=10, batch_syn=50,
                steps={"mtt": 10, "datm": 10, "damed": (10, 10)}),
    "paper": dict(channels=3, size=32, width=128, ipc=10, batch_syn=0,
                  steps={"mtt": 20, "datm": 80, "damed": (80, 80)}),
    # where the reference MTT code was timed (issue 8: 21-30 s per iteration, 8.8 GB peak):
    # Fashion-MNIST 1x28x28, ConvNet-3 width 128, IPC 10, syn_steps 20, the whole synthetic set
    # per step; DATM and DAMED at the same syn_steps and batch size. mtt_segmented: the same exact
    # gradient with the graph of 5 steps alive at a time (exact_segment 5)
    "reference": dict(channels=1, size=28, width=128, ipc=10, batch_syn=0,
                      steps={"mtt": 20, "mtt_segmented": 20, "datm": 20, "damed": (20, 20)},
                      exact_segment=5),
    # issue 8's memory target: MTT-family distillation of a CIFAR-10-sized IPC-50 set (500 images
    # of 3x32x32, the whole set per step as DATM's and DAMED's CIFAR-10(-LT) IPC-50 configs, batch_syn
    # 500) in TESLA mode within 24 GiB on CPU. N: MTT's CIFAR-10 IPC-50 preset 30, DATM 80, DAMED 80 + 80
    "ipc50": dict(channels=3, size=32, width=128, ipc=50, batch_syn=0,
                  steps={"mtt_tesla": 30, "datm": 80, "damed": (80, 80)}),
}
MEMORY_STEPS = (10, 20, 40)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _setup(setting: str):
    from ltdistill.methods.trajectory_core import FlatNet, MatchSpec, dsa_params, hard_ce, soft_ce
    from ltdistill.models import ModelSpec, build_model

    s = SETTINGS[setting]
    spec = ModelSpec("convnet3", s["channels"], 10, s["size"], width=s["width"])
    net = FlatNet(spec, "cpu")
    g = torch.Generator().manual_seed(0)
    theta0 = torch.cat([p.detach().reshape(-1) for p in build_model(spec, 0).parameters()])
    target = theta0 + 1e-3 * torch.randn(theta0.shape, generator=g)
    n = 10 * s["ipc"]
    x = torch.randn(n, s["channels"], s["size"], s["size"], generator=g)
    y = torch.arange(10).repeat_interleave(s["ipc"])
    specs = {"hard": MatchSpec(hard_ce), "soft": MatchSpec(soft_ce),
             "cls": MatchSpec(soft_ce, move=slice(net.classifier_start, None)),
             "rep": MatchSpec(soft_ce, match=slice(0, net.classifier_start))}
    return net, theta0, target, x, y, specs, dsa_params(True, "color_crop_cutout_flip_scale_rotate")


def _iteration(setting: str, phases: list[tuple]) -> float:
    """Time one iteration made of (spec name, syn_steps, tesla[, exact_segment]) phases; returns
    seconds."""
    from ltdistill.methods.trajectory_core import (
        Unroll,
        make_synthetic,
        match_step,
        optimisers,
        unroll_batches,
    )

    net, theta0, target, x, y, specs, aug = _setup(setting)
    soft = phases[0][0] != "hard"
    targets = torch.randn(len(y), 10) if soft else y
    syn = make_synthetic(x, targets, 0.01, learn_labels=soft, device=torch.device("cpu"))
    opts = optimisers(syn, 100.0, 1e-5, lr_y=2.0 if soft else None)
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    for k, (name, steps, tesla, *segment) in enumerate(phases):
        unroll = Unroll(unroll_batches(len(y), SETTINGS[setting]["batch_syn"], steps, g), (k,), aug)
        match_step(net, syn, theta0, target, unroll, specs[name], tesla,
                   exact_segment=segment[0] if segment else 0)
    for opt in opts:
        opt.step()
    return time.perf_counter() - start


def _expert_rate(setting: str, kind: str, batches: int) -> float:
    """Images/s of expert training (batch 256, DSA) for one kind's optimiser and trainable part."""
    import torch.nn.functional as F

    from ltdistill.data.augment import DSAParams, dsa
    from ltdistill.experts import GSAM
    from ltdistill.microbatch import micro_batch_size, sliced_backward
    from ltdistill.models import ModelSpec, build_model, preferred_memory_format

    s = SETTINGS[setting]
    spec = ModelSpec("convnet3", s["channels"], 10, s["size"], width=s["width"])
    model = build_model(spec, 0)
    fmt = preferred_memory_format(model, "cpu")  # what experts/train.py uses
    model = model.to(memory_format=fmt)
    size = micro_batch_size(model, "cpu")
    if kind == "damed_cls":
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    base = torch.optim.SGD(params, lr=0.01)
    gsam = None if kind == "mtt" else GSAM(params, base)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, s["channels"], s["size"], s["size"], generator=g)
    y = torch.randint(0, 10, (256,), generator=g)

    def one() -> None:
        xb = dsa(x, DSAParams(), generator=g).contiguous(memory_format=fmt)
        if kind == "damed_cls":
            with torch.no_grad():
                feats = model.embed(xb)

            def loss_on(sl):
                return F.cross_entropy(model.classifier(feats[sl]), y[sl])
        else:

            def loss_on(sl):
                return F.cross_entropy(model(xb[sl]), y[sl])

        def backward(_fn=None):  # as experts/train.py: cache-sized slices, the same gradient
            return sliced_backward(loss_on, 256, None if kind == "damed_cls" else size)

        if gsam is not None:
            gsam.step(lambda: loss_on(slice(None)), backward=backward)
        else:
            base.zero_grad()
            backward()
            base.step()

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        one()
    return 256 * batches / (time.perf_counter() - start)


def measure(job: dict) -> dict:
    """Run inside the child process: one measurement, with its own peak memory."""
    torch.set_num_threads(job["threads"])
    from ltdistill.allocator import tune_allocator

    tune_allocator(job.get("allocator", "auto"))
    if job.get("norm") == "stock":
        from ltdistill.models import fast_ops

        fast_ops.FAST_INSTANCE_NORM = False
    if job.get("blocks") == "stock":
        from ltdistill.models import fused_block

        fused_block.ENABLED = False
    base = _rss_mb()
    if job["what"] == "expert":
        rate = _expert_rate(job["setting"], job["kind"], job["batches"])
        return {"images_per_s": rate, "peak_rss_mb": _peak_mb() - base}
    phases = [tuple(p) for p in job["phases"]]
    if job.get("steady"):  # a whole iteration warms up: later ones reuse the process's memory
        _iteration(job["setting"], phases)
    else:  # one step per phase (estimates at paper scale)
        _iteration(job["setting"], [(n, min(s, 1), t) for n, s, t, *_ in phases])
    seconds = _iteration(job["setting"], phases)
    return {"seconds": seconds, "peak_rss_mb": _peak_mb() - base}


NORM = "fast"  # --norm: instance norm's closed-form double backward (fast) or the stock op
BLOCKS = "fused"  # --blocks: the unrolled student's ConvNet blocks as one node each, or stock


def run_child(job: dict) -> dict:
    job = {**job, "norm": NORM, "blocks": BLOCKS}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def method_phases(method: str, steps, segment: int = 0) -> list[tuple]:
    if method == "mtt":
        return [("hard", steps, False)]
    if method == "mtt_tesla":
        return [("hard", steps, True)]
    if method == "mtt_segmented":
        return [("hard", steps, False, segment)]
    if method == "datm":
        return [("soft", steps, True)]
    return [("rep", steps[0], True), ("cls", steps[1], True)]


def distill_iteration(setting: str, method: str, threads: int, full: bool, probe: int,
                      allocator: str = "auto") -> dict:
    steps = SETTINGS[setting]["steps"][method]
    phases = method_phases(method, steps, SETTINGS[setting].get("exact_segment", 0))
    job = {"what": "iteration", "setting": setting, "threads": threads, "allocator": allocator}
    if full or setting in ("cpu", "reference"):  # the reference setting is timed whole, in the
        # steady state of a distillation (the second iteration of the process)
        r = run_child({**job, "phases": phases, "steady": setting in ("cpu", "reference")})
        return {**r, "syn_steps": steps, "estimated": False}
    if method == "mtt":  # exact: t(N) = a + b N, memory likewise
        lo, hi = (run_child({**job, "phases": method_phases(method, n)}) for n in (2, 4))
        n = steps
        scale = (n - 2) / 2
        return {"seconds": lo["seconds"] + scale * (hi["seconds"] - lo["seconds"]),
                "peak_rss_mb": lo["peak_rss_mb"] + scale * (hi["peak_rss_mb"] - lo["peak_rss_mb"]),
                "syn_steps": steps, "estimated": "linear from N = 2 and 4"}
    small = [(name, probe, t) for name, _, t in phases]
    r = run_child({**job, "phases": small})
    total = sum(s for _, s, _ in phases)
    return {"seconds": r["seconds"] * total / (probe * len(phases)), "peak_rss_mb": r["peak_rss_mb"],
            "syn_steps": steps, "estimated": f"{probe} steps per phase timed, scaled to N"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["cpu", "paper"], choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-paper", action="store_true", help="time whole paper-scale iterations")
    ap.add_argument("--probe-steps", type=int, default=3, help="TESLA steps timed per phase (paper)")
    ap.add_argument("--out", default="benchmarks/results/trajectory.json")
    ap.add_argument("--allocator", default="auto", choices=["auto", "system"],
                    help="runtime.allocator of the measured processes (system = malloc as is)")
    ap.add_argument("--norm", default="fast", choices=["fast", "stock"],
                    help="instance norm: ltdistill's (closed-form double backward on CPU) or "
                         "torch's GroupNorm, for an A/B in one run")
    ap.add_argument("--blocks", default="fused", choices=["fused", "stock"],
                    help="the trajectory students' ConvNet blocks: one node each with a small "
                         "saved state (models/fused_block.py) or the stock modules")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from ltdistill.allocator import ensure_job_environment

    ensure_job_environment(args.allocator)  # measured processes allocate as workflow jobs do
    global NORM, BLOCKS
    NORM, BLOCKS = args.norm, args.blocks
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                 "threads": args.threads, "allocator": args.allocator,
                                 "norm": args.norm, "blocks": args.blocks,
                                 "load_average_at_start": os.getloadavg()},
                     "settings": SETTINGS, "expert_training": {}, "distillation": {},
                     "tesla_memory": {}}
    for setting in args.settings:
        for kind in ("mtt", "datm", "damed_cls"):
            r = run_child({"what": "expert", "setting": setting, "kind": kind,
                           "threads": args.threads, "allocator": args.allocator,
                           "batches": 4 if setting == "cpu" else 2})
            results["expert_training"][f"{setting}/{kind}"] = r
            print(f"{setting:5s} expert {kind:9s} {r['images_per_s']:8.0f} images/s "
                  f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
        for method in SETTINGS[setting]["steps"]:
            r = distill_iteration(setting, method, args.threads, args.full_paper, args.probe_steps,
                                  args.allocator)
            results["distillation"][f"{setting}/{method}"] = r
            print(f"{setting:5s} {method:13s} N {r['syn_steps']}: {r['seconds']:.2f} s/iteration, "
                  f"peak {r['peak_rss_mb']:.0f} MB{' (estimated)' if r['estimated'] else ''}",
                  flush=True)
    for tesla in (True, False):
        for n in MEMORY_STEPS if tesla else MEMORY_STEPS[:2]:
            r = run_child({"what": "iteration", "setting": "cpu", "threads": args.threads,
                           "allocator": args.allocator, "phases": [("soft", n, tesla)]})
            results["tesla_memory"][f"{'tesla' if tesla else 'exact'}/N{n}"] = r
            print(f"cpu   {'tesla' if tesla else 'exact'} N {n:3d}: peak {r['peak_rss_mb']:.0f} MB, "
                  f"{r['seconds']:.2f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
