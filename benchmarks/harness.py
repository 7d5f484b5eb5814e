"""The benchmark harness: one command, every stage, this machine's figures as JSON and Markdown.

    python benchmarks/harness.py [--run-dir .] [--config config/config.yaml] [--toy]
                                 [--same-host-reference] [--out benchmarks/results/harness]

What it measures, in one run:
  machine      fp32 matmul GFLOP/s (best of 5, n = 2048), the reference every kernel is judged by;
  kernels      ConvNet-3 training steps (width 32 and 128, 1x28x28, batch 256; contiguous,
               contiguous in cache-sized slices of 32, channels_last; the first two again with
               the native first-order block kernels of models/native.py, which the workflow's
               jobs use on CPU): images/s, achieved GFLOP/s
               (FLOPs of forward + backward counted analytically from the layer shapes by torch's
               FlopCounterMode) and the fraction of the matmul peak;
  bound        per width, the matrix-product convolutions of blocks 2-3 timed alone at the
               fastest kernel's shapes: their GFLOP/s, share of the step and the step's ceiling;
  seeds        three evaluation seeds trained one after another vs as one vmapped model;
  targets      what issue 8's speed targets (MTT 2x, experts 1.5x the reference) need: their
               FLOPs counted on the real operations and the fraction of the measured peak that
               the target time implies;
  pipeline     from a finished run of the workflow in --run-dir (Snakemake `benchmark:` TSVs,
               metrics JSONs and the config): every method's distillation wall time, seconds per
               iteration and peak RSS, expert / observer / teacher training images/s, evaluation
               training images/s per method, and the whole grid's wall time (first job start to
               last job end);
  reference    with --same-host-reference: bench_reference.py's straightforward MTT, DM and DC
               iterations in the reference code's structure, timed beside ltdistill's.
--toy shrinks the kernels (the test suite runs it on the tiny config's run, without timing
assertions). Family-specific kernel benchmarks with paper-scale settings: bench_matching.py,
bench_trajectory.py, bench_statistical.py."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch


def matmul_gflops(n: int, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def convnet_training(width: int, batch: int, steps: int, channels_last: bool,
                     slice_size: int | None = None, native_kernels: str = "off") -> dict:
    """Images/s and GFLOP/s of SGD steps of ConvNet-3 (instance norm) on 1x28x28 inputs; with
    `slice_size` the batch goes through forward/backward in slices (ltdistill.microbatch); with
    `native_kernels` "auto" the first-order block kernels (models/native.py) run. FLOPs are those
    of the stock modules' operations (the same work whichever kernels do it)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ltdistill.microbatch import sliced_backward
    from ltdistill.models import ModelSpec, build_model, native

    model = build_model(ModelSpec("convnet3", 1, 10, 28, width=width), seed=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        sliced_backward(lambda sl: torch.nn.functional.cross_entropy(model(x[sl]), y[sl]),
                        batch, slice_size)
        opt.step()

    before = native.get_native_kernels().split(":")[0]
    native.set_native_kernels("off")  # count the stock operations' FLOPs
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    native.set_native_kernels(native_kernels)
    used = native_kernels != "off" and native.available() and not channels_last
    try:
        step()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        dt = (time.perf_counter() - t) / steps
    finally:
        native.set_native_kernels(before)
    return {"width": width, "batch": batch, "channels_last": channels_last,
            "slice": slice_size, "native": used,
            "native_channels_last": used and native.CHANNELS_LAST, "images_per_s": batch / dt,
            "gflop_per_step": flops / 1e9, "gflops": flops / dt / 1e9}


def conv_bound(width: int, batch: int, reps: int, kernel: dict) -> dict:
    """What bounds a training kernel: the matrix-product convolutions of blocks 2-3 (C -> C 3x3
    on 16x16 and 8x8 planes: forward, weight and input gradients) timed alone at the kernel's
    shapes and layout (channels_last where the native kernels keep the activations so), against
    `kernel` (a convnet_training row of the same width and batch). Their share of the step, and
    the step's GFLOP/s if everything else (block 1, norms, pools, loss, optimiser) cost nothing:
    the ceiling of the whole step on this machine's convolution kernels."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    cl = kernel.get("channels_last") or kernel.get("native_channels_last", False)
    fmt = torch.channels_last if cl else torch.contiguous_format
    total, flops = 0.0, 0.0
    for size in (16, 8):
        x = torch.randn(batch, width, size, size, generator=g).contiguous(memory_format=fmt)
        x.requires_grad_(True)
        w = torch.randn(width, width, 3, 3, generator=g).requires_grad_(True)
        b = torch.zeros(width, requires_grad=True)
        dy = torch.randn(batch, width, size, size, generator=g).contiguous(memory_format=fmt)

        def run(x=x, w=w, b=b, dy=dy):
            torch.autograd.grad(F.conv2d(x, w, b, padding=1), (x, w, b), dy)

        run()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        total += best
        flops += 3 * 2 * 9 * width * width * size * size * batch  # forward, dW, dX
    step_s = kernel["batch"] / kernel["images_per_s"]
    return {"width": width, "batch": batch, "native": kernel.get("native", False),
            "channels_last": cl, "gemm_conv_ms": total * 1e3, "gemm_conv_gflops": flops / total / 1e9,
            "step_ms": step_s * 1e3, "share_of_step": total / step_s,
            "ceiling_gflops": kernel["gflop_per_step"] / total}


def seed_batching(width: int, n: int, seeds: int, epochs: int) -> list[dict]:
    """Images/s of Protocol A evaluation training of `seeds` models on an n-image set: one after
    another (cache-sized slices on CPU) and as one vmapped model (evaluation/multi_seed.py)."""
    from ltdistill.evaluation.multi_seed import train_classifiers
    from ltdistill.evaluation.train import TrainRecipe
    from ltdistill.models import ModelSpec

    spec = ModelSpec("convnet3", 1, 10, 28, width=width)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10
    recipe = TrainRecipe(epochs=epochs, batch_size=256)
    rows = []
    for mode in ("sequential", "vmap"):
        t = time.perf_counter()
        train_classifiers(spec, x, y, recipe=recipe, lr=0.01, seeds=list(range(seeds)),
                          device="cpu", mode=mode)
        dt = time.perf_counter() - t
        rows.append({"width": width, "images": n, "seeds": seeds, "mode": mode,
                     "images_per_s": seeds * n * (epochs + 1) / dt})
    return rows


# --------------------------------------------------------------------------- what targets need

#: issue 8's speed targets, as (name, reference figure, speed-up asked): MTT per iteration 21-30 s
#: (2x), DC 200-260 s and DM 2.5-3.5 s per iteration (1.5x), expert training ~310 images/s on a
#: CIFAR-10-LT-sized set (1.5x)
TARGETS = {"mtt": (21.0, 30.0, 2.0), "expert": (310.0, 310.0, 1.5)}


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def target_requirements(peak_gflops: float, toy: bool) -> list[dict]:
    """The fraction of this run's matmul peak that each speed target needs, from FLOPs counted by
    torch's FlopCounterMode on the real operations (convolutions and matmuls; elementwise work is
    not counted, so these are lower bounds). A target that needs more than ~70% of peak is out of
    reach for ConvNet-3's mix of convolutions, norms and pools on this CPU.

    mtt     one exact unroll step of the reference MTT setting (Fashion-MNIST 1x28x28, ConvNet-3
            width 128, 100 synthetic images, DSA) with its share of the outer backward, times
            syn_steps 20; the target is half the reference's 21-30 s.
    expert  one SGD training step of ConvNet-3 width 128 on 3x32x32 (the CIFAR-10-LT expert
            setting) per image; the target is 1.5x the reference's ~310 images/s."""
    from ltdistill.methods.trajectory_core import (
        FlatNet,
        MatchSpec,
        Synthetic,
        Unroll,
        exact_match,
        hard_ce,
    )
    from ltdistill.models import ModelSpec, build_model

    width, images, steps = (8, 10, 2) if toy else (128, 100, 20)
    spec = ModelSpec("convnet3", 1, 10, 28, width=width)
    net = FlatNet(spec, "cpu")
    g = torch.Generator().manual_seed(0)
    theta0 = torch.cat([p.detach().reshape(-1) for p in build_model(spec, 0).parameters()])
    target = theta0 + 1e-3 * torch.randn(theta0.shape, generator=g)
    x = torch.randn(images, 1, 28, 28, generator=g).requires_grad_(True)
    syn = Synthetic(x, torch.arange(images) % 10, torch.tensor(0.01, requires_grad=True))
    one = Unroll([torch.arange(images)], (0,), None)

    def mtt_step() -> None:
        loss = exact_match(net, syn, theta0, target, one, MatchSpec(hard_ce))
        torch.autograd.backward(loss, inputs=syn.leaves())

    mtt_gflop = _count(mtt_step) * steps / 1e9
    cifar = build_model(ModelSpec("convnet3", 3, 10, 32, width=width), seed=0)
    batch = 4 if toy else 32
    xb, yb = torch.randn(batch, 3, 32, 32, generator=g), torch.arange(batch) % 10
    per_image = _count(lambda: torch.nn.functional.cross_entropy(cifar(xb), yb).backward()) / batch
    rows = []
    lo, hi, speedup = TARGETS["mtt"]
    need = [mtt_gflop / (t / speedup) for t in (hi, lo)]  # GFLOP/s for the slow / fast reference
    rows.append({"target": f"MTT exact unroll, {speedup:g}x the reference's {lo:g}-{hi:g} s per "
                           f"iteration", "gflop": mtt_gflop,
                 "seconds_at_peak": mtt_gflop / peak_gflops,
                 "target_seconds": [lo / speedup, hi / speedup],
                 "needed_fraction_of_peak": [n / peak_gflops for n in need]})
    rate, _, speedup = TARGETS["expert"]
    need_rate = rate * speedup
    rows.append({"target": f"expert training, {speedup:g}x the reference's ~{rate:g} images/s",
                 "gflop": per_image / 1e9, "images_per_s_at_peak": peak_gflops * 1e9 / per_image,
                 "target_images_per_s": need_rate,
                 "needed_fraction_of_peak": [need_rate * per_image / 1e9 / peak_gflops] * 2})
    return rows


# --------------------------------------------------------------------------- pipeline figures

def _tsv(path: Path) -> dict:
    head, *rows = path.read_text().strip().splitlines()
    vals = dict(zip(head.split("\t"), rows[-1].split("\t"), strict=True))
    return {"wall_s": float(vals["s"]), "max_rss_mb": _num(vals.get("max_rss")),
            "cpu_s": _num(vals.get("cpu_time")), "end": path.stat().st_mtime}


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def pipeline_figures(run_dir: Path, config: dict) -> dict:
    bench = run_dir / "benchmarks"
    tsvs = {p: _tsv(p) for p in bench.rglob("*.tsv")}
    out: dict = {"jobs": len(tsvs)}
    if not tsvs:
        return out
    start = min(v["end"] - v["wall_s"] for v in tsvs.values())
    out["grid_wall_s"] = max(v["end"] for v in tsvs.values()) - start
    out["sum_job_wall_s"] = sum(v["wall_s"] for v in tsvs.values())
    params = config.get("method_params", {})
    distill = []
    for p, v in sorted(tsvs.items()):
        rel = p.relative_to(bench).parts
        if rel[0] != "distill":
            continue
        method = rel[-2]
        iters = params.get(method, {}).get("iterations")
        distill.append({"method": method, "ipc": rel[3].removeprefix("ipc"), "wall_s": v["wall_s"],
                        "iterations": iters, "s_per_iteration": v["wall_s"] / iters if iters else None,
                        "max_rss_mb": v["max_rss_mb"]})
    out["distill"] = distill
    experts = []
    for p, v in sorted(tsvs.items()):
        rel = p.relative_to(bench).parts
        if rel[0] == "experts":
            experts.append({"job": "/".join(rel[1:]).removesuffix(".tsv"), "wall_s": v["wall_s"],
                            "max_rss_mb": v["max_rss_mb"]})
    out["experts"] = experts
    per_method: dict[str, list[float]] = {}
    for rec_path in (run_dir / "results/evaluation").rglob("seed*.json"):
        rec = json.loads(rec_path.read_text())
        if rec.get("status") != "ok" or not rec.get("wall_time_s"):
            continue
        key = f"{rec['method']} ({rec.get('recipe')}, {rec.get('model')})"
        trained = rec["train_images"]
        if "train_img_breakdown" in rec:  # two-stage: the group classifier is its own job
            trained = rec["train_img_breakdown"]["stage2"]
        per_method.setdefault(key, []).append(trained * rec["passes"] / rec["wall_time_s"])
    out["evaluation_images_per_s"] = {k: sum(v) / len(v) for k, v in sorted(per_method.items())}
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# ltdistill benchmark harness ({m['date']})", "",
             f"`{report['command']}` on {m['cpu_count']} CPU cores, torch {m['torch']}, "
             f"{m['threads']} threads, allocator {m.get('allocator', 'system')}; fp32 matmul peak "
             f"**{m['matmul_gflops']:.0f} GFLOP/s**.", "",
             "## Training kernels (ConvNet-3, 1x28x28)", "",
             "| width | batch | layout | images/s | GFLOP/s | of matmul peak |", "|---:|---:|---|---:|---:|---:|"]
    for k in report["kernels"]:
        layout = "channels_last" if k["channels_last"] else "contiguous"
        if k.get("slice"):
            layout += f", slices of {k['slice']}"
        if k.get("native"):
            layout += ", native kernels" + (" (channels_last inside)"
                                            if k.get("native_channels_last") else "")
        lines.append(f"| {k['width']} | {k['batch']} | {layout} "
                     f"| {k['images_per_s']:.0f} | {k['gflops']:.1f} | {k['gflops'] / m['matmul_gflops']:.0%} |")
    if report.get("conv_bound"):
        lines += ["", "## What bounds the training kernels (the fastest row of each width)", "",
                  "The matrix-product convolutions of blocks 2-3 timed alone at the kernel's shapes "
                  "and layout (forward, weight and input gradients); \"ceiling\": the whole "
                  "step's GFLOP/s if everything else cost nothing.", "",
                  "| width | convs alone (ms/step) | their GFLOP/s | of peak | step (ms) | their share "
                  "| ceiling of the step |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for b in report["conv_bound"]:
            lines.append(f"| {b['width']} | {b['gemm_conv_ms']:.1f} | {b['gemm_conv_gflops']:.0f} "
                         f"| {b['gemm_conv_gflops'] / m['matmul_gflops']:.0%} | {b['step_ms']:.1f} "
                         f"| {b['share_of_step']:.0%} | {b['ceiling_gflops']:.0f} GFLOP/s "
                         f"({b['ceiling_gflops'] / m['matmul_gflops']:.0%}) |")
    if report.get("seed_batching"):
        lines += ["", "## Several evaluation seeds (Protocol A, ConvNet-3 with DSA)", "",
                  "| width | images | seeds | mode | images/s |", "|---:|---:|---:|---|---:|"]
        lines += [f"| {r['width']} | {r['images']} | {r['seeds']} | {r['mode']} | "
                  f"{r['images_per_s']:.0f} |" for r in report["seed_batching"]]
    if report.get("targets"):
        lines += ["", "## What the speed targets need (FLOPs counted, this run's peak)", "",
                  "| target | work | at 100% of peak | target | needs of peak |",
                  "|---|---:|---:|---:|---:|"]
        for t in report["targets"]:
            frac = t["needed_fraction_of_peak"]
            need = f"{frac[0]:.0%}" if frac[0] == frac[1] else f"{frac[0]:.0%}-{frac[1]:.0%}"
            if "target_seconds" in t:
                lines.append(f"| {t['target']} | {t['gflop']:.0f} GFLOP | {t['seconds_at_peak']:.1f} s "
                             f"| {t['target_seconds'][0]:.1f}-{t['target_seconds'][1]:.1f} s | {need} |")
            else:
                lines.append(f"| {t['target']} | {t['gflop']:.3f} GFLOP/image "
                             f"| {t['images_per_s_at_peak']:.0f} images/s "
                             f"| {t['target_images_per_s']:.0f} images/s | {need} |")
    ref = report.get("same_host_reference")
    if ref:
        lines += ["", "## Against the reference code's structure on this host (bench_reference.py)", "",
                  "| iteration | straightforward (s) | ltdistill (s) | speedup |", "|---|---:|---:|---:|"]
        for name, base in (("ltdistill_segmented", "straightforward"),
                           ("ltdistill_whole", "straightforward"),
                           ("ltdistill_dm", "straightforward_dm"),
                           ("ltdistill_dc", "straightforward_dc")):
            if name in ref["runs"] and base in ref["runs"]:
                b = min(r["seconds"] for r in ref["runs"][base])
                o = min(r["seconds"] for r in ref["runs"][name])
                lines.append(f"| {name.removeprefix('ltdistill_')} | {b:.2f} | {o:.2f} | {b / o:.2f}x |")
    p = report.get("pipeline") or {}
    if p.get("jobs"):
        lines += ["", f"## Pipeline ({p['jobs']} jobs in `{report['run_dir']}`)", "",
                  f"Grid wall time **{p['grid_wall_s'] / 60:.1f} min** (first job start to last "
                  f"job end); sum of job wall times {p['sum_job_wall_s'] / 60:.1f} min.", "",
                  "| method | IPC | distill wall (s) | iterations | s / iteration | peak RSS (MB) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d in p["distill"]:
            spi = f"{d['s_per_iteration']:.3g}" if d["s_per_iteration"] else "–"
            lines.append(f"| {d['method']} | {d['ipc']} | {d['wall_s']:.1f} | {d['iterations'] or '–'} "
                         f"| {spi} | {d['max_rss_mb'] or 0:.0f} |")
        if p["experts"]:
            lines += ["", "| expert job | wall (s) | peak RSS (MB) |", "|---|---:|---:|"]
            lines += [f"| {e['job']} | {e['wall_s']:.1f} | {e['max_rss_mb'] or 0:.0f} |" for e in p["experts"]]
        if p["evaluation_images_per_s"]:
            lines += ["", "| evaluation training | images/s |", "|---|---:|"]
            lines += [f"| {k} | {v:.0f} |" for k, v in p["evaluation_images_per_s"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=".", help="workflow directory of a finished run")
    ap.add_argument("--config", default=None, help="its config (default: <run-dir>/config/config.yaml)")
    ap.add_argument("--toy", action="store_true", help="tiny kernels (for the test suite)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "harness"))
    ap.add_argument("--allocator", default="auto", choices=["auto", "system"],
                    help="runtime.allocator for the kernels (system = malloc as is)")
    ap.add_argument("--same-host-reference", action="store_true",
                    help="also run bench_reference.py (straightforward MTT / DM / DC iterations "
                         "in the reference code's structure beside ltdistill's; ~6 minutes)")
    args = ap.parse_args(argv)
    import yaml

    from ltdistill.allocator import tune_allocator

    torch.set_num_threads(args.threads)
    allocator_tuned = tune_allocator(args.allocator)
    run_dir = Path(args.run_dir)
    config = yaml.safe_load(Path(args.config or run_dir / "config/config.yaml").read_text())
    n, steps, widths = (128, 1, [8]) if args.toy else (2048, 20, [32, 128])
    batch = 16 if args.toy else 256
    sl_ = 8 if args.toy else 32
    report = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "run_dir": str(run_dir),
        "machine": {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "matmul_gflops": matmul_gflops(n),
                    "allocator": args.allocator, "allocator_tuned": allocator_tuned},
        "kernels": [convnet_training(w, batch, steps, cl, sl, nk) for w in widths
                    for cl, sl, nk in ((False, None, "off"), (False, sl_, "off"),
                                       (True, None, "off"), (False, None, "auto"),
                                       (False, sl_, "auto"))],
        "seed_batching": seed_batching(8 if args.toy else 32, 16 if args.toy else 100, 3,
                                       1 if args.toy else 10),
        "pipeline": pipeline_figures(run_dir, config),
    }
    report["conv_bound"] = [
        conv_bound(w, batch, 3 if args.toy else 10,
                   max((k for k in report["kernels"] if k["width"] == w),
                       key=lambda k: k["images_per_s"])) for w in widths]
    report["targets"] = target_requirements(report["machine"]["matmul_gflops"], args.toy)
    if args.same_host_reference:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, str(Path(__file__).parent / "bench_reference.py"),
                            "--threads", str(args.threads), "--reps", "1",
                            "--out", f"{tmp}/reference.json"], check=True)
            report["same_host_reference"] = json.loads(Path(f"{tmp}/reference.json").read_text())
    report["machine"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    from ltdistill.allocator import ensure_job_environment

    # the kernels run in this process: allocate as workflow jobs do (restarts once if needed)
    ensure_job_environment("system" if "system" in sys.argv else "auto")
    main()
