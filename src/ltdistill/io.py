"""The one on-disk format for image sets: tensors plus JSON metadata in a single torch file,
loaded with weights_only=True (no pickled code runs) and checked against a recorded hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

FORMAT_VERSION = 1


class ImageSetError(ValueError):
    """A missing, corrupted or inconsistent image-set file."""


@dataclass
class ImageSet:
    """What every method returns and evaluation consumes.

    images: N x C x H x W float32 in the preprocessing space recorded in meta["preprocessing"].
    labels: (N,) int64 hard labels in [0, num_classes).
    soft_labels: optional N x num_classes label logits (soft cross-entropy targets).
    learned_lr: optional learned student learning rate (trajectory methods).
    meta: method, seed, ipc, ipc_policy, per_class_counts, preprocessing, dataset, ...
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    soft_labels: torch.Tensor | None = None
    learned_lr: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.images.dim() != 4:
            raise ImageSetError(f"images must be N x C x H x W, got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise ImageSetError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ImageSetError(f"labels must lie in [0, {self.num_classes})")
        if self.soft_labels is not None and self.soft_labels.shape != (n, self.num_classes):
            raise ImageSetError(
                f"soft_labels must have shape ({n}, {self.num_classes}), "
                f"got {tuple(self.soft_labels.shape)}"
            )
        if self.learned_lr is not None and not (self.learned_lr > 0):
            raise ImageSetError(f"learned_lr must be positive, got {self.learned_lr}")

    @property
    def failed(self) -> bool:
        """A failure record: the method diverged or could not run (meta "failure" says why)."""
        return self.meta.get("status") == "failed"

    @property
    def failure_reason(self) -> str | None:
        return (self.meta.get("failure") or {}).get("reason") if self.failed else None

    @property
    def per_class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of one tensor's shape, dtype and bytes (checkpoint fingerprints)."""
    return _digest({"t": t})


def save_image_set(path: str | Path, image_set: ImageSet) -> None:
    """Write atomically; a crash never leaves a file that looks complete."""
    image_set.validate()
    tensors = {
        "images": image_set.images.detach().cpu().float().contiguous(),
        "labels": image_set.labels.detach().cpu().long().contiguous(),
    }
    if image_set.soft_labels is not None:
        tensors["soft_labels"] = image_set.soft_labels.detach().cpu().float().contiguous()
    header = {
        "format_version": FORMAT_VERSION,
        "num_classes": image_set.num_classes,
        "learned_lr": image_set.learned_lr,
        "sha256": _digest(tensors),
        "meta": image_set.meta,
    }
    payload = dict(tensors)
    payload["header_json"] = json.dumps(header, default=str)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def failure_image_set(num_classes: int, shape: tuple[int, int, int], kind: str, reason: str,
                      meta: dict[str, Any]) -> ImageSet:
    """The record a method leaves when it diverges or cannot run: no images, status "failed" and
    the reason, in the same file format so the DAG continues and every consumer can tell."""
    return ImageSet(images=torch.zeros(0, *shape), labels=torch.zeros(0, dtype=torch.long),
                    num_classes=num_classes,
                    meta={**meta, "status": "failed", "failure": {"kind": kind, "reason": reason}})


def load_image_set(path: str | Path) -> ImageSet:
    path = Path(path)
    if not path.exists():
        raise ImageSetError(f"image set {path} does not exist; run the distill rule that makes it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(payload["header_json"])
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged file
        raise ImageSetError(
            f"image set {path} is unreadable or corrupted ({type(exc).__name__}: {exc}); "
            "delete it and rerun the distill rule"
        ) from exc
    if header.get("format_version") != FORMAT_VERSION:
        raise ImageSetError(f"image set {path} has format {header.get('format_version')}, "
                            f"expected {FORMAT_VERSION}")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if _digest(tensors) != header["sha256"]:
        raise ImageSetError(
            f"image set {path} failed its integrity check (content hash differs from the one "
            "recorded at write time); delete it and rerun the distill rule"
        )
    return ImageSet(
        images=tensors["images"],
        labels=tensors["labels"],
        soft_labels=tensors.get("soft_labels"),
        num_classes=int(header["num_classes"]),
        learned_lr=header["learned_lr"],
        meta=header["meta"],
    )


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Generic artifact (model weights, dataset cache): tensors + JSON meta + integrity hash."""
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"sha256": _digest(payload), "meta": meta or {}}
    payload["header_json"] = json.dumps(header, default=str)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_tensors(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist; run the rule that produces it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(payload.pop("header_json"))
    except Exception as exc:  # noqa: BLE001
        raise ImageSetError(f"artifact {path} is unreadable or corrupted ({exc}); delete it and "
                            "rerun the rule that produces it") from exc
    if verify and _digest(payload) != header["sha256"]:
        raise ImageSetError(f"artifact {path} failed its integrity check; delete it and rerun "
                            "the rule that produces it")
    return payload, header["meta"]
