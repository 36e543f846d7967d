"""labkit.ladder on a CPU: the rungs a CPU has run and match fp32, the others are skipped with
their reason, and what is measured is per batch size and per item."""

from __future__ import annotations

import pytest
import torch

from labkit.ladder import RUNGS, TOLERANCE, Rung, RungResult, climb, cpu_has_bf16, fixed_shape


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


BF16_RUNGS = {"bf16 autocast", "bf16 weights"}


def test_on_a_cpu_the_gpu_rungs_are_skipped_with_their_reason(eager_climb):
    skipped = {name: r.skipped for name, r in eager_climb.items() if r.skipped}
    expected = {"TF32", "fp16 weights", "CUDA graphs, bf16", "compile reduce-overhead, bf16", "compile max-autotune, bf16"}
    assert set(skipped) == expected | (set() if cpu_has_bf16() else BF16_RUNGS)
    assert "tensor cores" in skipped["TF32"] and "CUDA graphs" in skipped["CUDA graphs, bf16"]
    if not cpu_has_bf16():
        assert "no bf16 instructions" in skipped["bf16 weights"]
    assert all(not r.items_per_s and r.matches is None for name, r in eager_climb.items() if name in skipped)


def test_the_rungs_a_cpu_has_run_at_every_batch_size_and_match_fp32(eager_climb):
    ran = {name: r for name, r in eager_climb.items() if not r.skipped}
    assert set(ran) == {"fp32, TF32 off", "channels_last"} | (BF16_RUNGS if cpu_has_bf16() else set())
    for r in ran.values():
        assert set(r.items_per_s) == {1, 4} and r.best_batch in (1, 4) and r.batch1_ms > 0
        assert r.matches, (r.rung.name, r.max_rel_error)
        assert r.tflops > 0 and r.share_of_peak is None  # a CPU has no datasheet peak on file
    assert ran["fp32, TF32 off"].max_rel_error == 0.0  # the reference itself
    assert ran["channels_last"].precision == "fp32"  # TF32 allowed is plain fp32 on a CPU
    if cpu_has_bf16():
        assert ran["bf16 weights"].max_rel_error > 0  # rounded to 8 bits, and still within tolerance


def test_a_rung_that_breaks_the_outputs_does_not_match():
    class Wrong(TinyCNN):
        def forward(self, x):
            out = super().forward(x)
            return out + 1 if not x.is_contiguous() else out  # only the channels_last rung is wrong

    results = climb(Wrong(), _example, "cpu", batch_sizes=(1, 2), rungs=[RUNGS[0], RUNGS[2]], repeat=2)
    assert [r.matches for r in results] == [True, False]
    assert results[1].max_rel_error > TOLERANCE["fp32"]


def test_each_precision_matches_within_its_own_tolerance():
    bf16 = Rung("bf16", "bf16", cast=True)
    assert RungResult(bf16, max_rel_error=0.01, precision="bf16").matches
    assert not RungResult(bf16, max_rel_error=0.06, precision="bf16").matches
    assert not RungResult(RUNGS[0], max_rel_error=1e-3).matches  # fp32 allows only rounding
    assert RungResult(RUNGS[0], skipped="why").matches is None


def test_channels_last_is_skipped_for_inputs_that_are_not_images():
    linear = torch.nn.Linear(8, 2)
    results = climb(linear, lambda n: torch.randn(n, 8), "cpu", batch_sizes=(1,), rungs=[RUNGS[2]], repeat=2)
    assert results[0].skipped.startswith("channels_last is a layout of image batches")


@pytest.mark.slow
def test_torch_compile_runs_on_a_cpu_and_matches():
    compiled = next(r for r in RUNGS if r.mode == "compile")
    assert compiled.name == "torch.compile, fp32"  # the rung a CPU can gain from comes first
    result = climb(TinyCNN(), _example, "cpu", batch_sizes=(1,), rungs=[compiled], repeat=2)[0]
    assert result.skipped is None and result.matches, result.max_rel_error
    assert result.first_call_s > 0  # the compile, paid before the first result
    serve = fixed_shape(result, 1)  # kept: a server pads to the compiled shape, under inference mode
    x = _example(1)
    out = serve(x)
    assert not out.is_inference() and torch.equal(out, serve(x))
    with pytest.raises(ValueError, match="at most 1"):
        serve(_example(2))


def test_a_fixed_shape_forward_pads_to_its_batch_and_returns_only_the_real_rows():
    result = climb(TinyCNN(), _example, "cpu", batch_sizes=(1, 4), rungs=[RUNGS[0]], repeat=2)[0]
    seen = []
    forward = result.forward
    result.forward = lambda x: (seen.append(len(x)), forward(x))[1]
    serve = fixed_shape(result, 4)
    x = _example(3)
    with torch.inference_mode():
        expected = forward(x)
    out = serve(x)
    assert seen == [4] and out.shape == expected.shape and torch.allclose(out, expected, atol=1e-6)
    out.add_(1)  # an ordinary tensor: the caller may modify it
