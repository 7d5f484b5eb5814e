"""`datm`: Difficulty-Aligned Trajectory Matching ("Towards Lossless Dataset Distillation via
Difficulty-Aligned Trajectory Matching", Guo et al., ICLR 2024; trajectory_methods.md §6). MTT
with learnable soft-label logits initialised from correct expert predictions, a start-epoch range
that grows with Sequential Generation, and a loss-threshold gate; TESLA gradients by default."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..experts.train import coerce_float_fields
from ..io import ImageSet
from ..seeding import generator
from .base import DistillContext, register_method
from .trajectory_core import (
    FinalSnapshots,
    FlatNet,
    MatchSpec,
    StartSchedule,
    Unroll,
    check_exact_segment,
    correct_init,
    dsa_params,
    finish,
    label_init,
    make_synthetic,
    match_step,
    open_pool,
    optimise,
    optimisers,
    pool_meta,
    real_init,
    resolve,
    soft_ce,
    unroll_batches,
)

#: the CIFAR-10 IPC 10 configuration; fills every key neither the config nor a preset row sets
DEFAULTS = {"iterations": 10000, "syn_steps": 80, "expert_epochs": 2, "min_start_epoch": 0,
            "current_max_start_epoch": 10, "max_start_epoch": 20, "sequential": True,
            "expansion_end": 1000, "batch_syn": 100, "lr_img": 100.0, "lr_lr": 1e-5, "lr_y": 2.0,
            "lr_teacher": 0.01, "momentum_y": 0.9, "threshold": 1.0, "pix_init": "correct"}


def _row(dataset: str, ipc: int, n: int, t_min: int, t_cur: int | None, t_max: int, seq: bool,
         end: int, batch: int, lr_img: float, lr_lr: float, lr_y: float, threshold: float,
         pix: str, m: int = 2) -> dict:
    return {"dataset": dataset, "ipc": ipc, "syn_steps": n, "expert_epochs": m,
            "min_start_epoch": t_min, "current_max_start_epoch": t_cur, "max_start_epoch": t_max,
            "sequential": seq, "expansion_end": end, "batch_syn": batch, "lr_img": lr_img,
            "lr_lr": lr_lr, "lr_y": lr_y, "threshold": threshold, "pix_init": pix}


#: `datm_paper`: DATM configs/<dataset>/ConvIN/IPC*.yaml (spec §6 table), for every IF. An IPC
#: between two rows interpolates the integers (N, T-, T, T+, expansion end, batch_syn) and takes
#: the rest from the lower row (benchmark choice for IPC 20); outside the rows, the nearest row.
PRESETS = {
    "datm_paper": [
        _row("cifar10", 1, 80, 0, None, 4, False, 1000, 10, 100, 1e-7, 5, 1.1, "correct"),
        _row("cifar10", 10, 80, 0, 10, 20, True, 1000, 100, 100, 1e-5, 2, 1.0, "correct"),
        _row("cifar10", 50, 80, 0, 20, 40, True, 2000, 500, 1000, 1e-5, 2, 1.0, "correct"),
        _row("cifar10", 500, 40, 40, None, 60, False, 2000, 1000, 50, 1e-5, 10, 1.0, "correct"),
        _row("cifar10", 1000, 100, 40, None, 60, False, 2000, 1000, 50, 1e-5, 10, 1.0, "correct"),
        _row("cifar100", 1, 40, 0, 10, 20, True, 1000, 1000, 1000, 1e-5, 10, 1.0, "correct", m=3),
        _row("cifar100", 10, 80, 0, 30, 50, True, 2000, 1000, 1000, 1e-5, 10, 1.0, "correct"),
        _row("cifar100", 50, 80, 20, None, 70, False, 2000, 1000, 1000, 1e-5, 10, 1.0, "real"),
        _row("cifar100", 100, 80, 30, None, 70, False, 2000, 1000, 50, 1e-5, 10, 1.0, "correct"),
        _row("tiny_imagenet", 1, 40, 0, 15, 20, True, 2000, 1000, 10000, 1e-4, 10, 1.0, "correct"),
        _row("tiny_imagenet", 10, 40, 10, None, 50, False, 2000, 500, 100, 1e-4, 10, 1.0, "correct"),
        _row("tiny_imagenet", 50, 20, 40, None, 70, False, 2000, 1000, 100, 1e-4, 10, 1.0, "correct"),
    ],
}


@dataclass(frozen=True)
class DATMConfig:
    """None = from the preset row, else DEFAULTS. batch_syn 0 = the whole set. pix_init: correct
    (samples_predicted_correctly, falling back across experts; labels = mean logits of the experts
    that are right) | real (random real images; labels = expert 0's logits). threshold: the update is
    skipped when the matching loss exceeds it (0 = never skip)."""

    preset: str | None = None  # datm_paper | none
    iterations: int | None = None
    syn_steps: int | None = None
    expert_epochs: int | None = None
    min_start_epoch: int | None = None  # T-
    current_max_start_epoch: int | None = None  # T (Sequential Generation start)
    max_start_epoch: int | None = None  # T+
    sequential: bool | None = None
    expansion_end: int | None = None
    batch_syn: int | None = None
    lr_img: float | None = None
    lr_lr: float | None = None
    lr_y: float | None = None
    lr_teacher: float | None = None
    momentum_y: float | None = None
    threshold: float | None = None
    pix_init: str | None = None
    ipc_policy: str = "duplicate"
    tesla: bool = True
    exact_segment: int = 0  # exact gradient only: trajectory_core.segmented_match
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"

    def __post_init__(self) -> None:
        coerce_float_fields(self)
        check_exact_segment(self.exact_segment)
        if self.pix_init not in (None, "correct", "real"):
            raise ValueError(f"pix_init must be correct or real, got '{self.pix_init}'")
        if self.ipc_policy not in ("duplicate", "noise"):
            raise ValueError(f"ipc_policy must be duplicate or noise, got '{self.ipc_policy}'")


@register_method("datm", DATMConfig, needs=("datm_experts",), soft_labels=True)
def datm(ctx: DistillContext, cfg: DATMConfig) -> ImageSet:
    cfg, note = resolve(cfg, DEFAULTS, PRESETS, ctx, interpolate_ipc=True)
    dev = ctx.device
    net = FlatNet(ctx.model, dev)
    pool = open_pool(ctx, "datm", net)
    schedule = StartSchedule(cfg.min_start_epoch, cfg.max_start_epoch, cfg.current_max_start_epoch,
                             cfg.sequential, cfg.expansion_end)
    schedule.validate(cfg.expert_epochs, pool.min_epochs, "datm")
    g = generator("datm-init", ctx.seed)
    finals = FinalSnapshots(pool, dev)
    found = None
    if cfg.pix_init == "correct":
        images, labels, found = correct_init(ctx, net, finals, cfg.ipc_policy, fallback=True, g=g)
        logits = label_init(net, images.to(dev), labels.to(dev), finals, "correct")
    else:
        images, labels = real_init(ctx, cfg.ipc_policy, g)
        logits = label_init(net, images.to(dev), labels.to(dev), finals, "one")
    syn = make_synthetic(images, logits, cfg.lr_teacher, learn_labels=True, device=dev)
    opts = optimisers(syn, cfg.lr_img, cfg.lr_lr, lr_y=cfg.lr_y, momentum_y=cfg.momentum_y)
    spec = MatchSpec(soft_ce)
    aug = dsa_params(cfg.dsa, cfg.dsa_strategy)
    g_run = generator("datm-run", ctx.seed)

    def step(it: int) -> tuple[float, bool]:
        expert = pool.sample(g_run)
        t = schedule.draw(it, g_run)
        unroll = Unroll(unroll_batches(len(labels), cfg.batch_syn, cfg.syn_steps, g_run),
                        ("datm", ctx.seed, it), aug)
        return match_step(net, syn, expert.snapshot(t, dev),
                          expert.snapshot(t + cfg.expert_epochs, dev), unroll, spec, cfg.tesla,
                          gate=cfg.threshold if cfg.threshold > 0 else None,
                          exact_segment=cfg.exact_segment)

    stats = optimise(syn, opts, cfg.iterations, step, f"datm ipc {ctx.ipc}",
                     ckpt=ctx.checkpointer("datm", cfg).track(run_rng=g_run))
    return finish(ctx, "datm", syn, labels, soft=True, policy=cfg.ipc_policy,
                  resolved=asdict(cfg), preset_used=note, experts=pool_meta(pool),
                  correct_found_per_class=found, **stats)
