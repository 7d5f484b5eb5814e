"""`damed`: Distribution-Agnostic Matching + Expert Decoupling ("Distilling Long-tailed Datasets",
Zhao, Wang, Shang, Wang, Yan, CVPR 2025; code ichbill/LTDD; trajectory_methods.md §8).

Per iteration, phase 1 matches the backbone sub-vector against representation experts (damed_rep)
with the class-prior-weighted soft CE L_DAM as the student's inner loss; phase 2 matches the
classifier against class-balanced classifier experts (damed_cls) with plain soft CE and the
backbone gradients zeroed. Both phases share X, the label logits and one alpha; their gradients are
summed with lambda_rep / lambda_cls; no threshold gate. TESLA by default, exact as an option."""

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
    dam_loss,
    dam_weights,
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

#: used for every key neither the config nor a preset row sets (the CIFAR-10-LT IF 100 IPC 10 row)
DEFAULTS = {"iterations": 10000, "syn_steps": 80, "syn_steps_cls": 80, "expert_epochs": 2,
            "min_start_epoch": 0, "current_max_start_epoch": 10, "max_start_epoch": 20,
            "min_start_epoch_cls": 0, "current_max_start_epoch_cls": 1, "max_start_epoch_cls": 1,
            "sequential": True, "expansion_end": 2000, "lambda_rep": 1.0, "lambda_cls": 0.5,
            "batch_syn": 0, "lr_img": 100.0, "lr_lr": 1e-5, "lr_y": 2.0, "lr_teacher": 0.01,
            "momentum_y": 0.9, "pix_init": "correct"}

_KEYS = ("syn_steps", "syn_steps_cls", "min_start_epoch", "current_max_start_epoch",
         "max_start_epoch", "min_start_epoch_cls", "current_max_start_epoch_cls",
         "max_start_epoch_cls", "lambda_rep", "lambda_cls", "lr_img", "sequential", "expansion_end")


def _rows(dataset: str, common: dict, table: list[tuple]) -> list[dict]:
    """Expand (IF, IPC, N_rep, N_cls, T-, T, T+, T-cls, Tcls, T+cls, l_rep, l_cls, lr_img, Seq, end)
    tuples into preset rows (one tuple = one line of the spec's tables)."""
    return [{"dataset": dataset, "imbalance_factor": r[0], "ipc": r[1], **common,
             **dict(zip(_KEYS, r[2:], strict=True))} for r in table]


_C10 = {"batch_syn": 500, "lr_lr": 1e-5, "lr_y": 2.0, "pix_init": "correct", "iterations": 10000}
_C100 = {"batch_syn": 1000, "lr_lr": 1e-5, "lr_y": 10.0, "pix_init": "real", "iterations": 10000}
_TINY = {"lr_img": 100.0, "lr_y": 10.0, "pix_init": "real", "lambda_rep": 1.0, "lambda_cls": 0.1,
         "min_start_epoch_cls": 0, "current_max_start_epoch_cls": None, "max_start_epoch_cls": 1,
         "current_max_start_epoch": None, "sequential": False, "expansion_end": 2000}
# Tiny-ImageNet-LT (released = used by the paper): (IF, IPC, N, T-, T+, batch_syn, lr_lr, iterations)
_TINY_TABLE = [(10, 10, 25, 10, 50, 500, 1e-4, 10000), (10, 20, 20, 10, 50, 500, 1e-4, 10000),
               (10, 50, 10, 40, 70, 1000, 1e-5, 10000), (20, 10, 25, 10, 50, 500, 1e-4, 10000),
               (20, 20, 20, 10, 50, 500, 1e-4, 10000), (20, 50, 10, 40, 70, 1000, 1e-5, 1500)]
_TINY_ROWS = [{"dataset": "tiny_imagenet", "imbalance_factor": f, "ipc": i, **_TINY,
               "syn_steps": n, "syn_steps_cls": n, "min_start_epoch": lo, "max_start_epoch": hi,
               "batch_syn": b, "lr_lr": lr, "iterations": it}
              for f, i, n, lo, hi, b, lr, it in _TINY_TABLE]
# ImageNet-LT exponential subset, from the authors' reply (ichbill/LTDD issue #2); lambdas as Tiny
_IMAGENET_ROWS = [{"dataset": "imagenet_lt_exp", "imbalance_factor": 10, "ipc": 10, **_TINY,
                   "syn_steps": 25, "syn_steps_cls": 25, "min_start_epoch": 10,
                   "max_start_epoch": 50, "iterations": 500, "batch_syn": 100, "lr_img": 0.1,
                   "lr_lr": 1e-7, "lr_y": 0.01}]

#: Presets as data (trajectory_methods.md §8.5). damed_paper: supplementary Table 10 for N, T and
#: lambda, Sequential Generation whenever T < T+ (end 2000; 1000 for IF 10 / IPC 10 as released),
#: learning rates and batch_syn from the released files; CIFAR-100-LT IF 50 falls back to the
#: nearest IF (20). damed_release: the released files, fixing only the §9 crashes (T_cls 0 with
#: Sequential Generation -> 1). Missing IPCs use the nearest row.
PRESETS = {
    "damed_paper": _rows("cifar10", _C10, [
        (10, 10, 80, 80, 0, 10, 20, 0, 1, 1, 1.0, 0.2, 100.0, True, 1000),
        (10, 20, 80, 80, 0, 10, 20, 0, 1, 1, 1.0, 0.2, 100.0, True, 2000),
        (10, 50, 80, 80, 0, 20, 40, 0, 1, 1, 1.0, 0.2, 1000.0, True, 2000),
        (50, 10, 80, 80, 0, 10, 20, 0, 1, 1, 0.5, 0.5, 100.0, True, 2000),
        (50, 20, 80, 80, 0, 10, 20, 0, 1, 1, 0.5, 0.5, 100.0, True, 2000),
        (50, 50, 80, 80, 0, 20, 40, 0, 1, 1, 0.5, 0.5, 100.0, True, 2000),
        (100, 10, 80, 80, 0, 10, 20, 0, 1, 1, 1.0, 0.5, 100.0, True, 2000),
        (100, 20, 80, 80, 0, 10, 20, 0, 1, 1, 1.0, 0.5, 100.0, True, 2000),
        (100, 50, 80, 80, 0, 20, 40, 0, 1, 1, 1.0, 0.5, 1000.0, True, 2000),
        (200, 10, 80, 80, 0, 10, 20, 0, 1, 1, 0.1, 1.0, 100.0, True, 2000),
        (200, 20, 80, 80, 0, 10, 20, 0, 1, 1, 0.1, 1.0, 1000.0, True, 2000),
        (200, 50, 80, 80, 0, 20, 40, 0, 1, 1, 0.1, 1.0, 1000.0, True, 2000),
    ]) + _rows("cifar100", {**_C100, "lr_img": 1000.0}, [
        (10, 10, 40, 20, 0, 30, 50, 0, 1, 1, 1.0, 0.1, 1000.0, True, 2000),
        (10, 20, 40, 20, 20, 70, 70, 0, 1, 1, 1.0, 0.1, 1000.0, False, 2000),
        (10, 50, 40, 20, 20, 70, 70, 0, 1, 1, 1.0, 0.1, 1000.0, False, 2000),
        (20, 10, 40, 20, 0, 30, 50, 0, 1, 1, 1.0, 0.1, 1000.0, True, 2000),
        (20, 20, 40, 20, 20, 70, 70, 0, 1, 1, 1.0, 0.1, 1000.0, False, 2000),
        (20, 50, 40, 20, 20, 70, 70, 0, 1, 1, 1.0, 0.1, 1000.0, False, 2000),
    ]) + _TINY_ROWS + _IMAGENET_ROWS,
    "damed_release": _rows("cifar10", _C10, [
        (10, 10, 80, 80, 0, 10, 20, 0, 1, 1, 1.0, 0.2, 100.0, True, 1000),  # T_cls 0 -> 1 (§9 #3)
        (10, 20, 80, 80, 0, 20, 40, 0, 0, 1, 1.0, 0.2, 100.0, False, 2000),
        (10, 50, 80, 80, 0, 20, 40, 0, 0, 1, 1.0, 0.2, 1000.0, False, 2000),
        (50, 10, 80, 80, 0, 10, 20, 0, 1, 1, 1.0, 0.5, 100.0, False, 2000),
        (50, 20, 80, 80, 0, 10, 20, 0, 1, 1, 0.5, 1.0, 100.0, True, 2000),
        (50, 50, 80, 80, 0, 20, 40, 0, 1, 1, 0.5, 1.0, 100.0, True, 2000),  # T_cls 0 -> 1 (§9 #3)
        (100, 10, 80, 80, 0, 10, 20, 0, 1, 1, 0.5, 1.0, 100.0, False, 2000),
        (100, 20, 80, 80, 0, 10, 20, 0, 1, 1, 0.5, 1.0, 100.0, True, 2000),
        (100, 50, 80, 60, 0, 20, 40, 0, 0, 1, 1.0, 0.5, 1000.0, False, 2000),
        (200, 10, 80, 80, 0, 10, 20, 0, 0, 1, 0.1, 1.0, 100.0, False, 2000),
        (200, 20, 80, 80, 0, 20, 40, 0, 0, 1, 0.1, 1.0, 1000.0, False, 2000),
        (200, 50, 80, 80, 0, 20, 40, 0, 0, 1, 0.1, 1.0, 1000.0, False, 2000),
    ]) + _rows("cifar100", _C100, [
        (10, 10, 40, 20, 30, None, 50, 0, None, 1, 1.0, 0.1, 1000.0, False, 2000),
        (10, 20, 40, 20, 20, None, 70, 0, None, 1, 1.0, 0.1, 1000.0, False, 2000),
        (10, 50, 40, 20, 20, None, 70, 0, None, 1, 1.0, 0.1, 1000.0, False, 2000),
        (20, 10, 40, 20, 20, None, 70, 0, None, 1, 1.0, 0.1, 1000.0, False, 2000),
        (20, 20, 40, 20, 20, None, 70, 0, None, 1, 1.0, 0.1, 1000.0, False, 2000),
        (20, 50, 40, 20, 20, None, 70, 0, None, 1, 1.0, 0.1, 1000.0, False, 2000),
    ]) + _TINY_ROWS + _IMAGENET_ROWS,
}


@dataclass(frozen=True)
class DAMEDConfig:
    """None = from the preset row, else DEFAULTS; `preset: none` uses DEFAULTS only.

    dam: weighted (w_c = (n_c + f) / (N + f), f = first_weight_factor, indexed by output class) |
        logit_adjusted (experimental: logits + la_sign * la_strength * log w first) | none.
    pix_init: correct (first classifier expert, no fallback; labels averaged over the classifier
        experts that are right, 0 if none) | real (labels = classifier expert 0's logits).
    ipc_policy: duplicate | noise, when fewer than IPC images are available."""

    preset: str | None = "damed_paper"  # damed_paper | damed_release | none
    iterations: int | None = None
    syn_steps: int | None = None  # N_rep
    syn_steps_cls: int | None = None  # N_cls
    expert_epochs: int | None = None  # M, both phases
    min_start_epoch: int | None = None
    current_max_start_epoch: int | None = None
    max_start_epoch: int | None = None
    min_start_epoch_cls: int | None = None
    current_max_start_epoch_cls: int | None = None
    max_start_epoch_cls: int | None = None
    sequential: bool | None = None
    expansion_end: int | None = None
    lambda_rep: float | None = None
    lambda_cls: float | None = None
    batch_syn: int | None = None
    lr_img: float | None = None
    lr_lr: float | None = None
    lr_y: float | None = None
    lr_teacher: float | None = None
    momentum_y: float | None = None
    pix_init: str | None = None
    ipc_policy: str = "duplicate"
    dam: str = "weighted"
    la_sign: float = -1.0
    la_strength: float = 1.0
    first_weight_factor: float = 0.0
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
        if self.dam not in ("weighted", "logit_adjusted", "none"):
            raise ValueError(f"dam must be weighted, logit_adjusted or none, got '{self.dam}'")


@register_method("damed", DAMEDConfig, needs=("damed_rep_experts", "damed_cls_experts"),
                 soft_labels=True)
def damed(ctx: DistillContext, cfg: DAMEDConfig) -> ImageSet:
    cfg, note = resolve(cfg, DEFAULTS, PRESETS, ctx)
    dev = ctx.device
    net = FlatNet(ctx.model, dev)
    rep = open_pool(ctx, "damed_rep", net)
    cls = open_pool(ctx, "damed_cls", net)
    cs = net.classifier_start
    sched_rep = StartSchedule(cfg.min_start_epoch, cfg.max_start_epoch, cfg.current_max_start_epoch,
                              cfg.sequential, cfg.expansion_end)
    sched_cls = StartSchedule(cfg.min_start_epoch_cls, cfg.max_start_epoch_cls,
                              cfg.current_max_start_epoch_cls, cfg.sequential, cfg.expansion_end)
    sched_rep.validate(cfg.expert_epochs, rep.min_epochs, "damed representation phase")
    sched_cls.validate(cfg.expert_epochs, cls.min_epochs, "damed classifier phase")

    g = generator("damed-init", ctx.seed)
    finals = FinalSnapshots(cls, dev)
    found = None
    if cfg.pix_init == "correct":
        images, labels, found = correct_init(ctx, net, finals, cfg.ipc_policy, fallback=False, g=g)
        logits = label_init(net, images.to(dev), labels.to(dev), finals, "correct")
    else:
        images, labels = real_init(ctx, cfg.ipc_policy, g)
        logits = label_init(net, images.to(dev), labels.to(dev), finals, "one")
    syn = make_synthetic(images, logits, cfg.lr_teacher, learn_labels=True, device=dev)
    opts = optimisers(syn, cfg.lr_img, cfg.lr_lr, lr_y=cfg.lr_y, momentum_y=cfg.momentum_y)
    weights = dam_weights(ctx.data.counts, cfg.first_weight_factor).to(dev)
    phase_rep = MatchSpec(dam_loss(weights, cfg.dam, cfg.la_sign, cfg.la_strength), match=slice(0, cs))
    phase_cls = MatchSpec(soft_ce, move=slice(cs, None))
    aug = dsa_params(cfg.dsa, cfg.dsa_strategy)
    g_run = generator("damed-run", ctx.seed)
    n = len(labels)

    def phase(it: int, pool, schedule, spec, steps, name, weight) -> float:
        expert = pool.sample(g_run)
        t = schedule.draw(it, g_run)
        unroll = Unroll(unroll_batches(n, cfg.batch_syn, steps, g_run), ("damed", ctx.seed, it, name),
                        aug)
        loss, _ = match_step(net, syn, expert.snapshot(t, dev),
                             expert.snapshot(t + cfg.expert_epochs, dev), unroll, spec, cfg.tesla,
                             weight=weight, exact_segment=cfg.exact_segment)
        return loss

    def step(it: int) -> tuple[float, bool]:
        l_rep = phase(it, rep, sched_rep, phase_rep, cfg.syn_steps, "rep", cfg.lambda_rep)
        l_cls = phase(it, cls, sched_cls, phase_cls, cfg.syn_steps_cls, "cls", cfg.lambda_cls)
        return cfg.lambda_rep * l_rep + cfg.lambda_cls * l_cls, True

    stats = optimise(syn, opts, cfg.iterations, step, f"damed ipc {ctx.ipc}",
                     ckpt=ctx.checkpointer("damed", cfg).track(run_rng=g_run))
    return finish(ctx, "damed", syn, labels, soft=True, policy=cfg.ipc_policy,
                  resolved=asdict(cfg), preset_used=note, dam_weights=weights.cpu().tolist(),
                  experts={"rep": pool_meta(rep), "cls": pool_meta(cls)},
                  correct_found_per_class=found, **stats)
