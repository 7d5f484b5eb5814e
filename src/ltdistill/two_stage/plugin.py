"""The two-stage classifier (two_stage.md §6-7, §9): stage 1 routes an image down the group
tree (one classifier per internal node; with two groups just the group classifier), stage 2
picks the class with the intra-group classifier of the reached leaf. Each stage is trained on
its own data source (the full LT split or a distilled set); the two stages may see the test
images in different preprocessing spaces (e.g. a ZCA method's intra classifiers).

Routing: `hard` = argmax at every node, then argmax of the leaf classifier (the paper);
`soft` = argmax_y of p(y | x) = prod over the path of p(child | x) * p(y | x, leaf)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluation.metrics import json_ready, metrics_from_predictions
from ..evaluation.train import TrainRecipe, predict_logits, train_classifier
from ..io import load_tensors, save_tensors
from ..models import ModelSpec, build_model
from ..seeding import derive_seed
from .config import ClassifierConfig
from .grouping import GroupNode, group_of_class

log = logging.getLogger("ltdistill.two_stage.plugin")


# --------------------------------------------------------------------------- label maps

def to_local(labels: torch.Tensor, classes: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Global class labels -> indices within `classes` (labels outside `classes` raise)."""
    lut = torch.full((int(max(max(classes), int(labels.max()) if labels.numel() else 0)) + 1,), -1,
                     dtype=torch.long)
    lut[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    local = lut[labels.long()]
    if labels.numel() and int(local.min()) < 0:
        raise ValueError(f"labels outside the group {list(classes)}")
    return local


def to_global(local: torch.Tensor, classes: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Within-group indices -> global class labels."""
    return torch.as_tensor(list(classes), dtype=torch.long)[local.long()]


def child_of_class(node: GroupNode, num_classes: int) -> torch.Tensor:
    """For an internal node: the child index of each class it holds (-1 elsewhere)."""
    out = torch.full((num_classes,), -1, dtype=torch.long)
    for j, ch in enumerate(node.children):
        out[list(ch.classes)] = j
    return out


# --------------------------------------------------------------------------- training data

@dataclass
class StageData:
    """The images one stage trains on: global hard labels, optional C-way soft logits and the
    learned lr of a distilled set."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    soft_labels: torch.Tensor | None = None
    learned_lr: float | None = None
    source: str = "original"  # original | distilled

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def node_targets(node: GroupNode, data: StageData, use_soft: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, local labels, soft logits or None) for the classifier of `node`: a leaf
    separates its classes (soft logits restricted to them); an internal node separates its
    children (soft logits of a child = log-sum-exp over its classes, i.e. the child's summed
    probability)."""
    keep = torch.isin(data.labels, torch.as_tensor(list(node.classes)))
    x, y = data.images[keep], data.labels[keep]
    soft = data.soft_labels[keep] if (use_soft and data.soft_labels is not None) else None
    if node.is_leaf:
        local = to_local(y, node.classes)
        if soft is not None:
            soft = soft[:, list(node.classes)]
        return x, local, soft
    local = child_of_class(node, data.num_classes)[y]
    if soft is not None:
        soft = torch.stack([torch.logsumexp(soft[:, list(ch.classes)], dim=1)
                            for ch in node.children], dim=1)
    return x, local, soft


def stage_recipe(cfg: ClassifierConfig, source: str, dsa_strategy: str, soft: bool) -> TrainRecipe:
    return TrainRecipe(
        epochs=cfg.epochs(source),
        batch_size=cfg.soft_label_batch_size if soft else cfg.batch_size,
        default_lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        decay_factor=cfg.decay_factor, augment=cfg.augment, dsa_strategy=dsa_strategy,
        use_soft_labels=soft)


def stage_lr(cfg: ClassifierConfig, data: StageData) -> tuple[float, str]:
    if cfg.use_learned_lr and data.source == "distilled" and data.learned_lr is not None:
        return float(data.learned_lr), "learned"
    return float(cfg.lr), "config"


def train_stage(tree: GroupNode, stage: str, data: StageData, cfg: ClassifierConfig,
                spec: ModelSpec, dsa_strategy: str, seed: int, device: torch.device | str
                ) -> tuple[dict[str, nn.Module | None], dict[str, Any]]:
    """Train every classifier of one stage: stage 'group' = the internal nodes, stage 'intra' =
    the leaves (a one-class leaf needs none: None). `spec` gives the architecture and input
    shape; the number of outputs is the node's. Returns (models by node path, training info)."""
    if stage not in ("group", "intra"):
        raise ValueError(f"stage must be 'group' or 'intra', got '{stage}'")
    nodes = tree.internal() if stage == "group" else tree.leaf_paths()
    lr, lr_source = stage_lr(cfg, data)
    models: dict[str, nn.Module | None] = {}
    info: dict[str, Any] = {"lr": lr, "lr_source": lr_source, "source": data.source,
                            "train_images": len(data), "nodes": {}}
    for path, node in nodes:
        outputs = len(node.children) if stage == "group" else len(node.classes)
        if outputs < 2:
            models[path] = None
            info["nodes"][path] = {"classes": list(node.classes), "images": 0, "spec": None}
            continue
        x, y, soft = node_targets(node, data, cfg.use_soft_labels)
        if len(y) == 0:
            raise ValueError(f"no {data.source} training images for the {stage} classifier of "
                             f"classes {list(node.classes)}")
        recipe = stage_recipe(cfg, data.source, dsa_strategy, soft is not None)
        node_seed = derive_seed("two_stage", stage, seed, path)
        node_spec = ModelSpec(cfg.arch, spec.channels, outputs, spec.image_size, spec.width,
                              spec.norm)
        models[path] = train_classifier(node_spec, x, y, recipe=recipe, lr=lr, seed=node_seed,
                                        device=device, soft_labels=soft,
                                        progress_label=f"two-stage {stage} {path}").eval()
        info["nodes"][path] = {
            "classes": list(node.classes), "images": int(len(y)),
            "per_output_images": torch.bincount(y, minlength=outputs).tolist(),
            "soft_labels_used": soft is not None, "epochs": recipe.epochs,
            "batch_size": recipe.batch_size, "seed": node_seed, "spec": asdict(node_spec)}
    return models, info


# --------------------------------------------------------------------------- inference

def route_groups(tree: GroupNode, group_models: dict[str, nn.Module | None],
                 x1: torch.Tensor) -> torch.Tensor:
    """Hard routing down the tree (argmax at every internal node): the leaf (group) index of
    each image, leaves numbered in depth-first order."""
    leaf_index = {p: j for j, (p, _) in enumerate(tree.leaf_paths())}
    at = ["r"] * x1.shape[0]  # the node each image has reached
    for path, _node in tree.internal():  # parents before children
        idx = [i for i, p in enumerate(at) if p == path]
        if not idx:
            continue
        model = group_models.get(path)
        child = (torch.zeros(len(idx), dtype=torch.long) if model is None
                 else predict_logits(model, x1[idx]).argmax(1))
        for i, j in zip(idx, child.tolist(), strict=True):
            at[i] = f"{path}-{j}"
    return torch.as_tensor([leaf_index[p] for p in at], dtype=torch.long)


class TwoStageClassifier:
    """Stage-1 node classifiers (by internal-node path) and stage-2 leaf classifiers (by leaf
    path; None for a one-class leaf) over a group tree. Models map images to logits."""

    def __init__(self, tree: GroupNode, group_models: dict[str, nn.Module | None],
                 intra_models: dict[str, nn.Module | None], num_classes: int) -> None:
        self.tree = tree
        self.num_classes = num_classes
        self.group_models = group_models
        self.intra_models = intra_models
        self.leaves = tree.leaf_paths()
        self.leaf_index = {p: j for j, (p, _) in enumerate(self.leaves)}
        self.group_of_class = torch.as_tensor(group_of_class(tree, num_classes))
        for path, node in tree.internal():
            if group_models.get(path) is None and len(node.children) > 1:
                raise ValueError(f"no stage-1 classifier for node {path}")
        for path, node in self.leaves:
            if intra_models.get(path) is None and len(node.classes) > 1:
                raise ValueError(f"no stage-2 classifier for group {path}")

    @staticmethod
    def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, x)

    def route(self, x1: torch.Tensor) -> torch.Tensor:
        """Stage 1 (f_group): the leaf (group) index of each image."""
        return route_groups(self.tree, self.group_models, x1)

    def _leaf_log_probs(self, x1: torch.Tensor) -> torch.Tensor:
        """log p(leaf | x) (N x L) as the product of the node probabilities along each path."""
        n = x1.shape[0]
        logp = {"r": torch.zeros(n)}
        for path, node in self.tree.internal():
            model = self.group_models.get(path)
            lp = (torch.zeros(n, 1) if model is None
                  else torch.log_softmax(self._logits(model, x1), dim=1))
            for j in range(len(node.children)):
                logp[f"{path}-{j}"] = logp[path] + lp[:, j]
        return torch.stack([logp[p] for p, _ in self.leaves], dim=1)

    def _class_log_probs(self, leaf: int, x2: torch.Tensor) -> torch.Tensor:
        path, node = self.leaves[leaf]
        model = self.intra_models.get(path)
        if model is None:
            return torch.zeros(x2.shape[0], 1)
        return torch.log_softmax(self._logits(model, x2), dim=1)

    def predict(self, x1: torch.Tensor, x2: torch.Tensor, routing: str = "hard"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted classes, stage-1 predicted groups). x1 / x2: the same images in the
        preprocessing of stage 1 / stage 2."""
        if x1.shape[0] != x2.shape[0]:
            raise ValueError("x1 and x2 must hold the same images")
        groups = self.route(x1)
        pred = torch.empty(x1.shape[0], dtype=torch.long)
        if routing == "hard":
            for j, (_, node) in enumerate(self.leaves):
                idx = torch.nonzero(groups == j).flatten()
                if idx.numel():
                    local = self._class_log_probs(j, x2[idx]).argmax(1)
                    pred[idx] = to_global(local, node.classes)
            return pred, groups
        if routing != "soft":
            raise ValueError(f"routing must be 'hard' or 'soft', got '{routing}'")
        leaf_lp = self._leaf_log_probs(x1)
        joint = torch.full((x1.shape[0], self.num_classes), -float("inf"))
        for j, (_, node) in enumerate(self.leaves):
            joint[:, list(node.classes)] = leaf_lp[:, j:j + 1] + self._class_log_probs(j, x2)
        return joint.argmax(1), groups


def two_stage_metrics(clf: TwoStageClassifier, x1: torch.Tensor, x2: torch.Tensor,
                      labels: torch.Tensor, shot_groups: list[str] | None,
                      routing: str = "hard") -> dict[str, Any]:
    """metrics_from_predictions (fractions) plus group_acc = mean(f_group(x) == g(y)), the
    per-group accuracy of stage 1, and the accuracy within correctly routed images."""
    pred, groups = clf.predict(x1, x2, routing)
    out = metrics_from_predictions(labels, pred, clf.num_classes, shot_groups)
    true_g = clf.group_of_class[labels.long()]
    ok = groups == true_g
    out["group_acc"] = float(ok.float().mean()) if len(ok) else float("nan")
    out["group_per_group"] = [float(ok[true_g == j].float().mean()) if bool((true_g == j).any())
                              else float("nan") for j in range(len(clf.leaves))]
    out["acc_given_correct_group"] = (float((pred[ok] == labels[ok]).float().mean())
                                      if bool(ok.any()) else float("nan"))
    out["routing"] = routing
    return json_ready(out)


# --------------------------------------------------------------------------- persistence

def save_stage(path: str | Path, models: dict[str, nn.Module | None],
               specs: dict[str, dict[str, Any] | None], meta: dict[str, Any]) -> None:
    """All classifiers of one stage in one tensors file: keys '<node path>:<param>', each
    model's ModelSpec (as a dict; None for a trivial node) in the metadata (no pickled code)."""
    tensors: dict[str, torch.Tensor] = {}
    for node, model in models.items():
        if model is not None:
            for key, value in model.state_dict().items():
                tensors[f"{node}:{key}"] = value.detach().cpu()
    save_tensors(path, tensors, {**meta, "specs": {n: specs.get(n) for n in models}})


def load_stage(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[dict[str, nn.Module | None], dict[str, Any]]:
    tensors, meta = load_tensors(path)
    models: dict[str, nn.Module | None] = {}
    for node, spec in meta["specs"].items():
        if spec is None:
            models[node] = None
            continue
        model = build_model(ModelSpec(**spec), seed=0)
        state = {k.split(":", 1)[1]: v for k, v in tensors.items() if k.split(":", 1)[0] == node}
        model.load_state_dict(state)
        models[node] = model.to(device).eval()
    return models, meta
