"""Run one registered method on one grid point and write its image set."""

from ltdistill.jobs import checkpoint_every_s, start
from ltdistill.pipeline import distill

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
fixed = {"cache", "split", "prep"}
artifacts = {k: (v if isinstance(v, str) else list(v)) for k, v in sm.input.items() if k not in fixed}
identity = {"dataset": w.dataset, "imbalance_factor": int(w.imb), "ipc": int(w.ipc),
            "distill_seed": int(w.dseed)}
distill(sm.input.cache, sm.input.split, sm.input.prep, w.method, sm.params.method_params,
        int(w.ipc), int(w.dseed), sm.params.network, sm.params.device, artifacts, sm.output[0],
        identity, checkpoint_every_s=checkpoint_every_s(sm))
