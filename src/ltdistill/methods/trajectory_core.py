"""Shared machinery of the trajectory-matching methods (mtt, datm, damed; trajectory_methods.md §0,
§4-§6, §8): the flat-parameter functional student, the exact unrolled and the TESLA constant-memory
matching gradients, the start-epoch schedule, inner losses, presets and initialisation."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..allocator import release_free_memory
from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..data.augment import DSAParams, dsa
from ..evaluation.train import soft_cross_entropy
from ..experts.storage import ExpertPool
from ..io import ImageSet
from ..models import ModelSpec, build_model, classifier_start
from ..models.native import first_order
from ..progress import Progress
from ..seeding import generator
from .base import DistillContext
from .common import class_slices, fill_class

log = logging.getLogger("ltdistill.methods.trajectory")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> scalar


# --- the functional student -------------------------------------------------------------------

class FlatNet:
    """f(x; theta) for one flat parameter vector theta in `parameters()` order (models §1.2).
    The module is only a template: its own parameters are never used or trained."""

    def __init__(self, spec: ModelSpec, device: torch.device | str) -> None:
        self.module = build_model(spec, seed=0).to(device)
        self.module.requires_grad_(False)
        self.module.train()  # the student trains in train mode, as in the reference
        named = list(self.module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)
        self.classifier_start = classifier_start(self.module)

    @contextmanager
    def keeping_less(self) -> Iterator[None]:
        """Within: a ConvNet student runs its blocks fused (`models/fused_block.py`), so that a
        kept unroll graph holds a third of the memory per step, for 4-8% more time at width 128.
        The exact unrolls use it; TESLA keeps one step's graph at a time and the stock modules
        (5-10% faster at width 32)."""
        before = getattr(self.module, "fused_blocks", None)
        if before is None:  # not a ConvNet
            yield
            return
        self.module.fused_blocks = True
        try:
            yield
        finally:
            self.module.fused_blocks = before

    def params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels, strict=True):
            out[name] = flat[offset:offset + n].view(shape)
            offset += n
        return out

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.params(flat), (x,))

    def call_split(self, frozen: torch.Tensor, free: torch.Tensor, start: int,
                   x: torch.Tensor) -> torch.Tensor:
        """f(x; theta) with theta[start : start + len(free)] taken from `free` and the rest from
        `frozen`, so that only `free` joins the graph. The split must fall on tensor boundaries."""
        stop = start + free.numel()
        params, offset = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels, strict=True):
            if start <= offset and offset + n <= stop:
                params[name] = free[offset - start:offset - start + n].view(shape)
            elif offset + n <= start or offset >= stop:
                params[name] = frozen[offset:offset + n].view(shape)
            else:
                raise ValueError(f"the moving slice [{start}, {stop}) cuts parameter {name}")
            offset += n
        return functional_call(self.module, params, (x,))

    @torch.no_grad()
    def logits(self, flat: torch.Tensor, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Eval-mode logits without gradients, in chunks."""
        self.module.eval()
        try:
            return torch.cat([self(flat, x[i:i + batch]) for i in range(0, len(x), batch)])
        finally:
            self.module.train()


# --- inner losses -----------------------------------------------------------------------------

def hard_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def soft_ce(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    return soft_cross_entropy(logits, target_logits)


def dam_weights(counts: list[int], first_weight_factor: float = 0.0) -> torch.Tensor:
    """DAMED class prior w_c = (n_c + f) / (sum_k n_k + f); with f = 0 it is n_c / N, summing to 1
    (kept so: the inner-loss scale was tuned with it, trajectory_methods.md §8.2)."""
    n = torch.tensor(counts, dtype=torch.float64)
    return ((n + first_weight_factor) / (n.sum() + first_weight_factor)).float()


def dam_loss(weights: torch.Tensor, mode: str = "weighted", la_sign: float = -1.0,
             la_strength: float = 1.0) -> LossFn:
    """The DAM inner loss: -(1/B) sum_i sum_k w_k softmax(y_i)_k log softmax(z_i)_k, the weight
    indexed by the OUTPUT class k. `logit_adjusted` (experimental) first maps z_k to
    z_k + la_sign * la_strength * log w_k (the code's BFLoss path subtracts: sign -1); `none` is
    plain soft CE."""
    if mode == "none":
        return soft_ce
    if mode not in ("weighted", "logit_adjusted"):
        raise ValueError(f"unknown dam mode '{mode}'. Known: weighted, logit_adjusted, none")
    log_w = weights.clamp_min(1e-12).log()

    def loss(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
        if mode == "logit_adjusted":
            logits = logits + la_sign * la_strength * log_w.to(logits)
        return soft_cross_entropy(logits, target_logits, weights.to(logits))

    return loss


# --- minibatches and augmentation of one unroll -----------------------------------------------

def unroll_batches(n: int, batch_syn: int, steps: int, g: torch.Generator) -> list[torch.Tensor]:
    """B_0 ... B_{N-1}: chunks of a random permutation (taken from its end, as the reference pops
    them), a new permutation whenever the chunks run out; batch_syn <= 0 means the whole set."""
    batch = n if batch_syn <= 0 else min(batch_syn, n)
    out: list[torch.Tensor] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(n, generator=g), batch))
        out.append(chunks.pop())
    return out


@dataclass(frozen=True)
class Unroll:
    """Everything random about one unroll, fixed up front so TESLA's second pass and tests see the
    same batches and augmentations: batch indices per step and the DSA generator keys."""

    batches: list[torch.Tensor]
    aug_keys: tuple
    dsa: DSAParams | None

    def augment(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self.dsa is None:
            return x
        return dsa(x, self.dsa, generator=generator("traj-dsa", *self.aug_keys, step))


# --- the matching gradients -------------------------------------------------------------------

@dataclass
class Synthetic:
    """The optimised tensors: images X, targets (hard labels or learnable logits) and alpha."""

    images: torch.Tensor  # leaf, requires grad
    targets: torch.Tensor  # int64 labels, or a float leaf of label logits
    alpha: torch.Tensor  # 0-d leaf, the student lr

    def leaves(self) -> list[torch.Tensor]:
        out = [self.images, self.alpha]
        if self.targets.is_floating_point() and self.targets.requires_grad:
            out.append(self.targets)
        return out


@dataclass(frozen=True)
class MatchSpec:
    """One matching problem: the inner loss, the matched sub-vector `match` (a slice of theta), and
    `move` (a slice of theta allowed to move; gradients outside it are zeroed), e.g. DAMED phase 2
    moves and matches only the classifier."""

    loss_fn: LossFn
    match: slice | None = None  # None = the whole vector
    move: slice | None = None

    @property
    def matched(self) -> slice:
        return self.match if self.match is not None else slice(None)


def _grad(net: FlatNet, theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor, spec: MatchSpec,
          create_graph: bool) -> torch.Tensor:
    """d loss(net(theta, x), t) / d theta; with create_graph=False (TESLA's and the segmented
    unroll's first pass) the native first-order block kernels may run."""
    if create_graph:
        return _grad_of(net, theta, x, t, spec, True)
    with first_order():
        return _grad_of(net, theta, x, t, spec, False)


def _grad_of(net: FlatNet, theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
             spec: MatchSpec, create_graph: bool) -> torch.Tensor:
    if spec.move is None:
        return torch.autograd.grad(spec.loss_fn(net(theta, x), t), theta,
                                   create_graph=create_graph)[0]
    # Only theta[move] moves: the rest is detached, so autograd neither computes its gradient nor,
    # when x needs none, records the frozen part of the forward pass (DAMED phase 2: the backbone).
    start, stop, _ = spec.move.indices(theta.numel())
    free = theta[start:stop]
    out = net.call_split(theta.detach(), free, start, x)
    g = torch.autograd.grad(spec.loss_fn(out, t), free, create_graph=create_graph)[0]
    return torch.cat([g.new_zeros(start), g, g.new_zeros(theta.numel() - stop)])


def _distance(theta0: torch.Tensor, target: torch.Tensor, sl: slice) -> torch.Tensor:
    d = (theta0[sl] - target[sl]).pow(2).sum()
    if not d > 0:
        raise ValueError("the expert start and target snapshots coincide on the matched parameters;"
                         " the matching loss is undefined (check expert_epochs and the experts)")
    return d


def exact_match(net: FlatNet, syn: Synthetic, theta0: torch.Tensor, target: torch.Tensor,
                unroll: Unroll, spec: MatchSpec) -> torch.Tensor:
    """MTT loss with the graph kept through the whole unroll:
    ||theta_N - target||^2 / ||theta_0 - target||^2 on spec.match. Returns the loss (with graph)."""
    theta = theta0.detach().clone().requires_grad_(True)
    with net.keeping_less():
        for i, idx in enumerate(unroll.batches):
            x = unroll.augment(syn.images[idx], i)
            g = _grad(net, theta, x, syn.targets[idx], spec, create_graph=True)
            theta = theta - syn.alpha * g
    sl = spec.matched
    return (theta[sl] - target[sl]).pow(2).sum() / _distance(theta0, target, sl)


def check_exact_segment(value: int) -> None:
    """Config check shared by mtt, datm and damed: `exact_segment` is 0 (the whole unroll) or the
    number of unroll steps whose graph is alive at once (`segmented_match`)."""
    if value < 0:
        raise ValueError(f"exact_segment must be >= 0 (0 = the whole unroll), got {value}")


def segmented_match(net: FlatNet, syn: Synthetic, theta0: torch.Tensor, target: torch.Tensor,
                    unroll: Unroll, spec: MatchSpec, segment: int, weight: float = 1.0,
                    gate: float | None = None) -> tuple[float, bool]:
    """The exact MTT gradient with the graph of at most `segment` steps alive at once (gradient
    checkpointing over the unroll). Pass 1 runs the first steps without a graph and keeps theta
    at every segment start (N / segment parameter vectors, a few MB). Then, last segment first,
    each segment is re-run with its graph from its stored start theta_s and back-propagated:
    the last one from the loss, the others from the adjoint v = dL/dtheta_e that the later
    segment left on its start vector, accumulating weight * dL/d(X, labels, alpha) into .grad.
    The same gradient as `exact_match` (float summation order aside); peak memory is a
    segment's graph instead of the whole unroll's, for (N - segment) extra gradient steps
    without a graph (~1/3 of a step with one). Returns (loss, accumulated), gated like
    `match_step`."""
    n = len(unroll.batches)
    if segment < 1:
        raise ValueError(f"exact_segment must be >= 1 (0 = no segments), got {segment}")
    starts = list(range(0, n, segment))
    a = float(syn.alpha.detach())
    images, targets = syn.images.detach(), syn.targets.detach()
    kept = [theta0.detach()]
    theta = theta0.detach()
    for i in range(starts[-1]):
        x = unroll.augment(images[unroll.batches[i]], i)
        g = _grad(net, theta.requires_grad_(True), x, targets[unroll.batches[i]], spec,
                  create_graph=False)
        theta = theta.detach() - a * g
        if (i + 1) % segment == 0:
            kept.append(theta)
    sl = spec.matched
    loss = float("nan")
    adjoint = None
    for k in reversed(range(len(starts))):
        start = kept[k].clone().requires_grad_(True)
        theta = start
        with net.keeping_less():
            for i in range(starts[k], min(starts[k] + segment, n)):
                idx = unroll.batches[i]
                x = unroll.augment(syn.images[idx], i)
                theta = theta - syn.alpha * _grad(net, theta, x, syn.targets[idx], spec,
                                                  create_graph=True)
        inputs = syn.leaves() + ([start] if k > 0 else [])
        if adjoint is None:
            loss_t = (theta[sl] - target[sl]).pow(2).sum() / _distance(theta0, target, sl)
            loss = float(loss_t.detach())
            if gate is not None and not loss <= gate:
                return loss, False
            torch.autograd.backward(weight * loss_t, inputs=inputs)
        else:
            torch.autograd.backward(theta, grad_tensors=adjoint, inputs=inputs)
        if k > 0:
            adjoint = start.grad
        del theta, start
        release_free_memory()  # the freed segment graph, before the next is built
    return loss, True


def tesla_forward(net: FlatNet, syn: Synthetic, theta0: torch.Tensor, target: torch.Tensor,
                  unroll: Unroll, spec: MatchSpec) -> tuple[float, torch.Tensor, torch.Tensor]:
    """TESLA pass 1 without a graph: theta_{i+1} = theta_i - alpha g_i. Returns (loss, G = sum g_i,
    theta_N - target restricted to spec.match)."""
    a = float(syn.alpha.detach())
    theta = theta0.detach().clone()
    total = torch.zeros_like(theta)
    images, targets = syn.images.detach(), syn.targets.detach()
    for i, idx in enumerate(unroll.batches):
        x = unroll.augment(images[idx], i)
        g = _grad(net, theta.requires_grad_(True), x, targets[idx], spec, create_graph=False)
        total += g
        theta = theta.detach() - a * g
    sl = spec.matched
    resid = (theta[sl] - target[sl]).detach()
    return float(resid.pow(2).sum() / _distance(theta0, target, sl)), total, resid


def tesla_backward(net: FlatNet, syn: Synthetic, theta0: torch.Tensor, target: torch.Tensor,
                   unroll: Unroll, spec: MatchSpec, total: torch.Tensor, resid: torch.Tensor,
                   weight: float = 1.0) -> None:
    """TESLA pass 2 (trajectory_methods.md §5): accumulate weight * dL/d(X, labels, alpha) into
    .grad. For each step, back-propagate (2/D)(alpha(target - theta_0) + alpha^2 G)^T g_i
    = -(2 alpha / D)(theta_N - target)^T g_i through g_i only, with theta_i constant. theta_i is
    rebuilt step by step from theta_0 (nothing of size N is stored: memory independent of N).
    dL/dalpha = -(2/D) G^T (theta_0 - alpha G - target)."""
    a = float(syn.alpha.detach())
    sl = spec.matched
    dist = _distance(theta0, target, sl)
    coeff = (-2.0 * a / dist) * resid  # on the matched sub-vector
    inputs = [t for t in (syn.images, syn.targets) if t.requires_grad]
    theta = theta0.detach().clone()
    for i, idx in enumerate(unroll.batches):
        th = theta.requires_grad_(True)
        x = unroll.augment(syn.images[idx], i)
        g = _grad(net, th, x, syn.targets[idx], spec, create_graph=True)
        torch.autograd.backward(weight * (coeff * g[sl]).sum(), inputs=inputs)
        theta = theta.detach() - a * g.detach()
    d_alpha = -(2.0 / dist) * (total[sl] * resid).sum()
    syn.alpha.grad = (syn.alpha.grad if syn.alpha.grad is not None
                      else torch.zeros_like(syn.alpha)) + weight * d_alpha


def match_step(net: FlatNet, syn: Synthetic, theta0: torch.Tensor, target: torch.Tensor,
               unroll: Unroll, spec: MatchSpec, tesla: bool, weight: float = 1.0,
               gate: float | None = None, exact_segment: int = 0) -> tuple[float, bool]:
    """Compute one matching loss and, unless it exceeds `gate`, accumulate weight * its gradient
    into syn's leaves. Returns (loss, accumulated). The exact gradient keeps the whole unroll's
    graph, or with `exact_segment` > 0 and shorter than the unroll, `exact_segment` steps of it
    at a time (`segmented_match`)."""
    if not tesla and 0 < exact_segment < len(unroll.batches):
        return segmented_match(net, syn, theta0, target, unroll, spec, exact_segment, weight,
                               gate)
    if tesla:
        loss, total, resid = tesla_forward(net, syn, theta0, target, unroll, spec)
        if gate is not None and not loss <= gate:
            return loss, False
        tesla_backward(net, syn, theta0, target, unroll, spec, total, resid, weight)
        return loss, True
    loss_t = exact_match(net, syn, theta0, target, unroll, spec)
    loss = float(loss_t.detach())
    if gate is not None and not loss <= gate:
        return loss, False
    torch.autograd.backward(weight * loss_t, inputs=syn.leaves())
    return loss, True


# --- the start-epoch schedule -----------------------------------------------------------------

@dataclass(frozen=True)
class StartSchedule:
    """t ~ U{T-, ..., U_it - 1}; with Sequential Generation U_it = min(T+, T + floor((T+ - T) it /
    expansion_end)), else U_it = T+ (DATM §6). `current` None means no Sequential Generation."""

    min_start: int
    max_start: int
    current: int | None = None
    sequential: bool = False
    expansion_end: int = 2000

    def upper(self, it: int) -> int:
        if not self.sequential or self.current is None:
            return self.max_start
        grow = math.floor((self.max_start - self.current) * it / self.expansion_end)
        return min(self.max_start, self.current + grow)

    def validate(self, expert_epochs: int, available: int, name: str) -> None:
        """The range is non-empty from iteration 0 on (defect #3) and t + M fits in the experts."""
        if self.min_start < 0:
            raise ValueError(f"{name}: min start epoch must be >= 0, got {self.min_start}")
        if self.sequential and self.current is not None:
            if not self.min_start < self.current <= self.max_start:
                raise ValueError(
                    f"{name}: Sequential Generation needs min < current <= max start epoch, got "
                    f"{self.min_start} / {self.current} / {self.max_start}: the first draw would "
                    "sample from an empty range (set current_max_start_epoch >= min + 1)")
            if self.expansion_end < 1:
                raise ValueError(f"{name}: expansion_end must be >= 1")
        if not self.max_start > self.min_start:
            raise ValueError(f"{name}: max start epoch {self.max_start} must exceed the min "
                             f"{self.min_start} (t is drawn from min .. max - 1)")
        if self.max_start - 1 + expert_epochs > available:
            raise ValueError(f"{name}: start epochs up to {self.max_start - 1} plus expert_epochs "
                             f"{expert_epochs} need {self.max_start - 1 + expert_epochs} expert epochs"
                             f" but the experts have {available}; train longer experts or lower "
                             "max_start_epoch")

    def draw(self, it: int, g: torch.Generator) -> int:
        upper = self.upper(it)
        if upper <= self.min_start:
            raise ValueError(f"empty start-epoch range [{self.min_start}, {upper}) at iteration {it}")
        return int(torch.randint(self.min_start, upper, (1,), generator=g))


# --- presets (tables live in the method modules, as data) -------------------------------------

def lookup_preset(rows: list[dict[str, Any]], dataset: str, imbalance_factor: int, ipc: int,
                  interpolate_ipc: bool = False) -> tuple[dict[str, Any], str]:
    """The preset row for (dataset, IF, IPC). Rows carry `dataset`, `ipc` and optionally
    `imbalance_factor`. Missing IF: the nearest tabulated IF (ties: lower). Missing IPC: with
    `interpolate_ipc` and two bracketing rows, integers are interpolated linearly (rounded half up)
    and everything else comes from the lower row; otherwise the nearest IPC (ties: lower). No row
    for the dataset: {} (the method defaults). Returns (values, a note saying what was used)."""
    cand = [r for r in rows if r["dataset"] == dataset]
    if not cand:
        return {}, f"no preset rows for {dataset}: method defaults"
    ifs = sorted({r.get("imbalance_factor") for r in cand if r.get("imbalance_factor") is not None})
    chosen_if = None
    if ifs:
        chosen_if = min(ifs, key=lambda v: (abs(v - imbalance_factor), v))
        cand = [r for r in cand if r.get("imbalance_factor") in (None, chosen_if)]
    by_ipc = {r["ipc"]: r for r in cand}
    note = f"{dataset} IF {chosen_if if chosen_if is not None else 'any'}"
    strip = ("dataset", "ipc", "imbalance_factor")
    if ipc in by_ipc:
        return {k: v for k, v in by_ipc[ipc].items() if k not in strip}, f"{note} IPC {ipc}"
    lower = [v for v in by_ipc if v < ipc]
    upper = [v for v in by_ipc if v > ipc]
    if interpolate_ipc and lower and upper:
        lo, hi = by_ipc[max(lower)], by_ipc[min(upper)]
        frac = (ipc - lo["ipc"]) / (hi["ipc"] - lo["ipc"])
        out = {}
        for k, v in lo.items():
            w = hi.get(k)
            if k in strip:
                continue
            if isinstance(v, int) and not isinstance(v, bool) and isinstance(w, int) \
                    and not isinstance(w, bool):
                out[k] = int(math.floor(v + frac * (w - v) + 0.5))
            else:
                out[k] = v
        return out, f"{note} IPC {ipc} interpolated between {lo['ipc']} and {hi['ipc']}"
    nearest = min(by_ipc, key=lambda v: (abs(v - ipc), v))
    return ({k: v for k, v in by_ipc[nearest].items() if k not in strip},
            f"{note} IPC {nearest} (nearest to {ipc})")


def resolve(cfg: Any, defaults: dict[str, Any], presets: dict[str, list[dict[str, Any]]],
            ctx: DistillContext, interpolate_ipc: bool = False) -> tuple[Any, str]:
    """Fill every None field of `cfg`: explicit config > preset row > `defaults`."""
    name = getattr(cfg, "preset", None)
    row, note = {}, "no preset"
    if name not in (None, "none"):
        if name not in presets:
            raise ValueError(f"unknown preset '{name}'. Known presets: {', '.join(presets)}, none")
        row, note = lookup_preset(presets[name], ctx.data.name, ctx.data.split.imbalance_factor,
                                  ctx.ipc, interpolate_ipc)
        note = f"{name}: {note}"
    known = {f.name for f in fields(cfg)}
    unknown = set(row) - known
    if unknown:
        raise ValueError(f"preset {name} sets unknown keys {sorted(unknown)}")
    filled = {}
    for f in fields(cfg):
        if getattr(cfg, f.name) is None:
            filled[f.name] = row.get(f.name, defaults.get(f.name))
    return replace(cfg, **filled), note


# --- initialisation ---------------------------------------------------------------------------

def real_init(ctx: DistillContext, policy: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """IPC random real images per class; IPC > n_c follows `policy` (duplicate | noise)."""
    data = ctx.data
    xs, ys = [], []
    for c, idx in enumerate(class_slices(data.train_labels, data.num_classes)):
        chosen = fill_class(data.train_images[idx], torch.randperm(len(idx), generator=g), ctx.ipc,
                            policy, g)
        xs.append(chosen)
        ys.append(torch.full((len(chosen),), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def correct_init(ctx: DistillContext, net: FlatNet, finals: list[torch.Tensor], policy: str,
                 fallback: bool, g: torch.Generator, chunk: int = 256
                 ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """`samples_predicted_correctly`: per class, scan its real images (random order, chunks of 256)
    with the final snapshot of expert 0 and keep the correctly classified ones up to IPC; with
    `fallback` continue with experts 1, 2, ... (DATM), without it stop (DAMED). Short classes follow
    `policy` over the found images; a class with none gets N(0, 1) noise. Also returns, per class,
    how many real images were found."""
    data = ctx.data
    dev = ctx.device
    xs, ys, found = [], [], []
    for c, idx in enumerate(class_slices(data.train_labels, data.num_classes)):
        images = data.train_images[idx]
        order = torch.randperm(len(idx), generator=g)
        picked: list[int] = []
        for theta in finals if fallback else finals[:1]:
            taken = set(picked)
            rest = [i for i in order.tolist() if i not in taken]
            for s in range(0, len(rest), chunk):
                if len(picked) >= ctx.ipc:
                    break
                part = torch.tensor(rest[s:s + chunk], dtype=torch.long)
                pred = net.logits(theta, images[part].to(dev)).argmax(1).cpu()
                picked += part[pred == c].tolist()[: ctx.ipc - len(picked)]
            if len(picked) >= ctx.ipc:
                break
        found.append(len(picked))
        if picked:
            chosen = fill_class(images, torch.tensor(picked, dtype=torch.long), ctx.ipc, policy, g)
        else:
            chosen = torch.randn((ctx.ipc, *images.shape[1:]), generator=g)
        xs.append(chosen)
        ys.append(torch.full((len(chosen),), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys), found


def label_init(net: FlatNet, images: torch.Tensor, labels: torch.Tensor,
               finals: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Soft-label logits. `correct`: per image, the mean logits of the experts (final snapshots)
    that classify it correctly, 0 (uniform) if none does. `one`: the logits of expert 0."""
    if mode == "one":
        return net.logits(finals[0], images).float()
    total = torch.zeros(len(images), net.module.classifier.out_features, device=images.device)
    hits = torch.zeros(len(images), 1, device=images.device)
    for theta in finals:
        out = net.logits(theta, images)
        ok = (out.argmax(1) == labels).float().unsqueeze(1)
        total += out * ok
        hits += ok
    return (total / hits.clamp_min(1)).float()


# --- the optimisation loop helpers ------------------------------------------------------------

def make_synthetic(images: torch.Tensor, targets: torch.Tensor, lr_teacher: float,
                   learn_labels: bool, device: torch.device) -> Synthetic:
    x = images.detach().to(device, torch.float32).clone().requires_grad_(True)
    t = targets.detach().to(device).clone()
    if learn_labels:
        t = t.float().requires_grad_(True)
    alpha = torch.tensor(float(lr_teacher), device=device, requires_grad=True)
    return Synthetic(x, t, alpha)


def optimisers(syn: Synthetic, lr_img: float, lr_lr: float, momentum_img: float = 0.5,
               momentum_lr: float = 0.5, lr_y: float | None = None,
               momentum_y: float = 0.9) -> list[torch.optim.Optimizer]:
    opts = [torch.optim.SGD([syn.images], lr=lr_img, momentum=momentum_img),
            torch.optim.SGD([syn.alpha], lr=lr_lr, momentum=momentum_lr)]
    if lr_y is not None and syn.targets.requires_grad:
        opts.append(torch.optim.SGD([syn.targets], lr=lr_y, momentum=momentum_y))
    return opts


def check_alpha(syn: Synthetic, it: int) -> None:
    a = float(syn.alpha.detach())
    if not (a > 0 and math.isfinite(a)):
        raise FloatingPointError(f"the learned student lr became {a} at iteration {it}; lower lr_lr")
    if not torch.isfinite(syn.images).all():
        raise FloatingPointError(f"non-finite synthetic pixels at iteration {it}; lower lr_img")


def open_pool(ctx: DistillContext, kind: str, net: FlatNet) -> ExpertPool:
    """The experts of `kind` from ctx.artifacts, checked against the network, data and
    preprocessing of this run."""
    pool = ExpertPool(ctx.artifacts[f"{kind}_experts"])
    pool.check_compatible(net.num_params, net.classifier_start, ctx.data.name,
                          ctx.data.split.imbalance_factor, ctx.data.preprocessing.digest)
    return pool


def pool_meta(pool: ExpertPool) -> dict[str, Any]:
    return {"kind": pool.kind, "count": len(pool), "epochs": pool.min_epochs,
            "config_hash": pool[0].meta.get("config_hash"),
            "test_top1_mean": sum(e.meta["test_top1"] for e in pool.experts) / len(pool)}


def dsa_params(enabled: bool, strategy: str) -> DSAParams | None:
    return DSAParams(strategy=strategy) if enabled else None


class FinalSnapshots(Sequence):
    """The final snapshots of a pool's experts, read (memory-mapped) only when indexed."""

    def __init__(self, pool: ExpertPool, device: torch.device) -> None:
        self.pool, self.device = pool, device

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i):  # noqa: ANN001 - int or slice, as for a list
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.pool[i].final(self.device)


def optimise(syn: Synthetic, opts: list[torch.optim.Optimizer], iterations: int,
             step_fn: Callable[[int], tuple[float, bool]], label: str,
             trace_points: int = 200, ckpt: Checkpointer | None = None) -> dict[str, Any]:
    """The outer loop: zero grads, `step_fn(it)` accumulates gradients and returns (loss, apply),
    then every optimiser steps unless the step was gated. Returns loss statistics for the meta.
    `ckpt` (tracking the caller's random generators) also saves the synthetic tensors, the
    optimisers and the loss history, so a killed job resumes where it stopped."""
    progress = Progress(iterations, label)
    losses: list[float] = []
    skipped_log: list[int] = []
    ckpt = ckpt or disabled_checkpointer()
    ckpt.track(images=syn.images, targets=syn.targets, alpha=syn.alpha, losses=losses,
               skipped=skipped_log, **{f"opt{i}": o for i, o in enumerate(opts)})
    start = ckpt.resume()
    progress.step(start)
    for it in range(start, iterations):
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss, apply = step_fn(it)
        if apply:
            for opt in opts:
                opt.step()
        else:
            skipped_log.append(it)
        check_alpha(syn, it)
        losses.append(loss)
        progress.step(loss=loss, lr=float(syn.alpha.detach()))
        ckpt.step(it + 1)
    ckpt.finish()
    skipped = len(skipped_log)
    every = max(1, math.ceil(iterations / trace_points))
    tenth = max(1, iterations // 10)
    return {"iterations": iterations, "skipped_iterations": skipped,
            "loss_first_tenth": sum(losses[:tenth]) / tenth,
            "loss_last_tenth": sum(losses[-tenth:]) / tenth,
            "loss_trace_every": every, "loss_trace": losses[::every]}


def finish(ctx: DistillContext, method: str, syn: Synthetic, labels: torch.Tensor, soft: bool,
           policy: str, **meta: Any) -> ImageSet:
    images = syn.images.detach().cpu().float()
    labels = labels.detach().cpu().long()
    return ImageSet(
        images=images, labels=labels, num_classes=ctx.data.num_classes,
        soft_labels=syn.targets.detach().cpu().float() if soft else None,
        learned_lr=float(syn.alpha.detach()),
        meta=ctx.base_meta(method, ipc_policy=policy,
                           per_class_counts=torch.bincount(labels, minlength=ctx.data.num_classes)
                           .tolist(), **meta))
