"""`dc`: Dataset Condensation with Gradient Matching (Zhao, Mopuri, Bilen, ICLR 2021).

Per class, the gradient of CE on a real batch and on the class's synthetic images are matched with
the layer-wise distance, on a fresh random network every outer iteration; between outer loops the
network is trained on the current synthetic set (spec trajectory_methods.md §2; no augmentation)."""

from __future__ import annotations

from dataclasses import dataclass

from ..io import ImageSet
from .base import DistillContext, register_method
from .common import POLICIES
from .gradient_matching import (
    DEFAULT_LOOPS,
    INITS,
    METRICS,
    SYN_GRADS,
    check_choice,
    check_positive,
    gradient_matching,
    normalise_loops,
)


@dataclass(frozen=True)
class DCConfig:
    iterations: int = 1000  # outer iterations, each with a fresh random network
    lr_img: float = 0.1  # SGD on the synthetic pixels
    momentum_img: float = 0.5
    lr_net: float = 0.01  # SGD on the network in the inner loop
    momentum_net: float = 0.0
    batch_real: int = 256  # real images per class per matching step (all n_c when fewer)
    batch_train: int = 256  # inner-loop batch on the synthetic set
    bn_batch_per_class: int = 16  # real images per class for the BN refresh (BN networks only)
    init: str = "noise"  # noise | real
    ipc_policy: str = "duplicate"  # IPC > n_c: inherent | duplicate | noise (real init)
    dis_metric: str = "ours"  # ours (layer-wise) | mse | cos
    # (ipc, outer_loop, inner_loop); other IPCs use the nearest lower entry
    loops: tuple[tuple[int, int, int], ...] = DEFAULT_LOOPS
    # loop | vmap: exact batched synthetic gradients over classes (not faster on CPU here; see
    # benchmarks/bench_matching.py)
    syn_grads: str = "loop"
    channels_last: bool = False  # channels-last tensors on CPU (slower at 1x28x28 width 32 here)
    log_every: float = 10.0  # seconds between progress lines

    def __post_init__(self) -> None:
        object.__setattr__(self, "loops", normalise_loops(self.loops))
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {self.iterations}")
        check_positive(lr_img=self.lr_img, lr_net=self.lr_net, batch_real=self.batch_real,
                       batch_train=self.batch_train, bn_batch_per_class=self.bn_batch_per_class)
        for name in ("momentum_img", "momentum_net"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        check_choice("init", self.init, INITS)
        check_choice("ipc_policy", self.ipc_policy, POLICIES)
        check_choice("dis_metric", self.dis_metric, METRICS)
        check_choice("syn_grads", self.syn_grads, SYN_GRADS)


@register_method("dc", DCConfig)
def dc(ctx: DistillContext, cfg: DCConfig) -> ImageSet:
    return gradient_matching(ctx, cfg, "dc", None)
