"""Throughput of the statistical family (not a test): observer/teacher training images/s (GLMC
and plain CE), fair BN recalibration images/s, seconds per recovery iteration (one image per
class, C = 10 images per batch; IPC 10 means 10 such batches) and Protocol B student images/s,
each with the peak RSS of a fresh process, at

- cpu:   the default CPU setting, 1 x 28 x 28, 10 classes, ConvNet-3 BN width 32;
- paper: CIFAR-sized 3 x 32 x 32, 10 classes, ResNet-18 (CIFAR stem, BN).

Synthetic tensors (throughput does not depend on pixel values). One torch thread per process.
Run: python benchmarks/bench_statistical.py [--steps N]  ->  benchmarks/results/statistical.json
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

SETTINGS = {
    "cpu": {"arch": "convnet", "width": 32, "channels": 1, "size": 28},
    "paper": {"arch": "resnet18", "width": 128, "channels": 3, "size": 32},
}
CASES = ("expert_glmc", "expert_ce", "bn_recal", "recover", "protocol_b")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(setting: str, case: str, steps: int) -> dict:
    import torch

    from ltdistill.data.preprocess import make_preprocessing
    from ltdistill.evaluation.protocol_b import train_protocol_b
    from ltdistill.evaluation.train import TrainRecipe
    from ltdistill.models import ModelSpec, build_model
    from ltdistill.statistical.bn_recal import recalibrate
    from ltdistill.statistical.glmc import ExpertConfig, expert_spec, train_expert
    from ltdistill.statistical.recover import RecoverSettings, recover

    torch.set_num_threads(1)
    s = SETTINGS[setting]
    c, hw, classes = s["channels"], s["size"], 10
    g = torch.Generator().manual_seed(0)
    base = _peak_mb()
    if case.startswith("expert"):
        batch = 64
        n = batch * steps
        x = torch.randn(n, c, hw, hw, generator=g)
        y = torch.arange(n) % classes
        cfg = ExpertConfig(loss=case.split("_")[1], arch=s["arch"], width=s["width"], epochs=1,
                           batch_size=batch)
        spec = expert_spec(cfg, c, classes, hw)
        train_expert(x[:batch * 1], y[:batch], [batch // classes] * classes, spec, cfg, 0)  # warm-up
        t = time.perf_counter()
        train_expert(x, y, [n // classes] * classes, spec, cfg, 0)
        dt = time.perf_counter() - t
        return {"images_per_s": n / dt, "seconds": dt, "images": n, "batch": batch,
                "peak_rss_mb": _peak_mb(), "rss_before_mb": base}
    net = build_model(ModelSpec(s["arch"], c, classes, hw, width=s["width"], norm="batch"), 0).eval()
    if case == "bn_recal":
        batch = 256
        n = batch * steps
        x = torch.randn(n, c, hw, hw, generator=g)
        y = torch.arange(n) % classes
        recalibrate(net, x[:batch], y[:batch], classes, batch)  # warm-up
        t = time.perf_counter()
        recalibrate(net, x, y, classes, batch)
        dt = time.perf_counter() - t
        return {"images_per_s": n / dt, "seconds": dt, "images": n, "batch": batch,
                "peak_rss_mb": _peak_mb(), "rss_before_mb": base}
    if case == "recover":
        y = torch.arange(classes)
        x = torch.randn(classes, c, hw, hw, generator=g)
        targets = [(torch.zeros(m.num_features), torch.ones(m.num_features))
                   for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        cls = [(mu.expand(classes, -1).clone(), v.expand(classes, -1).clone()) for mu, v in targets]
        st = RecoverSettings(iterations=2)
        recover(net, x, y, st, 0, targets, cls)  # warm-up
        st = RecoverSettings(iterations=steps)
        t = time.perf_counter()
        recover(net, x, y, st, 0, targets, cls)
        dt = time.perf_counter() - t
        per_it = dt / steps
        return {"seconds_per_iteration": per_it, "batch": classes,
                "seconds_per_1000_iterations_ipc10": per_it * 1000 * 10,
                "peak_rss_mb": _peak_mb(), "rss_before_mb": base}
    if case == "protocol_b":
        n = 100  # IPC 10 x 10 classes
        x = torch.randn(n, c, hw, hw, generator=g)
        y = torch.arange(n) % classes
        prep = make_preprocessing("normalise", (0.5,) * c, (0.25,) * c)
        student = ModelSpec("convnet", c, classes, hw, width=s["width"] if setting == "cpu" else 128)
        recipe = TrainRecipe(epochs=1, batch_size=50, protocol="b", momentum=0.875)
        train_protocol_b(student, x, y, recipe=recipe, lr=0.1, seed=0, device="cpu",
                         preprocessing=prep, teacher=net)  # warm-up
        recipe = TrainRecipe(epochs=steps, batch_size=50, protocol="b", momentum=0.875)
        t = time.perf_counter()
        train_protocol_b(student, x, y, recipe=recipe, lr=0.1, seed=0, device="cpu",
                         preprocessing=prep, teacher=net)
        dt = time.perf_counter() - t
        return {"images_per_s": n * steps / dt, "seconds_per_epoch_100_images": dt / steps,
                "student": f"convnet width {student.width} (instance norm)",
                "teacher": s["arch"], "peak_rss_mb": _peak_mb(), "rss_before_mb": base}
    raise ValueError(case)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="batches / iterations / epochs per case")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--one", nargs=2, metavar=("SETTING", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "statistical.json"))
    args = ap.parse_args()
    from ltdistill.allocator import ensure_job_environment

    ensure_job_environment("auto")  # measured processes allocate as workflow jobs do
    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.steps)))
        return
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "load_average": os.getloadavg(), "threads": 1},
                     "steps": args.steps, "settings": SETTINGS, "results": {}}
    for setting in args.settings:
        for case in args.cases:
            proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one",
                                   setting, case], capture_output=True, text=True)
            if proc.returncode != 0:
                results["results"][f"{setting}/{case}"] = {"error": proc.stderr[-2000:]}
            else:
                results["results"][f"{setting}/{case}"] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(setting, case, results["results"][f"{setting}/{case}"], flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
