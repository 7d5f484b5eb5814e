"""Shared machinery of the matching family (DC, DSA, DM).

- The layer-wise gradient distance of "Dataset Condensation with Gradient Matching" (Zhao, Mopuri,
  Bilen, ICLR 2021) and its `mse` / `cos` alternatives (spec trajectory_methods.md §2).
- The outer/inner loop table (`get_loops`), with the nearest lower tabulated IPC for other IPCs.
- Synthetic-set initialisation (noise or real, with the IPC > n_c policy), per-class real batches,
  Siamese DSA call sites, and the finiteness check.
- The DC/DSA algorithm itself (`gradient_matching`), used by `dc.py` and `dsa.py`.

Fast path (exact): the per-class synthetic gradients can be computed in one batched call with
`torch.func.vmap(torch.func.grad(...))` over classes (`syn_grads: vmap`) instead of a loop
(`syn_grads: loop`, default). During matching every norm acts per sample (instance/group/layer
norm, or BatchNorm frozen in eval mode), so batching classes does not change any value. On the
2-core CPU the vmap path was not faster (benchmarks/bench_matching.py); it is meant for GPUs.
The pixel gradient is taken with autograd.grad w.r.t. the images only (loss.backward() would also
fill the network's .grad with unused second-order terms).

Reported losses (meta first_loss / final_loss / loss_trace) are per class and per outer loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..data.augment import DSAParams, dsa, parse_strategy, siamese_seed_for
from ..io import ImageSet
from ..microbatch import micro_batch_size, sliced_backward, sliced_grad
from ..models import build_model
from ..progress import Progress
from ..seeding import derive_seed, generator
from .base import DistillContext
from .common import POLICIES, class_slices, fill_class

#: get_loops of the DC reference: (ipc, outer_loop, inner_loop)
DEFAULT_LOOPS: tuple[tuple[int, int, int], ...] = (
    (1, 1, 1), (10, 10, 50), (20, 20, 25), (30, 30, 20), (40, 40, 15), (50, 50, 10),
)
METRICS = ("ours", "mse", "cos")
INITS = ("noise", "real")
SYN_GRADS = ("loop", "vmap")
EPS = 1e-6  # the reference's 0.000001 in the cosine denominators


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------


def normalise_loops(loops: Any) -> tuple[tuple[int, int, int], ...]:
    """Validate a loops table (YAML lists or tuples) and return it as sorted int triples."""
    try:
        table = tuple(tuple(int(v) for v in entry) for entry in loops)
    except TypeError as exc:
        raise ValueError(f"loops must be a list of [ipc, outer_loop, inner_loop], got {loops!r}") from exc
    if not table:
        raise ValueError("loops must have at least one [ipc, outer_loop, inner_loop] entry")
    for entry in table:
        if len(entry) != 3 or entry[0] < 1 or entry[1] < 1 or entry[2] < 0:
            raise ValueError(f"loops entry {list(entry)} must be [ipc >= 1, outer_loop >= 1, "
                             "inner_loop >= 0]")
    ipcs = [e[0] for e in table]
    if len(set(ipcs)) != len(ipcs):
        raise ValueError(f"loops lists an IPC more than once: {ipcs}")
    return tuple(sorted(table))


def get_loops(ipc: int, table: Sequence[Sequence[int]] = DEFAULT_LOOPS) -> tuple[int, int]:
    """(outer_loop, inner_loop) of the nearest tabulated IPC at or below `ipc`."""
    table = normalise_loops(table)
    below = [e for e in table if e[0] <= ipc]
    if not below:
        raise ValueError(f"IPC {ipc} is below every IPC of the loops table "
                         f"{[e[0] for e in table]}; add an entry for it")
    _, outer, inner = below[-1]
    return outer, inner


def check_choice(name: str, value: str, known: Sequence[str]) -> None:
    if value not in known:
        raise ValueError(f"unknown {name} '{value}'. Known: {', '.join(known)}")


def check_positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v}")


def dsa_params_or_none(strategy: str, align_corners: bool = True) -> DSAParams | None:
    """DSAParams for a strategy string; None when the strategy is empty / 'none'."""
    if not parse_strategy(strategy):
        return None
    return DSAParams(strategy=strategy, align_corners=align_corners)


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def layer_distance(g_real: torch.Tensor, g_syn: torch.Tensor, lead_dims: int = 0) -> torch.Tensor:
    """The DC per-layer distance of one parameter's gradients: reshape to (out, rest) and sum
    1 - <r_i, s_i> / (|r_i| |s_i| + 1e-6) over rows i; 1-D parameters (biases, norm scale and
    shift) contribute 0. The first `lead_dims` dimensions index independent problems (e.g.
    classes) and are summed over."""
    shape = g_syn.shape[lead_dims:]
    if len(shape) <= 1:
        return torch.zeros((), dtype=g_syn.dtype, device=g_syn.device)
    lead = g_syn.shape[:lead_dims]
    r = g_real.reshape(*lead, shape[0], -1)
    s = g_syn.reshape(*lead, shape[0], -1)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + EPS)
    return (1 - cos).sum()


def match_distance(grads_real: Sequence[torch.Tensor], grads_syn: Sequence[torch.Tensor],
                   metric: str = "ours", lead_dims: int = 0) -> torch.Tensor:
    """Distance between two gradient lists (one tensor per parameter, same order).

    ours: sum of layer_distance over parameters; mse: squared L2 between the concatenated
    gradient vectors; cos: 1 - cosine of the concatenated vectors (1e-6 in the denominator).
    With lead_dims = 1 every tensor has a leading class dimension and the per-class distances
    are summed."""
    if len(grads_real) != len(grads_syn):
        raise ValueError(f"{len(grads_real)} real vs {len(grads_syn)} synthetic gradient tensors")
    if metric == "ours":
        total = torch.zeros((), dtype=grads_syn[0].dtype, device=grads_syn[0].device)
        for r, s in zip(grads_real, grads_syn, strict=True):
            total = total + layer_distance(r, s, lead_dims)
        return total
    lead = grads_syn[0].shape[:lead_dims]
    r = torch.cat([g.reshape(*lead, -1) for g in grads_real], dim=-1)
    s = torch.cat([g.reshape(*lead, -1) for g in grads_syn], dim=-1)
    if metric == "mse":
        return ((s - r) ** 2).sum()
    if metric == "cos":
        return (1 - (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + EPS)).sum()
    raise ValueError(f"unknown dis_metric '{metric}'. Known: {', '.join(METRICS)}")


# --------------------------------------------------------------------------------------------
# Data: initialisation, real batches, Siamese augmentation
# --------------------------------------------------------------------------------------------


def init_synthetic(images: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int,
                   init: str, policy: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-major initial synthetic images and hard labels (CPU float32 / int64).

    real: a random permutation of each class, filled to IPC with `policy` when n_c < IPC.
    noise: i.i.d. N(0, 1) images (IPC per class; min(IPC, n_c) under `inherent`)."""
    check_choice("init", init, INITS)
    check_choice("ipc_policy", policy, POLICIES)
    xs, ys = [], []
    for c, idx in enumerate(class_slices(labels, num_classes)):
        if len(idx) == 0:
            raise ValueError(f"class {c} has no real images")
        if init == "noise":
            n = min(ipc, len(idx)) if policy == "inherent" else ipc
            x = torch.randn((n, *images.shape[1:]), generator=g)
        else:
            order = torch.randperm(len(idx), generator=g)
            x = fill_class(images[idx], order, ipc, policy, g)
        xs.append(x.float())
        ys.append(torch.full((len(x),), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


class RealBatches:
    """Random real batches of one class: a fresh permutation per call, the first min(n, n_c)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 g: torch.Generator, device: torch.device) -> None:
        self.images = images.to(device, torch.float32)
        self.index = class_slices(labels, num_classes)
        self.g = g

    def __call__(self, c: int, n: int) -> torch.Tensor:
        idx = self.index[c]
        pick = torch.randperm(len(idx), generator=self.g)[: min(n, len(idx))]
        return self.images[idx[pick].to(self.images.device)]

    def all_classes(self, n: int) -> list[torch.Tensor]:
        return [self(c, n) for c in range(len(self.index))]


def siamese(x: torch.Tensor, params: DSAParams | None, seed: int | None) -> torch.Tensor:
    """The one call site of Siamese DSA for the matching methods: the real and the synthetic batch
    of a class both go through here with the same seed (identity when DSA is off)."""
    if params is None:
        return x
    return dsa(x, params, siamese_seed=seed)


def class_bounds(labels: torch.Tensor, num_classes: int) -> list[tuple[int, int]]:
    """(start, end) of each class in class-major `labels`."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).tolist()
    bounds, start = [], 0
    for n in counts:
        bounds.append((start, start + n))
        start += n
    if not torch.equal(labels.cpu(), torch.repeat_interleave(torch.arange(num_classes),
                                                             torch.tensor(counts))):
        raise ValueError("synthetic labels must be class-major")
    return bounds


def check_finite(loss: torch.Tensor, method: str, iteration: int, where: str = "") -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{method}: non-finite matching loss ({value}) at iteration "
                                 f"{iteration}{where}; lower lr_img or check the input data")
    return value


def memory_format_for(device: torch.device, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if (channels_last and device.type == "cpu") else torch.contiguous_format


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def fresh_net(ctx: DistillContext, method: str, iteration: int,
              memory_format: torch.memory_format) -> nn.Module:
    """The randomly initialised network of one outer iteration, seeded from (run seed, iteration)."""
    net = build_model(ctx.model, derive_seed(method, "net", ctx.seed, iteration)).to(ctx.device)
    if memory_format == torch.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net.train()


def loss_trace(losses: list[float], points: int = 50) -> list[list[float]]:
    """At most `points` evenly spaced [iteration, loss] pairs (always including the last)."""
    if not losses:
        return []
    step = max(1, math.ceil(len(losses) / points))
    idx = list(range(0, len(losses), step))
    if idx[-1] != len(losses) - 1:
        idx.append(len(losses) - 1)
    return [[i, losses[i]] for i in idx]


# --------------------------------------------------------------------------------------------
# DC / DSA: per-class gradient matching
# --------------------------------------------------------------------------------------------


def _ce_labels(n: int, c: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), c, dtype=torch.long, device=device)


def real_gradients(net: nn.Module, real: Sequence[torch.Tensor], seeds: Sequence[int] | None,
                   params: DSAParams | None, memory_format: torch.memory_format
                   ) -> list[list[torch.Tensor]]:
    """Detached per-class gradients of mean CE on the (Siamese-augmented) real batches."""
    plist = list(net.parameters())
    size = micro_batch_size(net, next(iter(plist)).device)  # cache-sized slices on CPU
    out = []
    for c, x in enumerate(real):
        with torch.no_grad():
            x = siamese(x, params, seeds[c] if seeds is not None else None)
        x = x.contiguous(memory_format=memory_format)
        y = _ce_labels(len(x), c, x.device)

        def loss_on(sl: slice, x=x, y=y) -> torch.Tensor:
            return F.cross_entropy(net(x[sl]), y[sl])

        out.append(sliced_grad(loss_on, len(x), size, plist))
    return out


def gm_loss(net: nn.Module, syn: torch.Tensor, bounds: Sequence[tuple[int, int]],
            real: Sequence[torch.Tensor], seeds: Sequence[int] | None, params: DSAParams | None,
            metric: str = "ours", syn_grads: str = "loop",
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """L = sum_c D(grad CE(net; A(T_c), c), grad CE(net; A(S_c), c)), differentiable w.r.t. syn.

    `real[c]` is class c's real batch, `bounds[c]` its synthetic slice, `seeds[c]` the Siamese
    seed shared by both (None: no augmentation). syn_grads 'vmap' computes the synthetic
    gradients of all classes in one vmapped call (needs equal per-class counts; otherwise the
    loop is used); 'loop' is the straightforward per-class computation."""
    check_choice("syn_grads", syn_grads, SYN_GRADS)
    g_real = real_gradients(net, real, seeds, params, memory_format)
    sizes = {e - s for s, e in bounds}
    xs = [siamese(syn[s:e], params, seeds[c] if seeds is not None else None)
          for c, (s, e) in enumerate(bounds)]
    if syn_grads == "vmap" and len(sizes) == 1:
        named = dict(net.named_parameters())
        buffers = dict(net.named_buffers())
        names = list(named)
        detached = {k: v.detach() for k, v in named.items()}

        def class_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(net, (p, buffers), (x,)), y)

        x_all = torch.stack(xs)  # C x IPC x ch x H x W
        y_all = torch.arange(len(bounds), device=syn.device).view(-1, 1).expand(-1, x_all.shape[1])
        g_syn = vmap(grad(class_loss), in_dims=(None, 0, 0))(detached, x_all, y_all)
        stacked_real = [torch.stack([g[k] for g in g_real]) for k in range(len(names))]
        return match_distance(stacked_real, [g_syn[n] for n in names], metric, lead_dims=1)
    plist = list(net.parameters())
    total = torch.zeros((), device=syn.device)
    for c, x in enumerate(xs):
        loss = F.cross_entropy(net(x.contiguous(memory_format=memory_format)),
                               _ce_labels(len(x), c, x.device))
        g_syn = torch.autograd.grad(loss, plist, create_graph=True)
        total = total + match_distance(g_real[c], g_syn, metric)
    return total


def refresh_batchnorm(net: nn.Module, real: RealBatches, per_class: int, num_classes: int,
                      memory_format: torch.memory_format) -> None:
    """DC's BN handling: one train-mode forward of `per_class` real images per class (updating
    the running statistics), then BN layers in eval mode for matching."""
    x = torch.cat(real.all_classes(per_class))
    net.train()
    with torch.no_grad():
        net(x.contiguous(memory_format=memory_format))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_inner(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                epochs: int, batch: int, params: DSAParams | None, g_shuffle: torch.Generator,
                g_aug: torch.Generator, memory_format: torch.memory_format) -> None:
    """Train the net for `epochs` epochs on the (detached) synthetic set: shuffled batches of
    min(batch, N), per-sample DSA when on, mean CE, train mode."""
    net.train()
    n = len(x)
    size = micro_batch_size(net, x.device)  # cache-sized slices on CPU, the same gradient
    for _ in range(epochs):
        order = torch.randperm(n, generator=g_shuffle).to(x.device)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            xb = x[idx]
            if params is not None:
                xb = dsa(xb, params, generator=g_aug)
            xb, yb = xb.contiguous(memory_format=memory_format), y[idx]
            opt.zero_grad(set_to_none=True)
            sliced_backward(lambda sl, xb=xb, yb=yb: F.cross_entropy(net(xb[sl]), yb[sl]),
                            len(idx), size)
            opt.step()


def gradient_matching(ctx: DistillContext, cfg: Any, method: str,
                      params: DSAParams | None) -> ImageSet:
    """DC (params None) or DSA (Siamese DSA with `params`) on ctx.data; see dc.py for cfg."""
    data, device = ctx.data, ctx.device
    outer, inner = get_loops(ctx.ipc, cfg.loops)
    C = data.num_classes
    x0, labels = init_synthetic(data.train_images, data.train_labels, C, ctx.ipc, cfg.init,
                                cfg.ipc_policy, generator(method, "init", ctx.seed))
    bounds = class_bounds(labels, C)
    syn = x0.to(device).requires_grad_(True)
    y_syn = labels.to(device)
    opt_img = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
    real = RealBatches(data.train_images, data.train_labels, C,
                       generator(method, "real-batches", ctx.seed), device)
    g_shuffle = generator(method, "inner-shuffle", ctx.seed)
    g_aug = generator(method, "inner-dsa", ctx.seed)
    mf = memory_format_for(device, cfg.channels_last)
    progress = Progress(cfg.iterations, f"{method} distill", every_s=cfg.log_every)
    losses: list[float] = []
    ckpt = ctx.checkpointer(method, cfg).track(syn=syn, opt_img=opt_img, real_rng=real.g,
                                               shuffle_rng=g_shuffle, aug_rng=g_aug, losses=losses)
    start = ckpt.resume()
    progress.step(start)
    for it in range(start, cfg.iterations):
        net = fresh_net(ctx, method, it, mf)
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net, momentum=cfg.momentum_net)
        bn = has_batchnorm(net)
        it_loss = 0.0
        for ol in range(outer):
            if bn:
                refresh_batchnorm(net, real, cfg.bn_batch_per_class, C, mf)
            batches = real.all_classes(cfg.batch_real)
            seeds = ([siamese_seed_for(ctx.seed, it * outer + ol, c) for c in range(C)]
                     if params is not None else None)
            loss = gm_loss(net, syn, bounds, batches, seeds, params, cfg.dis_metric,
                           cfg.syn_grads, mf)
            it_loss += check_finite(loss, method, it, f" (outer loop {ol})")
            # only the pixels need the gradient (loss.backward() would also fill the net's .grad
            # with unused second-order terms)
            (syn.grad,) = torch.autograd.grad(loss, [syn])
            opt_img.step()
            if ol == outer - 1:
                break
            train_inner(net, opt_net, syn.detach().clone(), y_syn, inner, cfg.batch_train, params,
                        g_shuffle, g_aug, mf)
        losses.append(it_loss / (C * outer))
        progress.step(loss=losses[-1])
        ckpt.step(it + 1)
    ckpt.finish()
    images = syn.detach().cpu().float()
    return ImageSet(
        images=images, labels=labels, num_classes=C,
        meta=ctx.base_meta(
            method, ipc_policy=cfg.ipc_policy, init=cfg.init, iterations=cfg.iterations,
            outer_loop=outer, inner_loop=inner, dis_metric=cfg.dis_metric,
            dsa_strategy=params.strategy if params is not None else "none",
            final_loss=losses[-1] if losses else None,
            first_loss=losses[0] if losses else None,
            loss_trace=loss_trace(losses),
            per_class_counts=torch.bincount(labels, minlength=C).tolist()),
    )
