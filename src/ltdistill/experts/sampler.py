"""Class-aware sampling (DAMED `utils/class_aware_sampler.py`, num_samples_cls = 4): cycle through a
reshuffled class list and emit a few indices of each drawn class, giving class-balanced batches."""

from __future__ import annotations

import torch


class _Cycle:
    """Endless iteration over `items`, reshuffled (with `generator`) every time it is exhausted."""

    def __init__(self, items: torch.Tensor, generator: torch.Generator) -> None:
        self.items = items.clone()
        self.g = generator
        self.pos = len(items)  # the first next() shuffles, as RandomCycleIter does

    def next(self) -> int:
        if self.pos == len(self.items):
            self.items = self.items[torch.randperm(len(self.items), generator=self.g)]
            self.pos = 0
        value = int(self.items[self.pos])
        self.pos += 1
        return value

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"items": self.items.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        items = state["items"]
        if not isinstance(items, torch.Tensor) or items.shape != self.items.shape or \
                not torch.equal(items.sort().values, self.items.sort().values):
            raise ValueError("sampler state does not belong to this set of items")
        self.items, self.pos = items.clone(), int(state["pos"])


class ClassAwareSampler:
    """Emits dataset indices: next class from the class cycle, then `samples_per_class` indices from
    that class's own cycle; repeat. One epoch is max_c n_c * C samples (the reference length).

    The cycles persist across epochs, so every image of a class is used before any is repeated."""

    def __init__(self, labels: torch.Tensor, num_classes: int, samples_per_class: int,
                 generator: torch.Generator) -> None:
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        labels = labels.detach().cpu().long()
        self.per_class = [torch.nonzero(labels == c, as_tuple=False).flatten()
                          for c in range(num_classes)]
        empty = [c for c, idx in enumerate(self.per_class) if len(idx) == 0]
        if empty:
            raise ValueError(f"class-aware sampling needs every class; classes {empty} are empty")
        self.k = int(samples_per_class)
        self.classes = _Cycle(torch.arange(num_classes), generator)
        self.cycles = [_Cycle(idx, generator) for idx in self.per_class]
        self.epoch_length = max(len(idx) for idx in self.per_class) * num_classes

    def epoch(self) -> torch.Tensor:
        """The indices of one epoch (length max_c n_c * C), in sampling order (int64)."""
        out: list[int] = []
        while len(out) < self.epoch_length:
            cycle = self.cycles[self.classes.next()]
            out.extend(cycle.next() for _ in range(self.k))
        return torch.tensor(out[: self.epoch_length], dtype=torch.long)

    def state_dict(self) -> dict[str, object]:
        """The cycles' orders and positions (the shared generator is checkpointed by its owner)."""
        return {"classes": self.classes.state_dict(),
                "cycles": [c.state_dict() for c in self.cycles]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        cycles = state["cycles"]
        if len(cycles) != len(self.cycles):
            raise ValueError(f"sampler state has {len(cycles)} classes, this sampler "
                             f"{len(self.cycles)}")
        self.classes.load_state_dict(state["classes"])
        for cycle, saved in zip(self.cycles, cycles, strict=True):
            cycle.load_state_dict(saved)
