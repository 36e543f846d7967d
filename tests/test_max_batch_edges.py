"""The max-batch search tried as a hostile caller would: each wrong argument gets an error that
says what was expected, instead of a wrong answer or a raw error from deep inside."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.memory import Trial, find_max_batch, make_trial, search_max_batch
from labkit.models import build_model, example_batch


@pytest.fixture
def mlp():
    return build_model("mlp", "small")


def test_an_example_that_already_has_a_batch_dimension_is_refused(mlp):
    # a linear layer runs (n, 8, 256) as happily as (n, 256): the answer would be in units of 8 inputs
    batch = example_batch(mlp, 8)
    with pytest.raises(ValueError, match=r"one input of shape \(256,\).*got shape \(8, 256\).*example\[0\]"):
        find_max_batch(mlp, batch, budget_bytes=10**7)
    with pytest.raises(ValueError, match=r"one input of shape \(256,\)"):
        make_trial(mlp, example_batch(mlp, 1), budget_bytes=10**7)
    with pytest.raises(ValueError, match=r"one input of shape \(3, 32, 32\).*got shape \(3, 16, 16\)"):
        find_max_batch(build_model("tiny_cnn", "small"), torch.zeros(3, 16, 16), budget_bytes=10**7)


def test_float_budgets_count_whole_bytes_and_float_limits_must_be_whole(mlp):
    example = example_batch(mlp, 1)[0]
    exact = find_max_batch(mlp, example, budget_bytes=10**7)
    as_float = find_max_batch(mlp, example, budget_bytes=1e7)
    assert as_float.batch == exact.batch > 0 and as_float.budget_bytes == 10**7
    assert find_max_batch(mlp, example, budget_bytes=1e7 + 0.5).budget_bytes == 10**7  # rounded down
    assert find_max_batch(mlp, example, budget_bytes=10**12, limit=1e3).batch == 1000
    with pytest.raises(ValueError, match="limit must be a whole number, got 100.5"):
        find_max_batch(mlp, example, budget_bytes=10**7, limit=100.5)
    with pytest.raises(ValueError, match="limit must be a finite number"):
        find_max_batch(mlp, example, budget_bytes=10**7, limit=math.inf)
    with pytest.raises(ValueError, match="budget_bytes must be a finite number"):
        find_max_batch(mlp, example, budget_bytes=math.nan)
    with pytest.raises(ValueError, match="budget_bytes must be at least 0"):
        find_max_batch(mlp, example, budget_bytes=-1.0)
    with pytest.raises(TypeError, match="budget_bytes must be a number, got str"):
        find_max_batch(mlp, example, budget_bytes="1GB")


def test_the_search_itself_takes_float_budgets_and_limits():
    def trial(n: int) -> Trial:
        return Trial(n, 1000 + 10 * n <= 5e4, 1000 + 10 * n, 0.0)

    assert search_max_batch(trial, 5e4).batch == 4900
    assert search_max_batch(trial, 5e4, limit=100.0).batch == 100
    assert all(isinstance(t.batch, int) for t in search_max_batch(trial, 5e4 + 0.5, base_bytes=1e3).trials)


def test_a_plain_function_is_refused_with_what_was_expected():
    with pytest.raises(TypeError, match="measures an nn.Module.*got function.*wrap a plain function"):
        find_max_batch(lambda x: x * 2, torch.zeros(256), "cpu", budget_bytes=10**7)
    with pytest.raises(TypeError, match="measures an nn.Module"):
        make_trial(torch.relu, torch.zeros(256), "cpu", budget_bytes=10**7)


class _ReadsAValue(nn.Module):
    def __init__(self, step: str) -> None:
        super().__init__()
        self.linear, self.step = nn.Linear(4, 4), step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if self.step == "item":
            return y * y.abs().max().item()
        if self.step == "branch":
            return y if y.sum() > 0 else -y
        if self.step == "mask":
            return y[y > 0]
        return y + torch.ones(4)  # a tensor made on the CPU, whatever the input's device


@pytest.mark.parametrize("step", ["item", "branch", "mask", "fixed device"])
def test_a_model_that_cannot_run_on_the_meta_device_gets_an_error_that_says_why_and_what_to_do(step):
    model = _ReadsAValue(step)
    with torch.no_grad():
        model(torch.zeros(2, 4))  # it runs on the CPU: only the simulated budget cannot count it
    with pytest.raises(RuntimeError, match=r"_ReadsAValue cannot be measured on the meta device.*device='cuda'") as err:
        find_max_batch(model, torch.zeros(4), budget_bytes=10**6)
    assert err.value.__cause__ is not None  # torch's own error is kept, chained


def test_errors_that_have_nothing_to_do_with_the_meta_device_pass_through():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("the model's own complaint")

    with pytest.raises(ValueError, match="the model's own complaint"):
        find_max_batch(Broken(), torch.zeros(4), budget_bytes=10**6)
