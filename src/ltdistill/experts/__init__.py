"""Expert trajectories for trajectory matching: training (SGD, GSAM, class-aware sampling, MaxNorm)
and compact storage (one [E+1, P] float32 file per expert, memory-mapped when read)."""

from .gsam import GSAM
from .maxnorm import MaxNorm, maxnorm_threshold, project_rows
from .sampler import ClassAwareSampler
from .storage import (
                      Expert,
                      ExpertError,
                      ExpertPool,
                      flatten_parameters,
                      load_expert,
                      load_flat_parameters,
                      save_expert,
)
from .train import KIND_DEFAULTS, KINDS, ExpertConfig, expert_config, train_expert

__all__ = ["GSAM", "MaxNorm", "maxnorm_threshold", "project_rows", "ClassAwareSampler", "Expert",
           "ExpertError", "ExpertPool", "flatten_parameters", "load_expert", "load_flat_parameters",
           "save_expert", "KIND_DEFAULTS", "KINDS", "ExpertConfig", "expert_config", "train_expert"]
