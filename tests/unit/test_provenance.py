"""The provenance block names the runtime policies that change how results are computed."""

from __future__ import annotations

import torch

from ltdistill import microbatch
from ltdistill.provenance import provenance


def test_provenance_records_the_runtime_policies_in_force():
    before = microbatch.get_micro_batch()
    threads = torch.get_num_threads()
    try:
        microbatch.set_micro_batch(0)
        torch.set_num_threads(1)
        record = provenance("cpu", wall_time_s=1.23456, config={"recipe": {"epochs": 3}})
        assert record["runtime"]["micro_batch"] == 0
        assert record["runtime"]["threads"] == 1
        assert record["runtime"]["deterministic"] is torch.are_deterministic_algorithms_enabled()
        assert isinstance(record["runtime"]["allocator_tuned"], bool)
        assert isinstance(record["runtime"]["malloc_tcache_off"], bool)
        assert record["wall_time_s"] == 1.235
        assert record["config"] == {"recipe": {"epochs": 3}}
        assert record["device"].startswith("cpu:") and record["device"].endswith("x1 threads")
        microbatch.set_micro_batch(16)
        assert provenance("cpu")["runtime"]["micro_batch"] == 16
    finally:
        microbatch.set_micro_batch(before)
        torch.set_num_threads(threads)
