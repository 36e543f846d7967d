"""labkit.memory on a real CUDA device: real out-of-memory, a capped fraction, checkpointing."""

from __future__ import annotations

import gc

import pytest
import torch

from labkit.memory import (
    checkpointed,
    find_max_batch,
    make_trial,
    memory_cap,
    memory_stats,
    training_peak_bytes,
)
from labkit.models import build_model, example_batch

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]

CAP = 2 * 2**30


@pytest.fixture
def capped():
    """The process may reserve at most CAP bytes on the device while the test runs."""
    with memory_cap(CAP):
        yield CAP


def test_memory_stats_on_cuda_are_consistent():
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    s = memory_stats("cuda")
    assert s.device.startswith("cuda")
    assert x.numel() <= s.allocated_bytes <= s.reserved_bytes
    assert s.allocated_bytes <= s.peak_bytes
    assert 0 < s.free_bytes < s.total_bytes


def test_max_batch_under_a_cap_fits_the_next_one_does_not_and_the_allocator_recovers(capped):
    model = build_model("resnet50", "small", device="cuda")
    example = example_batch(model, 1)[0]
    gc.collect()  # garbage of earlier tests would be freed inside the search and blur the comparison
    before = torch.cuda.memory_allocated()
    result = find_max_batch(model, example, budget_bytes=capped)
    assert result.batch > 2 and not result.simulated
    assert len(result.trials) <= 10, [(t.batch, t.fits) for t in result.trials]
    # nothing left behind by failed trials (a trial's activations are megabytes; the allocator's
    # own bookkeeping may move a block of 512 bytes)
    assert abs(torch.cuda.memory_allocated() - before) < 2**20
    next_one = [t for t in result.trials if t.batch == result.batch + 1]
    assert next_one and not next_one[0].fits
    # The answer runs again from a cache as clean as its trial's (right at the cap, what fits
    # depends on how the cache is laid out), and after the failures the allocator still works.
    assert make_trial(model, example, budget_bytes=capped)(result.batch).fits
    with torch.no_grad():
        assert model(example_batch(model, 4)).shape == (4, 1000)


def test_a_real_out_of_memory_is_a_failed_trial_not_a_crash(capped):
    model = build_model("resnet50", "small", device="cuda")
    example = example_batch(model, 1)[0]
    result = find_max_batch(model, example, budget_bytes=100 * capped, limit=1 << 15)  # the cap bites first
    assert any(t.peak_bytes is None and not t.fits for t in result.trials)
    with torch.no_grad():
        assert model(example_batch(model, 4)).shape == (4, 1000)


def test_checkpointing_lowers_the_training_peak_on_cuda_as_the_meta_count_predicts():
    model = build_model("resnet50", "full", device="cuda")
    x = example_batch(model, 32)
    meta = build_model("resnet50", "full", device="meta")

    def train_peak(m) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m(x).float().square().mean().backward()
        torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated() - base

    plain, ckpt = train_peak(model), train_peak(checkpointed(model, 4))
    assert ckpt < 0.5 * plain
    counted = training_peak_bytes(meta, x.to("meta")), training_peak_bytes(checkpointed(meta, 4), x.to("meta"))
    assert counted == (pytest.approx(plain, rel=0.05), pytest.approx(ckpt, rel=0.05))
