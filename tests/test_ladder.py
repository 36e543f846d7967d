"""labkit.ladder on a CPU: the rungs a CPU has run and match fp32, the others are skipped with
their reason, and what is measured is per batch size and per item."""

from __future__ import annotations

import pytest
import torch

from labkit.ladder import RUNGS, TOLERANCE, Rung, climb


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 4)
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _example(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))


@pytest.fixture(scope="module")
def eager_climb():
    rungs = [r for r in RUNGS if r.mode != "compile"]  # compiling is tested once, below
    return {r.rung.name: r for r in climb(TinyCNN(), _example, "cpu", batch_sizes=(1, 4), rungs=rungs, repeat=3)}


def test_on_a_cpu_the_gpu_rungs_are_skipped_with_their_reason(eager_climb):
    skipped = {name: r.skipped for name, r in eager_climb.items() if r.skipped}
    assert set(skipped) == {"TF32", "fp16 weights", "CUDA graphs, bf16", "compile reduce-overhead, bf16",
                            "compile max-autotune, bf16"}
    assert "tensor cores" in skipped["TF32"] and "CUDA graphs" in skipped["CUDA graphs, bf16"]
    assert all(not r.items_per_s and r.matches is None for name, r in eager_climb.items() if name in skipped)


def test_the_rungs_a_cpu_has_run_at_every_batch_size_and_match_fp32(eager_climb):
    ran = {name: r for name, r in eager_climb.items() if not r.skipped}
    assert set(ran) == {"fp32, TF32 off", "channels_last", "bf16 autocast", "bf16 weights"}
    for r in ran.values():
        assert set(r.items_per_s) == {1, 4} and r.best_batch in (1, 4) and r.batch1_ms > 0
        assert r.matches, (r.rung.name, r.max_rel_error)
        assert r.tflops > 0 and r.share_of_peak is None  # a CPU has no datasheet peak on file
    assert ran["fp32, TF32 off"].max_rel_error == 0.0  # the reference itself
    assert ran["channels_last"].precision == "fp32"  # TF32 allowed is plain fp32 on a CPU
    assert ran["bf16 weights"].max_rel_error > 0  # rounded to 8 bits, and still within tolerance


def test_a_rung_that_breaks_the_outputs_does_not_match():
    class Wrong(TinyCNN):
        def forward(self, x):
            out = super().forward(x)
            return out + 1 if x.dtype == torch.bfloat16 else out  # only the bf16 rung is wrong

    results = climb(Wrong(), _example, "cpu", batch_sizes=(1,), rungs=[RUNGS[0], Rung("bf16", "bf16", cast=True)], repeat=2)
    assert [r.matches for r in results] == [True, False]
    assert results[1].max_rel_error > TOLERANCE["bf16"]


def test_channels_last_is_skipped_for_inputs_that_are_not_images():
    linear = torch.nn.Linear(8, 2)
    results = climb(linear, lambda n: torch.randn(n, 8), "cpu", batch_sizes=(1,), rungs=[RUNGS[2]], repeat=2)
    assert results[0].skipped.startswith("channels_last is a layout of image batches")


@pytest.mark.slow
def test_torch_compile_runs_on_a_cpu_and_matches():
    compiled = next(r for r in RUNGS if r.mode == "compile")
    result = climb(TinyCNN(), _example, "cpu", batch_sizes=(1,), rungs=[compiled], repeat=2)[0]
    assert result.skipped is None and result.matches, result.max_rel_error
    assert result.first_call_s > 0  # the compile, paid before the first result
