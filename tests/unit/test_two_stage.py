"""Two-stage plugin: grouping (k-means, class distance, max-cut solvers, tree), routing, label
maps, stage training on tiny data, persistence, config and targets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from ltdistill.config import ConfigError
from ltdistill.models import ModelSpec
from ltdistill.two_stage.config import KMeansConfig, PartitionConfig, two_stage_config
from ltdistill.two_stage.grouping import (
    GroupNode,
    class_centroids,
    class_distance,
    compute_grouping,
    cut_value,
    exhaustive_bipartition,
    flat_tree,
    group_of_class,
    kmeans,
    partition_agreement,
    partition_classes,
    spectral_localsearch,
)
from ltdistill.two_stage.plugin import (
    StageData,
    TwoStageClassifier,
    child_of_class,
    load_stage,
    node_targets,
    save_stage,
    to_global,
    to_local,
    train_stage,
    two_stage_metrics,
)
from ltdistill.two_stage.targets import two_stage_report_targets, two_stage_targets


def random_centroids(num_classes: int, m: int, dim: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, dim, generator=g, dtype=torch.float64)
            + 3 * torch.randn(1, dim, generator=g, dtype=torch.float64)
            for _ in range(num_classes)]


# --------------------------------------------------------------------------- class distance

def test_distance_matches_identity():
    m = 5
    cents = random_centroids(7, m, 12, seed=1)
    D = class_distance(cents, chunk=8)  # several chunks
    means = torch.stack([c.mean(0) for c in cents])
    spread = torch.stack([((c - c.mean(0)) ** 2).sum() for c in cents])
    expected = (m ** 2 * torch.cdist(means, means) ** 2
                + m * (spread[:, None] + spread[None, :]))
    torch.testing.assert_close(D ** 2, expected, rtol=1e-9, atol=1e-9)


def test_distance_with_unequal_cluster_counts_is_the_pair_sum():
    cents = [torch.tensor([[0.0, 0.0]], dtype=torch.float64),
             torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)]
    D = class_distance(cents)
    # pairs (0,0)-(3,4): 25, (0,0)-(0,1): 1 -> sqrt(26); D_11 = 2 * |(3,4)-(0,1)|^2 = 36
    assert D[0, 1].item() == pytest.approx(26 ** 0.5)
    assert D[1, 0].item() == pytest.approx(26 ** 0.5)
    assert D[1, 1].item() == pytest.approx(36 ** 0.5)
    assert D[0, 0].item() == 0.0


# --------------------------------------------------------------------------- solvers

def two_cluster_matrix() -> np.ndarray:
    """Classes {0, 1, 2} and {3, 4}: distance 1 inside a cluster, 10 across."""
    lab = np.array([0, 0, 0, 1, 1])
    D = np.where(lab[:, None] == lab[None, :], 1.0, 10.0)
    np.fill_diagonal(D, 0.0)
    return D


def test_exhaustive_finds_the_obvious_split():
    g1, val = exhaustive_bipartition(two_cluster_matrix())
    assert g1 == (0, 1, 2)
    assert val == pytest.approx(6 * 10.0)


def test_exhaustive_ties_go_to_the_lexicographically_smallest_group():
    D = np.ones((4, 4))  # cut = |G1| * |G2|: every 2-2 split ties at 4
    g1, val = exhaustive_bipartition(D)
    assert (g1, val) == ((0, 1), 4.0)


def test_exhaustive_respects_min_group_size():
    D = np.zeros((5, 5))
    D[0, 1:] = D[1:, 0] = 10.0  # class 0 alone would be best
    g1, _ = exhaustive_bipartition(D)
    assert g1 == (0,)
    g1, val = exhaustive_bipartition(D, min_group_size=2)
    assert len(g1) >= 2 and 5 - len(g1) >= 2
    assert val == pytest.approx(cut_value(D, g1))


def test_exhaustive_scales_to_twenty_classes():
    D = class_distance(random_centroids(20, 3, 6, seed=2)).numpy()
    start = time.perf_counter()
    g1, val = exhaustive_bipartition(D)
    assert time.perf_counter() - start < 10.0
    assert 0 in g1 and val == pytest.approx(cut_value(D, g1))
    _, heuristic = spectral_localsearch(D)
    assert heuristic <= val + 1e-9


def test_spectral_localsearch_matches_exhaustive_on_random_problems():
    trials, hits, worst = 50, 0, 0.0
    for t in range(trials):
        D = class_distance(random_centroids(10, 5, 16, seed=100 + t)).numpy()
        _, best = exhaustive_bipartition(D)
        g1, val = spectral_localsearch(D, restarts=10, seed=t)
        assert val == pytest.approx(cut_value(D, g1))
        hits += abs(val - best) <= 1e-9 * best
        worst = max(worst, (best - val) / best)
    print(f"spectral_localsearch = exhaustive optimum on {hits}/{trials} random 10-class "
          f"problems; worst gap {worst:.2%}")
    assert hits / trials >= 0.9, f"matched {hits}/{trials}"
    assert worst <= 0.01, f"worst gap {worst:.2%}"


def test_spectral_localsearch_close_on_sixteen_classes():
    for t in range(5):
        D = class_distance(random_centroids(16, 5, 16, seed=300 + t)).numpy()
        _, best = exhaustive_bipartition(D)
        _, val = spectral_localsearch(D, seed=t)
        assert val >= 0.99 * best


def test_recursive_bisection_builds_a_tree():
    D = class_distance(random_centroids(9, 3, 8, seed=4)).numpy()
    tree = partition_classes(D, PartitionConfig(n_groups=4))
    assert tree.solver == "exhaustive"
    leaves = tree.leaves()
    assert len(leaves) == 4
    assert sorted(c for leaf in leaves for c in leaf.classes) == list(range(9))
    # the root split is the optimal bipartition
    g1, val = exhaustive_bipartition(D)
    assert tree.children[0].classes == g1 and tree.cut == pytest.approx(val)
    sized = partition_classes(D, PartitionConfig(solver="recursive_bisection", max_group_size=2))
    assert all(len(leaf.classes) <= 2 for leaf in sized.leaves())
    deep = partition_classes(D, PartitionConfig(solver="recursive_bisection", depth=2))
    assert len(deep.leaves()) == 4
    assert GroupNode.from_dict(deep.to_dict()) == deep


def test_auto_uses_spectral_above_the_exhaustive_limit():
    D = class_distance(random_centroids(8, 2, 4, seed=5)).numpy()
    tree = partition_classes(D, PartitionConfig(exhaustive_max_classes=6))
    assert tree.solver == "spectral_localsearch"
    assert 0 in tree.children[0].classes


def test_spectral_clustering_groups_the_obvious_clusters():
    tree = partition_classes(two_cluster_matrix(), PartitionConfig(solver="spectral_clustering"))
    assert [leaf.classes for leaf in tree.leaves()] == [(0, 1, 2), (3, 4)]


# --------------------------------------------------------------------------- k-means, grouping

def blobs(num_classes: int = 4, per_class: int = 40, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes 0, 1 near +10 and classes 2, 3 near -10 (two obvious groups), two sub-blobs each."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(num_classes):
        centre = torch.full((6,), 10.0 if c < 2 else -10.0)
        centre[c] += 2.0
        sub = torch.where(torch.arange(per_class) % 2 == 0, 0.5, -0.5)[:, None]
        xs.append(centre + sub + 0.05 * torch.randn(per_class, 6, generator=g))
        ys.append(torch.full((per_class,), c))
    return torch.cat(xs), torch.cat(ys)


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    x = torch.cat([torch.zeros(20, 2), torch.full((20, 2), 5.0), torch.tensor([[0.0, 5.0]] * 20)])
    x = x + 0.01 * torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    c1, a1, w1 = kmeans(x, 3, g=torch.Generator().manual_seed(3))
    c2, a2, w2 = kmeans(x, 3, g=torch.Generator().manual_seed(3))
    assert torch.equal(c1, c2) and torch.equal(a1, a2) and w1 == w2
    found = sorted(tuple(round(v) for v in row.tolist()) for row in c1)
    assert found == [(0, 0), (0, 5), (5, 5)]
    assert len(set(a1[:20].tolist())) == 1


def test_fewer_points_than_clusters_uses_the_points():
    x, y = blobs(per_class=40)
    keep = torch.cat([torch.nonzero(y != 3).flatten(), torch.nonzero(y == 3).flatten()[:2]])
    cents = class_centroids(x[keep], y[keep], 4, KMeansConfig(clusters_per_class=5))
    assert [len(c) for c in cents] == [5, 5, 5, 2]
    torch.testing.assert_close(cents[3], x[keep][y[keep] == 3].double())


def test_grouping_finds_the_two_groups_and_is_deterministic():
    x, y = blobs()
    cfg_k, cfg_p = KMeansConfig(clusters_per_class=2, restarts=3), PartitionConfig()
    first = compute_grouping(x, y, 4, cfg_k, cfg_p)
    second = compute_grouping(x, y, 4, cfg_k, cfg_p)
    assert first["groups"] == [[0, 1], [2, 3]]
    assert first["group_of_class"] == [0, 0, 1, 1]
    assert first["solver"] == "exhaustive" and first["exhaustive_objective"] is None
    assert first["centroids"].shape == (4, 2, 6)
    assert torch.equal(first["distance"], second["distance"])
    assert first["groups"] == second["groups"]
    heuristic = compute_grouping(x, y, 4, cfg_k, PartitionConfig(solver="spectral_localsearch"))
    assert heuristic["exhaustive_objective"] == pytest.approx(first["objective"])


def test_partition_agreement():
    same = partition_agreement([0, 0, 1, 1, 2], [1, 1, 0, 0, 2])
    assert same == {"adjusted_rand_index": 1.0, "identical": True, "pair_agreement": 1.0}
    diff = partition_agreement([0, 0, 1, 1], [0, 1, 0, 1])
    assert not diff["identical"]
    assert diff["pair_agreement"] == pytest.approx(2 / 6)  # pairs (0,3) and (1,2) stay apart
    assert diff["adjusted_rand_index"] < 0.5


# --------------------------------------------------------------------------- label maps, routing

def test_label_remapping_round_trip():
    classes = (2, 5, 7)
    y = torch.tensor([7, 2, 5, 5, 7])
    local = to_local(y, classes)
    assert local.tolist() == [2, 0, 1, 1, 2]
    assert torch.equal(to_global(local, classes), y)
    with pytest.raises(ValueError):
        to_local(torch.tensor([3]), classes)


class Oracle(nn.Module):
    """Reads the class from pixel (0, 0, 0) and scores `table[class]` (the right output)."""

    def __init__(self, table: torch.Tensor, n_out: int) -> None:
        super().__init__()
        self.table, self.n_out = table, n_out
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, 0, 0, 0].round().long()
        target = self.table[cls]
        out = torch.full((len(x), self.n_out), -5.0)
        valid = target >= 0
        out[valid, target[valid]] = 5.0
        return out


def oracle_classifier(tree: GroupNode, num_classes: int) -> TwoStageClassifier:
    group = {p: Oracle(child_of_class(n, num_classes), len(n.children)) for p, n in tree.internal()}
    intra = {}
    for p, leaf in tree.leaf_paths():
        table = torch.full((num_classes,), -1, dtype=torch.long)
        table[list(leaf.classes)] = torch.arange(len(leaf.classes))
        intra[p] = Oracle(table, len(leaf.classes)) if len(leaf.classes) > 1 else None
    return TwoStageClassifier(tree, group, intra, num_classes)


def encoded_images(labels: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(len(labels), 1, 4, 4)
    x[:, 0, 0, 0] = labels.float()
    return x


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_perfect_stages_give_perfect_accuracy(routing):
    num_classes = 7
    trees = [flat_tree([[0, 3, 5], [1, 2, 4, 6]]),
             partition_classes(class_distance(random_centroids(7, 2, 3, seed=9)).numpy(),
                               PartitionConfig(n_groups=4)),
             flat_tree([[0], [1, 2], [3, 4, 5, 6]])]
    y = torch.arange(num_classes).repeat(3)
    for tree in trees:
        clf = oracle_classifier(tree, num_classes)
        m = two_stage_metrics(clf, encoded_images(y), encoded_images(y), y, None, routing)
        assert m["top1"] == 1.0 and m["group_acc"] == 1.0
        assert m["class_std"] == 0.0


def test_constant_group_classifier_reduces_to_one_intra_classifier():
    tree = flat_tree([[0, 1, 2], [3, 4]])
    clf = oracle_classifier(tree, 5)
    always_first = torch.zeros(5, dtype=torch.long)  # every class -> group 0
    clf.group_models["r"] = Oracle(always_first, 2)
    # intra classifier of group 0 that is not an oracle: predicts (class mod 3)
    clf.intra_models["r-0"] = Oracle(torch.tensor([0, 1, 2, 0, 1]), 3)
    y = torch.arange(5).repeat(2)
    x = encoded_images(y)
    pred, groups = clf.predict(x, x, "hard")
    assert groups.tolist() == [0] * 10
    assert pred.tolist() == to_global(torch.tensor([0, 1, 2, 0, 1] * 2), (0, 1, 2)).tolist()
    m = two_stage_metrics(clf, x, x, y, None)
    assert m["group_acc"] == pytest.approx(0.6)
    assert m["per_class"] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_stages_may_see_different_preprocessing():
    """Stage 1 reads x1, stage 2 reads x2: a wrong x2 only changes the class, not the group."""
    tree = flat_tree([[0, 1], [2, 3]])
    clf = oracle_classifier(tree, 4)
    y = torch.tensor([0, 1, 2, 3])
    pred, groups = clf.predict(encoded_images(y), encoded_images(torch.tensor([1, 0, 3, 2])))
    assert groups.tolist() == [0, 0, 1, 1]
    assert pred.tolist() == [1, 0, 3, 2]


def test_node_targets_restrict_and_pool_soft_labels():
    tree = flat_tree([[0, 2], [1, 3]])
    y = torch.tensor([0, 1, 2, 3, 2])
    soft = torch.log(torch.tensor([[0.4, 0.1, 0.3, 0.2]] * 5))
    data = StageData(torch.zeros(5, 1, 4, 4), y, 4, soft, source="distilled")
    x, local, s = node_targets(tree, data, use_soft=True)
    assert local.tolist() == [0, 1, 0, 1, 0]
    torch.testing.assert_close(s.exp(), torch.tensor([[0.7, 0.3]] * 5))
    leaf = tree.children[0]
    x, local, s = node_targets(leaf, data, use_soft=True)
    assert local.tolist() == [0, 1, 1] and len(x) == 3
    torch.testing.assert_close(s, soft[[0, 2, 4]][:, [0, 2]])
    assert node_targets(leaf, data, use_soft=False)[2] is None


# --------------------------------------------------------------------------- training on toy data

def tiny_cfg(**kw):
    base = {"epochs_original": 2, "epochs_distilled": 2, "batch_size": 16, "augment": False}
    return two_stage_config({"intra_classifier": {**base, **kw},
                             "group_classifier": base}).intra_classifier


def test_train_stage_is_deterministic_and_round_trips(toy_data, tmp_path):
    tree = flat_tree([[0, 1], [2, 3]])
    spec = ModelSpec("convnet", toy_data.channels, 4, toy_data.image_size, width=4)
    data = StageData(toy_data.train_images, toy_data.train_labels, 4)
    cfg = tiny_cfg()
    group, ginfo = train_stage(tree, "group", data, cfg, spec, "", seed=0, device="cpu")
    intra1, info = train_stage(tree, "intra", data, cfg, spec, "", seed=3, device="cpu")
    intra2, _ = train_stage(tree, "intra", data, cfg, spec, "", seed=3, device="cpu")
    assert set(group) == {"r"} and set(intra1) == {"r-0", "r-1"}
    assert info["nodes"]["r-0"]["images"] == toy_data.counts[0] + toy_data.counts[1]
    assert ginfo["nodes"]["r"]["per_output_images"] == [sum(toy_data.counts[:2]),
                                                        sum(toy_data.counts[2:])]
    x = toy_data.test_images
    a = TwoStageClassifier(tree, group, intra1, 4).predict(x, x)
    b = TwoStageClassifier(tree, group, intra2, 4).predict(x, x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    specs = {p: n["spec"] for p, n in info["nodes"].items()}
    save_stage(tmp_path / "intra.pt", intra1, specs, {"source": "original"})
    loaded, meta = load_stage(tmp_path / "intra.pt")
    assert meta["source"] == "original"
    c = TwoStageClassifier(tree, group, loaded, 4).predict(x, x)
    assert torch.equal(a[0], c[0])


def test_one_class_groups_need_no_classifier(toy_data):
    tree = flat_tree([[0], [1, 2, 3]])
    spec = ModelSpec("convnet", toy_data.channels, 4, toy_data.image_size, width=4)
    data = StageData(toy_data.train_images, toy_data.train_labels, 4)
    intra, _ = train_stage(tree, "intra", data, tiny_cfg(), spec, "", seed=0, device="cpu")
    assert intra["r-0"] is None and intra["r-1"] is not None


# --------------------------------------------------------------------------- config, targets

def test_config_rejects_unknown_keys_and_variants():
    with pytest.raises(ConfigError, match="did you mean"):
        two_stage_config({"kmeans": {"clusters_per_clas": 5}})
    with pytest.raises(ConfigError):
        two_stage_config({"variants": ["original_synthetic"]})
    cfg = two_stage_config({"variants": ["original_distilled", "distilled_distilled"]})
    assert cfg.variants == ("original_distilled", "distilled_distilled")
    assert cfg.group_classifier.use_soft_labels is False
    assert cfg.intra_classifier.use_soft_labels is True


def workflow_config(two_stage):
    return {
        "grid": [{"dataset": "toy", "imbalance_factors": [10, 100], "ipcs": [1, 10]}],
        "methods": ["full", "random", "herding"],
        "method_params": {"full": {}, "random": {}, "herding": {}},
        "distill_seeds": [0, 1],
        "evaluation": {"seeds": [0, 1, 2]},
        "two_stage": two_stage,
    }


def test_targets():
    assert two_stage_targets(workflow_config({})) == []
    assert two_stage_targets(workflow_config({"enabled": False})) == []
    cfg = workflow_config({"methods": ["full", "random"], "seeds": [0],
                           "variants": ["original_distilled", "original_original"]})
    targets = two_stage_targets(cfg)
    # random: 2 IF x 2 IPC x 2 distill seeds x 1 seed; original_original: 2 IF under full
    assert len(targets) == 2 * 2 * 2 + 2
    assert ("results/evaluation/toy/if10/ipc1/random/s1/convnet/two_stage_original_distilled/"
            "seed0.json") in targets
    assert ("results/evaluation/toy/if100/ipc0/full/s0/convnet/two_stage_original_original/"
            "seed0.json") in targets
    assert not any("herding" in t for t in targets)
    report = two_stage_report_targets(cfg)
    assert "results/two_stage/toy/if10/stability.json" in report
    assert "results/figures/two_stage/tsne_toy_if10_ipc1_random.png" in report
    assert "results/figures/two_stage/classwise_toy_if100_ipc10_random.png" in report
    quiet = workflow_config({"stability": {"datasets": ["other"]}, "figures": {"datasets": []}})
    assert [t for t in two_stage_report_targets(quiet) if "stability" in t or "figures" in t] == []
    every = two_stage_targets(workflow_config({"variants": ["distilled_distilled"]}))
    assert len(every) == 2 * 2 * 2 * 3 * 2  # IF x IPC x dseed x eval seed x (random, herding)


def test_group_of_class_covers_every_class():
    tree = flat_tree([[3, 1], [0, 2]])
    assert [leaf.classes for leaf in tree.leaves()] == [(0, 2), (1, 3)]
    assert group_of_class(tree, 4) == [0, 1, 0, 1]
    with pytest.raises(ValueError):
        group_of_class(tree, 5)


# --------------------------------------------------------------------------- pipeline stages

def test_pipeline_stages_write_the_evaluation_record(toy_raw, toy_data, tmp_path):
    """grouping -> group classifier -> evaluate on tiny files; the record has the evaluation
    schema plus group_acc, train_img_num and partition, and is reproducible."""
    import json

    from ltdistill.atomic import read_json
    from ltdistill.data.base import save_dataset_cache
    from ltdistill.data.preprocess import save_preprocessing
    from ltdistill.io import ImageSet, save_image_set
    from ltdistill.models import build_model
    from ltdistill.models.io import save_model
    from ltdistill.two_stage import pipeline as tsp

    cache, split, prep = tmp_path / "cache.pt", tmp_path / "split.json", tmp_path / "prep.pt"
    save_dataset_cache(cache, toy_raw)
    toy_data.split.save(split)
    save_preprocessing(prep, toy_data.preprocessing)
    spec = ModelSpec("convnet", 1, 4, toy_data.image_size, width=4)
    save_model(tmp_path / "ref.pt", build_model(spec, 0), spec, {"test_top1": 0.25})
    # one training image of each class as the "distilled" set
    idx = torch.as_tensor([int(torch.nonzero(toy_data.train_labels == c)[0]) for c in range(4)])
    image_set = ImageSet(toy_data.train_images[idx], toy_data.train_labels[idx], 4,
                         meta={"preprocessing": toy_data.preprocessing.describe()})
    save_image_set(tmp_path / "set.pt", image_set)
    section = {"kmeans": {"clusters_per_class": 2, "restarts": 2},
               "group_classifier": {"epochs_original": 1, "epochs_distilled": 1, "augment": False},
               "intra_classifier": {"epochs_original": 1, "epochs_distilled": 2, "augment": False}}
    network = {"arch": "convnet", "width": 4}
    tsp.grouping(cache, split, prep, tmp_path / "ref.pt", section, "cpu", tmp_path / "g.pt",
                 tmp_path / "g.json")
    summary = read_json(tmp_path / "g.json")
    assert summary["solver"] == "exhaustive" and len(summary["distance"]) == 4
    assert sum(summary["group_images"]) == sum(toy_data.counts)
    tsp.group_classifier(cache, split, prep, tmp_path / "g.pt", section, network, "", "cpu",
                         tmp_path / "group.pt")
    identity = {"dataset": "toy", "imbalance_factor": 8, "ipc": 1, "method": "random",
                "distill_seed": 0, "model": "convnet", "recipe": "two_stage_original_distilled",
                "eval_seed": 0}
    outs = []
    for name in ("a.json", "b.json"):
        tsp.evaluate(identity, "original_distilled", cache, split, prep, prep, tmp_path / "g.pt",
                     tmp_path / "group.pt", tmp_path / "set.pt", section, network, "", 0, "cpu",
                     tmp_path / name)
        outs.append(read_json(tmp_path / name))
    rec = outs[0]
    assert rec["test"]["top1"] == outs[1]["test"]["top1"]
    assert rec["test"]["per_class"] == outs[1]["test"]["per_class"]
    assert {k: rec[k] for k in identity} == identity
    assert rec["train_img_num"] == sum(toy_data.counts) + 4 == rec["train_images"]
    assert 0.0 <= rec["test"]["group_acc"] <= 1.0
    assert rec["partition"]["groups"] == summary["groups"]
    assert rec["lt_test"] is not None and "group_acc" in rec["lt_test"]
    json.dumps(rec, allow_nan=False)  # strict JSON
    # runtime.batch_eval_seeds: seeds 0 and 1 in one call write the records of two single calls
    tsp.evaluate(identity, "original_distilled", cache, split, prep, prep, tmp_path / "g.pt",
                 tmp_path / "group.pt", tmp_path / "set.pt", section, network, "", 1, "cpu",
                 tmp_path / "s1.json")
    tsp.evaluate({k: v for k, v in identity.items() if k != "eval_seed"}, "original_distilled",
                 cache, split, prep, prep, tmp_path / "g.pt", tmp_path / "group.pt",
                 tmp_path / "set.pt", section, network, "", [0, 1], "cpu",
                 [tmp_path / "batch0.json", tmp_path / "batch1.json"])
    for single, batched, seed in (("a.json", "batch0.json", 0), ("s1.json", "batch1.json", 1)):
        a, b = read_json(tmp_path / single), read_json(tmp_path / batched)
        assert b["eval_seed"] == b["train_seed"] == seed
        assert a["test"]["per_class"] == b["test"]["per_class"]
        assert a["stage2"]["nodes"] == b["stage2"]["nodes"]
    # each seed trains its own intra-group classifiers (the node seeds derive from it)
    seeds0, seeds1 = ({n["seed"] for n in read_json(tmp_path / f)["stage2"]["nodes"].values()}
                      for f in ("batch0.json", "batch1.json"))
    assert len(seeds0) == 2 and not seeds0 & seeds1
    with pytest.raises(ValueError, match="2 seeds for 1 output"):
        tsp.evaluate(identity, "original_distilled", cache, split, prep, prep, tmp_path / "g.pt",
                     tmp_path / "group.pt", tmp_path / "set.pt", section, network, "", [0, 1],
                     "cpu", [tmp_path / "x.json"])
    with pytest.raises(ValueError, match="trained on original"):
        tsp.evaluate(identity, "distilled_distilled", cache, split, prep, prep, tmp_path / "g.pt",
                     tmp_path / "group.pt", tmp_path / "set.pt", section, network, "", 0, "cpu",
                     tmp_path / "c.json")
