"""labkit.memory on a CPU: stats, activation memory, and the max-batch search under a simulated budget."""

from __future__ import annotations

import pytest
import torch

from labkit.memory import _simulated_trial, activation_memory, find_max_batch, memory_stats
from labkit.models import build_model, example_batch


def test_cpu_memory_stats_are_the_process_and_the_machine():
    s = memory_stats("cpu")
    assert s.device == "cpu" and s.reserved_bytes == 0
    assert 0 < s.allocated_bytes <= s.peak_bytes
    assert 0 < s.free_bytes <= s.total_bytes


def test_activation_memory_lists_leaf_layers_and_scales_with_the_batch():
    model = build_model("tiny_cnn", "small")
    layers, peak1 = activation_memory(model, example_batch(model, 1))
    _, peak4 = activation_memory(model, example_batch(model, 4))
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    assert [layer.name for layer in layers][: len(leaves)] == leaves[: len(layers)]
    assert peak1 >= max(layer.output_bytes for layer in layers)
    assert peak4 == 4 * peak1  # every activation is proportional to the batch
    assert peak1 < sum(layer.output_bytes for layer in layers)  # inference frees as it goes


def _exhaustive(model, example, budget: int) -> int:
    trial = _simulated_trial(model, example, budget)
    n = 0
    while trial(n + 1).fits:
        n += 1
    return n


@pytest.mark.parametrize("name", ["tiny_cnn", "mlp"])
@pytest.mark.parametrize("extra", [300_000, 700_000, 9_000_000])
def test_simulated_budget_finds_the_true_maximum_in_at_most_five_trials(name, extra):
    model = build_model(name, "small")
    example = example_batch(model, 1)[0]
    budget = sum(p.numel() * p.element_size() for p in model.parameters()) + extra
    truth = _exhaustive(model, example, budget)
    result = find_max_batch(model, example, budget_bytes=budget)
    assert result.simulated and result.budget_bytes == budget
    assert result.batch == truth
    assert len(result.trials) <= 5, [t.batch for t in result.trials]
    assert any(t.batch == truth and t.fits for t in result.trials)
    assert any(t.batch == truth + 1 and not t.fits for t in result.trials)  # proved, not assumed


def test_a_budget_below_the_weights_fits_nothing():
    model = build_model("mlp", "small")
    result = find_max_batch(model, example_batch(model, 1)[0], budget_bytes=1000)
    assert result.batch == 0 and len(result.trials) == 1 and not result.trials[0].fits


def test_the_limit_caps_the_search():
    model = build_model("mlp", "small")
    result = find_max_batch(model, example_batch(model, 1)[0], budget_bytes=10**12, limit=64)
    assert result.batch == 64


def test_cpu_needs_a_budget():
    model = build_model("mlp", "small")
    with pytest.raises(ValueError, match="budget_bytes"):
        find_max_batch(model, torch.zeros(256))
