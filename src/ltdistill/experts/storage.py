"""Expert trajectories on disk: one file per expert holding a float32 [E+1, P] snapshot tensor
(row e = the flat parameters after e epochs) plus JSON metadata, written with io.save_tensors and
read with torch.load(weights_only=True, mmap=True) so only the snapshots actually used are paged in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import _digest, save_tensors

FORMAT = "ltdistill-expert"
VERSION = 1
#: metadata every expert file records
REQUIRED_META = ("dataset", "imbalance_factor", "kind", "index", "seed", "config_hash",
                 "preprocessing_digest", "test_top1", "num_params", "classifier_start", "epochs")


class ExpertError(ValueError):
    """A missing, corrupted or incompatible expert file."""


def save_expert(path: str | Path, snapshots: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write [E+1, P] snapshots (stored as float32) and `meta` atomically, with a content hash."""
    if snapshots.dim() != 2 or snapshots.shape[0] < 2:
        raise ExpertError(f"snapshots must be [E+1, P] with E >= 1, got {tuple(snapshots.shape)}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ExpertError(f"expert metadata lacks {missing}")
    if int(meta["num_params"]) != snapshots.shape[1] or int(meta["epochs"]) != snapshots.shape[0] - 1:
        raise ExpertError("expert metadata disagrees with the snapshot shape")
    save_tensors(path, {"snapshots": snapshots.detach().float().cpu().contiguous()},
                 {"format": FORMAT, "version": VERSION, **meta})


@dataclass
class Expert:
    """One stored trajectory. `snapshots` may be memory-mapped: index rows, do not modify it."""

    path: Path
    snapshots: torch.Tensor  # [E+1, P] float32
    meta: dict[str, Any]

    @property
    def epochs(self) -> int:
        return self.snapshots.shape[0] - 1

    @property
    def num_params(self) -> int:
        return self.snapshots.shape[1]

    def snapshot(self, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """A private float32 copy of snapshot `epoch` (0 = initialisation) on `device`."""
        if not 0 <= epoch <= self.epochs:
            raise ExpertError(f"expert {self.path} has snapshots 0..{self.epochs}, asked for {epoch}")
        return self.snapshots[epoch].to(device, torch.float32, copy=True)

    def final(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.snapshot(self.epochs, device)


def load_expert(path: str | Path, verify: bool = True, mmap: bool = True) -> Expert:
    """Load without executing pickled code; `verify` recomputes the content hash (reads the whole
    file once), so a tampered or truncated file raises ExpertError."""
    path = Path(path)
    if not path.exists():
        raise ExpertError(f"expert {path} does not exist; run the train_expert rule that makes it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        header = json.loads(payload.pop("header_json"))
        snapshots = payload["snapshots"]
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged file
        raise ExpertError(f"expert {path} is unreadable or corrupted ({type(exc).__name__}: {exc});"
                          " delete it and rerun train_expert") from exc
    meta = header.get("meta", {})
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExpertError(f"{path} is not an expert file of format {FORMAT} v{VERSION}")
    if verify and _digest({"snapshots": snapshots}) != header.get("sha256"):
        raise ExpertError(f"expert {path} failed its integrity check (content hash differs from "
                          "the one recorded at write time); delete it and rerun train_expert")
    if snapshots.dtype != torch.float32 or snapshots.dim() != 2:
        raise ExpertError(f"expert {path} holds {snapshots.dtype} {tuple(snapshots.shape)}, "
                          "expected float32 [E+1, P]")
    return Expert(path, snapshots, meta)


def flatten_parameters(model: torch.nn.Module) -> torch.Tensor:
    """The flat parameter vector in `parameters()` order (logical layout), float32 on the CPU."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])


@torch.no_grad()
def load_flat_parameters(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters in place (keeps their memory format)."""
    total = sum(p.numel() for p in model.parameters())
    if flat.numel() != total:
        raise ExpertError(f"flat vector has {flat.numel()} values, the model {total}")
    offset = 0
    for p in model.parameters():
        p.copy_(flat[offset:offset + p.numel()].view(p.shape))
        offset += p.numel()


def expert_files(path: str | Path) -> list[Path]:
    """The expert files at `path`: the file itself, or the expert_{i}.pt files of a group
    directory (a train_expert job's output, named {first}-{last}) in index order."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("expert_*.pt"), key=lambda f: int(f.stem.split("_")[1]))
    first, sep, last = path.name.partition("-")
    if sep and first.isdigit() and last.isdigit():
        want = [f"expert_{i}.pt" for i in range(int(first), int(last) + 1)]
        if [f.name for f in files] != want:
            raise ExpertError(f"expert directory {path} should hold {want[0]}..{want[-1]}, found "
                              f"{[f.name for f in files]}; delete it and rerun train_expert")
    if not files:
        raise ExpertError(f"expert directory {path} holds no expert_*.pt files")
    return files


class ExpertPool:
    """The experts of one kind, opened lazily (mmap) and verified once at open. Distillation draws
    one expert per iteration uniformly with the run's generator (trajectory_methods.md §0).
    `paths`: expert files or group directories (expanded in order by `expert_files`)."""

    def __init__(self, paths: list[str | Path] | str | Path, verify: bool = True) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        files = [f for p in paths for f in expert_files(p)]
        if not files:
            raise ExpertError("an expert pool needs at least one expert file")
        self.experts = [load_expert(p, verify=verify) for p in files]
        sizes = {e.num_params for e in self.experts}
        kinds = {e.meta["kind"] for e in self.experts}
        if len(sizes) != 1 or len(kinds) != 1:
            raise ExpertError(f"experts disagree on parameter count {sizes} or kind {kinds}")
        self.kind = kinds.pop()
        self.num_params = sizes.pop()
        self.min_epochs = min(e.epochs for e in self.experts)

    def __len__(self) -> int:
        return len(self.experts)

    def __getitem__(self, i: int) -> Expert:
        return self.experts[i]

    def sample(self, g: torch.Generator) -> Expert:
        return self.experts[int(torch.randint(len(self.experts), (1,), generator=g))]

    def check_compatible(self, num_params: int, classifier_start: int, dataset: str | None = None,
                         imbalance_factor: int | None = None, preprocessing_digest: str = "") -> None:
        """Raise when the experts were trained for another network, data or preprocessing."""
        first = self.experts[0].meta
        if self.num_params != num_params or int(first["classifier_start"]) != classifier_start:
            raise ExpertError(f"{self.kind} experts have {self.num_params} parameters (classifier at "
                              f"{first['classifier_start']}) but the distillation network has "
                              f"{num_params} ({classifier_start}); retrain them for this network")
        for e in self.experts:
            m = e.meta
            if dataset is not None and m["dataset"] != dataset:
                raise ExpertError(f"{e.path} was trained on {m['dataset']}, not {dataset}")
            if imbalance_factor is not None and int(m["imbalance_factor"]) != int(imbalance_factor):
                raise ExpertError(f"{e.path} was trained at IF {m['imbalance_factor']}, "
                                  f"not {imbalance_factor}")
            if preprocessing_digest and m["preprocessing_digest"] \
                    and m["preprocessing_digest"] != preprocessing_digest:
                raise ExpertError(f"{e.path} was trained in preprocessing {m['preprocessing_digest']}"
                                  f" but the distillation data uses {preprocessing_digest}; experts "
                                  "and methods must share one preprocessing (ZCA or not)")
