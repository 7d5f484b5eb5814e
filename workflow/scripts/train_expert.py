"""Train experts first..last of one kind on one (dataset, IF), one after another on data loaded
once, and publish them as one directory of expert_{i}.pt files (runtime.experts_per_job)."""

from ltdistill.experts.pipeline import train_expert_job
from ltdistill.jobs import checkpoint_every_s, start

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
init = sm.input.init if "init" in sm.input.keys() else None
train_expert_job(sm.input.cache, sm.input.split, sm.input.prep, w.expert_kind, int(w.first),
                 int(w.last), sm.params.settings, sm.params.network, sm.params.dsa_strategy,
                 sm.params.device, sm.output[0], init_dir=init,
                 checkpoint_every_s=checkpoint_every_s(sm))
