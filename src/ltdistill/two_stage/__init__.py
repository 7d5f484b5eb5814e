"""The two-stage hierarchical classifier plugin (specs/two_stage.md): a grouping of similar
classes from per-class k-means centroids, a group classifier trained on the full LT data, and
intra-group classifiers trained on any method's distilled set.

Modules: `config` (the typed `two_stage:` section), `grouping` (k-means, class distance,
max-cut solvers, the group tree, partition agreement), `plugin` (training the two stages,
routing, metrics), `pipeline` (workflow stages over paths), `targets` (the workflow's target
paths), `plots` (the t-SNE figure and one- vs two-stage bars)."""
