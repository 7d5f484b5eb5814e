"""Grouping analysis of the two-stage paper (two_stage.md §3-5): per-class k-means centroids of
extractor features, the class distance D_ik over all centroid pairs, and the bipartition that
maximises the total cross-group distance (weighted max-cut), exact or heuristic, recursively for
more than two groups. Also the agreement between two partitions (stability check).

Groups are a tree of `GroupNode`s: the root holds every class, an internal node's children
split its classes, the leaves are the groups of the classifier. With two groups the root has two
leaf children. Children are ordered by their smallest class, so class 0 is always in group 0."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..seeding import derive_seed, generator
from .config import KMeansConfig, PartitionConfig

log = logging.getLogger("ltdistill.two_stage.grouping")


# --------------------------------------------------------------------------- k-means

def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n x k), float64, clamped at 0."""
    d = (x * x).sum(1, keepdim=True) + (c * c).sum(1).unsqueeze(0) - 2.0 * x @ c.T
    return d.clamp_min_(0.0)


def _init_centroids(x: torch.Tensor, k: int, init: str, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if init == "random":
        return x[torch.randperm(n, generator=g)[:k]].clone()
    # k-means++: first centre uniform, then each next one with probability proportional to the
    # squared distance to the nearest chosen centre (uniform if every point is already a centre)
    chosen = [int(torch.randint(n, (1,), generator=g))]
    closest = _sqdist(x, x[chosen[0]:chosen[0] + 1]).squeeze(1)
    for _ in range(1, k):
        weights = closest if float(closest.sum()) > 0 else torch.ones_like(closest)
        nxt = int(torch.multinomial(weights, 1, generator=g))
        chosen.append(nxt)
        closest = torch.minimum(closest, _sqdist(x, x[nxt:nxt + 1]).squeeze(1))
    return x[chosen].clone()


def _lloyd(x: torch.Tensor, c: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Lloyd iterations until the assignments stop changing or `max_iter`; an empty cluster is
    moved to the point farthest from its centre (deterministic)."""
    k = c.shape[0]
    prev = None
    for _ in range(max_iter):
        d = _sqdist(x, c)
        assign = d.argmin(1)
        if prev is not None and torch.equal(assign, prev):
            break
        prev = assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new = c.clone()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        if not bool(filled.all()):
            far = d.gather(1, assign.unsqueeze(1)).squeeze(1).argsort(descending=True, stable=True)
            for j, idx in zip(torch.nonzero(~filled).flatten().tolist(), far.tolist(), strict=False):
                new[j] = x[idx]
        c = new
    return c


def kmeans(x: torch.Tensor, k: int, *, restarts: int = 10, max_iter: int = 300,
           init: str = "k-means++", g: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """k-means (minimising the WCSS) on the rows of x: `restarts` seeded initialisations, the
    lowest WCSS wins (the first on ties). Returns (centroids k x D float64, assignment, WCSS).
    With k >= n every point is its own centroid (WCSS 0)."""
    x = x.detach().to(torch.float64)
    n = x.shape[0]
    if n == 0 or k < 1:
        raise ValueError(f"k-means needs points and k >= 1 (n={n}, k={k})")
    if k >= n:
        return x.clone(), torch.arange(n), 0.0
    g = g if g is not None else generator("kmeans", 0)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(max(1, restarts)):
        c = _lloyd(x, _init_centroids(x, k, init, g), max_iter)
        d = _sqdist(x, c)
        assign = d.argmin(1)
        wcss = float(d.gather(1, assign.unsqueeze(1)).sum())
        if best is None or wcss < best[2]:
            best = (c, assign, wcss)
    assert best is not None
    return best


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    cfg: KMeansConfig) -> list[torch.Tensor]:
    """Per-class k-means centroids C_i (M_i x D float64), M_i = min(M, n_i), seeded per class."""
    feats = features.detach().to(torch.float64)
    if cfg.l2_normalise:
        feats = torch.nn.functional.normalize(feats, dim=1)
    out = []
    for c in range(num_classes):
        xc = feats[labels == c]
        if len(xc) == 0:
            raise ValueError(f"class {c} has no images to cluster")
        cent, _, _ = kmeans(xc, cfg.clusters_per_class, restarts=cfg.restarts,
                            max_iter=cfg.max_iter, init=cfg.init,
                            g=generator("two_stage-kmeans", cfg.seed, c))
        out.append(cent)
    return out


# --------------------------------------------------------------------------- class distance

def class_distance(centroids: list[torch.Tensor], chunk: int = 2048) -> torch.Tensor:
    """D_ik = sqrt(sum_j sum_l ||c_ij - c_kl||^2) over all M_i x M_k centroid pairs (C x C,
    float64), from the pairwise squared-distance matrix of all centroids, summed per class block
    (row chunks keep the memory at chunk x sum_i M_i)."""
    allc = torch.cat([c.to(torch.float64) for c in centroids])
    owner = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(centroids)])
    num = len(centroids)
    onehot = torch.nn.functional.one_hot(owner, num).to(torch.float64)
    d2 = torch.zeros(num, num, dtype=torch.float64)
    for start in range(0, len(allc), chunk):
        block = _sqdist(allc[start:start + chunk], allc) @ onehot
        d2.index_add_(0, owner[start:start + chunk], block)
    d2 = 0.5 * (d2 + d2.T)  # exact symmetry
    return d2.clamp_min(0.0).sqrt()


# --------------------------------------------------------------------------- max-cut solvers

def cut_value(D: np.ndarray | torch.Tensor, g1: Any) -> float:
    """sum_{i in G1} sum_{k not in G1} D_ik."""
    D = np.asarray(D, dtype=np.float64)
    mask = np.zeros(D.shape[0], dtype=bool)
    mask[list(g1)] = True
    return float(D[np.ix_(mask, ~mask)].sum())


def _zero_diag(D: Any) -> np.ndarray:
    D = np.array(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"D must be square, got shape {D.shape}")
    np.fill_diagonal(D, 0.0)
    return 0.5 * (D + D.T)


def _feasible(c: int, min_size: int) -> None:
    if c < 2 or c < 2 * min_size:
        raise ValueError(f"cannot split {c} classes into two groups of at least {min_size}")


def _tie_tol(value: float) -> float:
    return 1e-9 * max(1.0, abs(value))


def exhaustive_bipartition(D: Any, min_group_size: int = 1,
                           chunk: int = 1 << 16) -> tuple[tuple[int, ...], float]:
    """The maximum cut over all 2^(C-1) - 1 bipartitions with class 0 in G1 (bit masks over
    classes 1..C-1, vectorised in chunks). Ties (within 1e-9 relative) go to the
    lexicographically smallest sorted G1. Returns (G1, cut)."""
    D = _zero_diag(D)
    c = D.shape[0]
    _feasible(c, min_group_size)
    if c > 30:
        raise ValueError(f"exhaustive search over {c} classes is infeasible; use "
                         "spectral_localsearch")
    rowsum = D.sum(1)
    bits = np.arange(c - 1, dtype=np.int64)
    total = (1 << (c - 1)) - 1  # every mask except "all classes in G1"
    best_val, best_masks = -np.inf, []  # best_masks empty until a feasible mask is seen
    for start in range(0, total, chunk):
        m = np.arange(start, min(start + chunk, total), dtype=np.int64)
        s = np.empty((len(m), c))
        s[:, 0] = 1.0
        s[:, 1:] = (m[:, None] >> bits) & 1
        size = s.sum(1)
        # cut = s^T D (1 - s) = s . rowsum - s^T D s
        cut = s @ rowsum - np.einsum("ij,ij->i", s @ D, s)
        cut[(size < min_group_size) | (c - size < min_group_size)] = -np.inf
        top = float(cut.max())
        if top == -np.inf:
            continue
        if not best_masks or top > best_val + _tie_tol(best_val):
            best_val, best_masks = top, []
        if top >= best_val - _tie_tol(best_val):
            best_masks.extend(m[cut >= best_val - _tie_tol(best_val)].tolist())
    groups = [tuple([0] + [i + 1 for i in range(c - 1) if (mask >> i) & 1]) for mask in best_masks]
    g1 = min(groups)
    return g1, cut_value(D, g1)


def _canonical(side: np.ndarray) -> tuple[int, ...]:
    """G1 = the side that holds class 0, as a sorted tuple."""
    members = np.flatnonzero(side == side[0])
    return tuple(int(i) for i in members)


def _local_search(D: np.ndarray, s: np.ndarray, min_size: int, swaps: bool = True) -> np.ndarray:
    """Best-improvement single-class moves while the cut increases. With s in {+-1}^C and D
    zero-diagonal, moving class i changes the cut by gain_i = s_i (D s)_i; after a move, D s is
    updated in O(C). When no move helps and `swaps`, the best exchange of two classes across
    the split (gain_i + gain_k + 2 D_ik) is tried, then single moves again (benchmark
    extension of the spec's single-class moves; it only ever raises the cut)."""
    s = s.astype(np.float64).copy()
    ds = D @ s
    c = len(s)
    tol = 1e-12 * max(1.0, float(np.abs(D).sum()))
    for _ in range(10 * c * c + 10):
        gain = s * ds
        n_pos = int((s > 0).sum())
        side_size = np.where(s > 0, n_pos, c - n_pos)
        single = np.where(side_size - 1 >= min_size, gain, -np.inf)
        i = int(np.argmax(single))
        if single[i] > tol:
            s[i] = -s[i]
            ds += 2.0 * s[i] * D[:, i]
            continue
        if not swaps:
            break
        pos, neg = np.flatnonzero(s > 0), np.flatnonzero(s < 0)
        pair = gain[pos][:, None] + gain[neg][None, :] + 2.0 * D[np.ix_(pos, neg)]
        a, b = np.unravel_index(int(np.argmax(pair)), pair.shape)
        if not pair[a, b] > tol:
            break
        for j in (int(pos[a]), int(neg[b])):
            s[j] = -s[j]
            ds += 2.0 * s[j] * D[:, j]
    return s


def spectral_localsearch(D: Any, min_group_size: int = 1, restarts: int = 10,
                         seed: int = 0) -> tuple[tuple[int, ...], float]:
    """Spectral rounding + local search (two_stage.md §5). Maximising the cut = minimising
    s^T D s, so take the eigenvector of D (zero diagonal) with the smallest eigenvalue, try every
    threshold along its sorted entries (C - 1 splits), keep the best cut and improve it with
    single-class moves; repeat the local search from `restarts` seeded random splits. The best
    cut wins, ties to the lexicographically smallest G1 (class 0 in G1)."""
    D = _zero_diag(D)
    c = D.shape[0]
    _feasible(c, min_group_size)
    _, vecs = np.linalg.eigh(D)
    order = np.argsort(vecs[:, 0], kind="stable")
    starts = []
    best_k, best_cut = None, -np.inf
    for k in range(min_group_size, c - min_group_size + 1):
        val = cut_value(D, order[:k])
        if val > best_cut + _tie_tol(best_cut):
            best_k, best_cut = k, val
    s0 = -np.ones(c)
    s0[order[:best_k]] = 1.0
    starts.append(s0)
    rng = np.random.default_rng(derive_seed("two_stage-partition", seed))
    for _ in range(restarts):
        k = int(rng.integers(min_group_size, c - min_group_size + 1))
        s = -np.ones(c)
        s[rng.permutation(c)[:k]] = 1.0
        starts.append(s)
    best: tuple[float, tuple[int, ...]] | None = None
    for s in starts:
        g1 = _canonical(_local_search(D, s, min_group_size))
        val = cut_value(D, g1)
        if best is None or val > best[0] + _tie_tol(best[0]) or (
                abs(val - best[0]) <= _tie_tol(best[0]) and g1 < best[1]):
            best = (val, g1)
    assert best is not None
    return best[1], best[0]


def bipartition(D: Any, solver: str = "auto", min_group_size: int = 1, restarts: int = 10,
                seed: int = 0, exhaustive_max_classes: int = 20
                ) -> tuple[tuple[int, ...], float, str]:
    """(G1, cut, solver used); `auto` = exhaustive up to `exhaustive_max_classes` classes."""
    c = np.asarray(D).shape[0]
    if solver == "auto":
        solver = "exhaustive" if c <= exhaustive_max_classes else "spectral_localsearch"
    if solver == "exhaustive":
        g1, val = exhaustive_bipartition(D, min_group_size)
    elif solver == "spectral_localsearch":
        g1, val = spectral_localsearch(D, min_group_size, restarts, seed)
    else:
        raise ValueError(f"'{solver}' is not a bipartition solver")
    return g1, val, solver


# --------------------------------------------------------------------------- group tree

@dataclass
class GroupNode:
    """A set of classes; `children` split them (empty for a leaf = one group). `cut` is the
    cross-child distance of an internal node's split."""

    classes: tuple[int, ...]
    children: list[GroupNode] = field(default_factory=list)
    cut: float | None = None
    solver: str | None = None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def leaves(self) -> list[GroupNode]:
        return [self] if self.is_leaf else [lf for ch in self.children for lf in ch.leaves()]

    def walk(self) -> list[tuple[str, GroupNode]]:
        """(path, node) of every node in depth-first pre-order (parents before children); the
        root's path is 'r', its children's 'r-0', 'r-1', theirs 'r-0-0', ... (children are
        ordered by their smallest class)."""
        out: list[tuple[str, GroupNode]] = []

        def visit(node: GroupNode, path: str) -> None:
            out.append((path, node))
            for j, ch in enumerate(node.children):
                visit(ch, f"{path}-{j}")

        visit(self, "r")
        return out

    def internal(self) -> list[tuple[str, GroupNode]]:
        """(path, node) of every internal node (stage 1: they route), parents first."""
        return [(p, n) for p, n in self.walk() if not n.is_leaf]

    def leaf_paths(self) -> list[tuple[str, GroupNode]]:
        """(path, leaf) in group order (stage 2: one intra-group classifier each)."""
        return [(p, n) for p, n in self.walk() if n.is_leaf]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"classes": list(self.classes)}
        if self.children:
            d.update(children=[ch.to_dict() for ch in self.children], cut=self.cut,
                     solver=self.solver)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupNode:
        return cls(tuple(int(c) for c in d["classes"]),
                   [cls.from_dict(ch) for ch in d.get("children", [])], d.get("cut"),
                   d.get("solver"))


def flat_tree(groups: list[list[int]]) -> GroupNode:
    """A root whose children are the given groups (leaves), ordered by their smallest class."""
    groups = sorted((sorted(int(c) for c in g) for g in groups), key=lambda g: g[0])
    classes = tuple(sorted(c for g in groups for c in g))
    if len(set(classes)) != len(classes):
        raise ValueError("groups overlap")
    if len(groups) == 1:
        return GroupNode(classes)
    return GroupNode(classes, [GroupNode(tuple(g)) for g in groups])


def group_of_class(tree: GroupNode, num_classes: int) -> list[int]:
    """Leaf index (depth-first order) of every class."""
    out = [-1] * num_classes
    for j, leaf in enumerate(tree.leaves()):
        for c in leaf.classes:
            out[c] = j
    if min(out) < 0:
        raise ValueError("the group tree does not cover every class")
    return out


def _split_node(node: GroupNode, D: np.ndarray, cfg: PartitionConfig) -> bool:
    """Bisect a leaf in place with the configured two-way solver; False if it cannot be split."""
    cls = list(node.classes)
    if len(cls) < max(2, 2 * cfg.min_group_size):
        return False
    sub = D[np.ix_(cls, cls)]
    g1, val, used = bipartition(sub, cfg.bisection_solver, cfg.min_group_size, cfg.restarts,
                                derive_seed(cfg.seed, *cls), cfg.exhaustive_max_classes)
    a = tuple(cls[i] for i in g1)
    b = tuple(c for c in cls if c not in set(a))
    node.children = [GroupNode(a), GroupNode(b)]
    node.cut, node.solver = val, used
    return True


def _spectral_clustering(D: np.ndarray, k: int, seed: int) -> list[list[int]]:
    from sklearn.cluster import SpectralClustering

    off = D[~np.eye(len(D), dtype=bool)]
    sigma = float(np.median(off)) or 1.0
    affinity = np.exp(-(D ** 2) / (2 * sigma ** 2))
    labels = SpectralClustering(n_clusters=k, affinity="precomputed",
                                random_state=derive_seed("two_stage-spectral", seed) % 2**32
                                ).fit_predict(affinity)
    groups = [np.flatnonzero(labels == j).tolist() for j in range(k)]
    if any(not g for g in groups):
        raise ValueError(f"spectral clustering left an empty group (k = {k})")
    return groups


def partition_classes(D: Any, cfg: PartitionConfig) -> GroupNode:
    """The group tree for distance matrix D under `cfg` (see PartitionConfig)."""
    D = _zero_diag(D)
    c = D.shape[0]
    solver = cfg.solver
    recursive = cfg.n_groups > 2 or cfg.max_group_size is not None or cfg.depth is not None
    if solver == "spectral_clustering":
        tree = flat_tree(_spectral_clustering(D, cfg.n_groups, cfg.seed))
        for ch in tree.children:  # record the cross-group distance of each group
            ch.cut = cut_value(D, ch.classes)
        tree.cut = 0.5 * sum(ch.cut for ch in tree.children)
        tree.solver = "spectral_clustering"
        return tree
    if solver == "auto":
        solver = "recursive_bisection" if recursive else (
            "exhaustive" if c <= cfg.exhaustive_max_classes else "spectral_localsearch")
    root = GroupNode(tuple(range(c)))
    if solver in ("exhaustive", "spectral_localsearch"):
        if recursive:
            raise ValueError(f"solver '{solver}' makes two groups; use recursive_bisection (or "
                             "auto) for n_groups > 2, max_group_size or depth")
        g1, val, used = bipartition(D, solver, cfg.min_group_size, cfg.restarts, cfg.seed,
                                    cfg.exhaustive_max_classes)
        root.children = [GroupNode(g1), GroupNode(tuple(i for i in range(c) if i not in g1))]
        root.cut, root.solver = val, used
        return root
    # recursive bisection
    if cfg.max_group_size is not None:
        todo = [root]
        while todo:
            node = todo.pop(0)
            if len(node.classes) > cfg.max_group_size and _split_node(node, D, cfg):
                todo.extend(node.children)
    elif cfg.depth is not None:
        level = [root]
        for _ in range(cfg.depth):
            nxt = []
            for node in level:
                if _split_node(node, D, cfg):
                    nxt.extend(node.children)
            level = nxt
    else:
        while len(root.leaves()) < cfg.n_groups:
            leaves = sorted(root.leaves(), key=lambda n: -len(n.classes))  # stable: DFS order
            if not any(_split_node(leaf, D, cfg) for leaf in leaves[:1]):
                log.warning("cannot split further: %d groups instead of %d", len(root.leaves()),
                            cfg.n_groups)
                break
    if root.is_leaf:
        raise ValueError(f"recursive bisection could not split {c} classes")
    return root


# --------------------------------------------------------------------------- whole analysis

def compute_grouping(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     kmeans_cfg: KMeansConfig, partition_cfg: PartitionConfig) -> dict[str, Any]:
    """Centroids, D, the group tree and its objective. For a heuristic root split on at most
    `exhaustive_max_classes` classes, the exhaustive optimum is recorded as a check."""
    cents = class_centroids(features, labels, num_classes, kmeans_cfg)
    D = class_distance(cents)
    tree = partition_classes(D.numpy(), partition_cfg)
    exhaustive_opt = None
    if (tree.solver not in (None, "exhaustive") and num_classes <= partition_cfg.exhaustive_max_classes
            and num_classes >= 2 * partition_cfg.min_group_size):
        _, exhaustive_opt = exhaustive_bipartition(D.numpy(), partition_cfg.min_group_size)
    m = kmeans_cfg.clusters_per_class
    padded = torch.stack([c[torch.arange(m) % len(c)] for c in cents]).float()
    return {
        "centroids": padded,  # C x M x D (classes with M_i < M repeat their centroids)
        "centroid_counts": [len(c) for c in cents],
        "distance": D,
        "tree": tree,
        "group_of_class": group_of_class(tree, num_classes),
        "groups": [list(leaf.classes) for leaf in tree.leaves()],
        "objective": tree.cut,
        "solver": tree.solver,
        "exhaustive_objective": exhaustive_opt,
    }


# --------------------------------------------------------------------------- agreement

def partition_agreement(a: Any, b: Any) -> dict[str, Any]:
    """Agreement of two class -> group labellings: adjusted Rand index, whether they are
    identical up to relabelling the groups, and the fraction of class pairs on which they agree
    (both together or both apart; the Rand index)."""
    from sklearn.metrics import adjusted_rand_score

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError("partitions cover different numbers of classes")
    iu = np.triu_indices(len(a), 1)
    same_a = (a[:, None] == a[None, :])[iu]
    same_b = (b[:, None] == b[None, :])[iu]
    pairs = float((same_a == same_b).mean()) if len(same_a) else 1.0
    identical = bool(np.all(same_a == same_b))
    return {"adjusted_rand_index": 1.0 if identical else float(adjusted_rand_score(a, b)),
            "identical": identical, "pair_agreement": pairs}
