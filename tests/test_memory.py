"""labkit.memory on a CPU: stats, activation memory, and the max-batch search under a simulated budget."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.memory import activation_memory, find_max_batch, memory_stats
from labkit.memory.trials import _simulated_trial, recorded_curves, recorded_trial
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


# -- the search itself, on synthetic memory curves ----------------------------------------------


def _synthetic(peak_of, budget: int, oom_above: int | None = None):
    """A trial on a made-up memory curve; past ``oom_above`` it runs out of memory (no peak)."""
    from labkit.memory import Trial

    def trial(n: int) -> Trial:
        if oom_above is not None and n > oom_above:
            return Trial(n, False, None, 0.0)
        peak = peak_of(n)
        return Trial(n, peak <= budget, peak, 0.0)

    return trial


def _truth(peak_of, budget, oom_above=None, limit=1 << 16):
    n = 0
    while n < limit and peak_of(n + 1) <= budget and (oom_above is None or n + 1 <= oom_above):
        n += 1
    return n


@pytest.mark.parametrize("budget", [10_000, 123_457, 5_000_000])
def test_search_on_a_linear_curve_takes_five_trials_and_proves_its_answer(budget):
    from labkit.memory import search_max_batch

    def curve(n):
        return 3_000 + 977 * n

    result = search_max_batch(_synthetic(curve, budget), budget)
    assert result.batch == _truth(curve, budget)
    assert len(result.trials) <= 5
    assert [t.fits for t in result.trials if t.batch == result.batch + 1] == [False]


@pytest.mark.parametrize("budget", [50_000, 400_000, 3_000_000])
def test_search_on_curves_with_rounding_and_a_superlinear_term_is_exact(budget):
    from labkit.memory import search_max_batch

    def curve(n):  # allocator-like: blocks rounded up to 2 KB, and a quadratic workspace
        return 20_000 + 2048 * math.ceil(700 * n / 2048) + n * n // 8

    result = search_max_batch(_synthetic(curve, budget), budget)
    assert result.batch == _truth(curve, budget)
    assert len(result.trials) <= 12, [t.batch for t in result.trials]  # binary search from 2**16: 16


def test_search_when_the_device_runs_out_before_the_budget_is_exact():
    from labkit.memory import search_max_batch

    def curve(n):
        return 1_000 + 100 * n

    result = search_max_batch(_synthetic(curve, 1_000_000, oom_above=4321), 1_000_000)
    assert result.batch == 4321
    assert any(t.peak_bytes is None and not t.fits for t in result.trials)
    assert len(result.trials) <= 17  # no peak past a failure: bisection from the scout to the line, log2(9536) + 3


def test_search_respects_the_limit_and_a_first_probe_that_fails():
    from labkit.memory import search_max_batch

    assert search_max_batch(_synthetic(lambda n: n, 10**9), 10**9, limit=100).batch == 100
    assert [t.batch for t in search_max_batch(_synthetic(lambda n: n, 10**9), 10**9, limit=1).trials] == [1]
    failed = search_max_batch(_synthetic(lambda n: 10 + n, 5), 5)
    assert failed.batch == 0 and len(failed.trials) == 1


def test_out_of_memory_is_a_trial_that_did_not_fit_and_the_model_still_runs():
    # An allocation failure injected past batch 30, below what the budget would allow.
    model = build_model("mlp", "small")
    example = example_batch(model, 1)[0]

    class FailsAbove30(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            if len(x) > 30:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return self.inner(x)

    wrapped = FailsAbove30()
    result = find_max_batch(wrapped, example, budget_bytes=10**9)
    assert result.batch == 30
    failed = [t for t in result.trials if not t.fits]
    assert failed and all(t.peak_bytes is None and t.batch > 30 for t in failed)
    assert wrapped(example_batch(model, 30)).shape == (30, 10)


def test_other_errors_are_not_mistaken_for_running_out_of_memory():
    model = build_model("mlp", "small")

    def broken(x):
        raise RuntimeError("shape mismatch")

    broken_model = torch.nn.Module()
    broken_model.forward = broken
    broken_model.lin = model
    with pytest.raises(RuntimeError, match="shape mismatch"):
        find_max_batch(broken_model, example_batch(model, 1)[0], budget_bytes=10**9)


# -- checkpointing -----------------------------------------------------------------------------


def test_checkpointing_cuts_what_training_keeps_and_saves_nothing_at_inference():
    from labkit.memory import checkpointed, saved_for_backward_bytes

    model = build_model("resnet50", "small")
    x = example_batch(model, 2)
    ckpt = checkpointed(model, segments=4)
    plain_train = saved_for_backward_bytes(model, x)
    ckpt_train = saved_for_backward_bytes(ckpt, x)
    assert ckpt_train < plain_train / 3  # only the segment boundaries are kept
    assert saved_for_backward_bytes(model, x, grad=False) == 0
    assert saved_for_backward_bytes(ckpt, x, grad=False) == 0
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), model(x))


def test_checkpointed_gradients_equal_the_plain_models():
    from labkit.memory import checkpointed

    model = build_model("tiny_cnn", "small").train()
    x = example_batch(model, 3)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    checkpointed(model, segments=2)(x).square().sum().backward()
    for a, b in zip(plain, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_checkpointing_halves_resnet50s_training_peak_counted_on_the_meta_device():
    from labkit.memory import checkpointed, training_peak_bytes

    model = build_model("resnet50", "full").to("meta")  # 224², batch 32: shapes only, no arithmetic
    x = example_batch(model, 32)
    plain = training_peak_bytes(model, x)
    peaks = {k: training_peak_bytes(checkpointed(model, k), x) for k in (2, 4, 8)}
    # recorded on an H200 (bench/explore): plain 2681 MiB; balanced cuts 1548, 1112, 941 MiB
    assert 2.4 * 2**30 < plain < 2.8 * 2**30
    assert peaks[8] < peaks[4] < peaks[2] < 0.65 * plain
    assert peaks[4] < 0.45 * plain


def test_training_peak_on_the_meta_device_is_the_cpus():
    from labkit.memory import checkpointed, training_peak_bytes

    model = build_model("tiny_cnn", "small")
    x = example_batch(model, 4)
    meta = build_model("tiny_cnn", "small").to("meta")
    for a, b in ((model, meta), (checkpointed(model, 2), checkpointed(meta, 2))):
        assert training_peak_bytes(a, x) == pytest.approx(training_peak_bytes(b, x.to("meta")), rel=0.01)
    assert all(p.grad is None for p in model.parameters())  # the step leaves no gradients behind


def test_checkpointed_refuses_more_segments_than_layers():
    from labkit.memory import checkpointed

    with pytest.raises(ValueError, match="segments must be between 1 and"):
        checkpointed(build_model("mlp", "small"), segments=100)


def test_half_precision_about_doubles_the_batch_and_the_layout_moves_no_bytes():
    from labkit.memory import compare_precisions, weight_bytes

    model = build_model("tiny_cnn", "small")
    rows = compare_precisions(model, weight_bytes(model) + 3_000_000,
                              dtypes=(torch.float32, torch.float16), channels_last=(False, True))
    by = {(r.dtype, r.channels_last): r for r in rows}
    assert set(by) == {("float32", False), ("float32", True), ("float16", False), ("float16", True)}
    fp32, fp16 = by["float32", False], by["float16", False]
    assert 1.9 <= fp16.max_batch / fp32.max_batch <= 2.2  # about 2x: not the guide's "2-3x"
    assert fp16.weight_bytes < 0.55 * fp32.weight_bytes
    assert by["float32", True].max_batch == fp32.max_batch
    assert all(r.trials <= 5 for r in rows)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


@pytest.mark.parametrize("segments", [3, 4, 5])
def test_checkpointed_resnet_trains_whatever_the_segments_start_with(segments):
    # ResNet-50's ReLU is in place; a segment that starts with it must not overwrite its saved input
    from labkit.memory import checkpointed

    model = build_model("resnet50", "small").train()
    x = example_batch(model, 2)
    model(x).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    checkpointed(model, segments)(x).square().mean().backward()
    for a, b in zip(plain, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_activation_peak_is_measured_and_the_meta_device_gives_the_same_bytes():
    model = build_model("resnet50", "small")
    x = example_batch(model, 4)
    layers, peak = activation_memory(model, x)
    pairs = max(a.output_bytes + b.output_bytes for a, b in zip(layers, layers[1:], strict=False))
    assert peak > pairs  # a residual block holds its input until the addition
    _, meta_peak = activation_memory(model.to("meta"), x.to("meta"))
    assert abs(meta_peak - peak) <= 0.01 * peak


def test_a_search_that_reaches_its_limit_tries_the_limit_at_once():
    from labkit.memory import search_max_batch

    result = search_max_batch(_synthetic(lambda n: 100 + n, 10**9), 10**9, limit=5000)
    assert result.batch == 5000 and result.capped
    assert len(result.trials) <= 4, [t.batch for t in result.trials]
    assert not search_max_batch(_synthetic(lambda n: 100 + n, 150), 150, limit=5000).capped


# -- the search on memory curves recorded on a real GPU ------------------------------------------


CURVES = [(f"{card} {precision}", curve) for card, precision, curve in recorded_curves()]


def test_memory_curves_were_recorded_on_a_gpu():
    assert any("float32" == name.split()[-1] for name, _ in CURVES), "bench/memory_curve.py output is missing"


@pytest.mark.parametrize(("name", "curve"), CURVES, ids=[name for name, _ in CURVES])
def test_search_on_a_recorded_gpu_curve_is_exact_and_short(name, curve):
    from labkit.memory import search_max_batch
    result = search_max_batch(recorded_trial(curve), curve["budget_bytes"], base_bytes=curve["weight_bytes"])
    assert result.batch == curve["max_batch"]
    assert [t.fits for t in result.trials if t.batch == result.batch + 1] == [False]
    # float32: the reserved/allocated ratio barely moves with the batch, so the line lands at
    # once; half precision caches far more than it needs until the cap presses (search_max_batch)
    most = 5 if "float32" in name else 10
    assert len(result.trials) <= most, [t.batch for t in result.trials]


def _random_curve(rng):
    """A monotone trial: linear, convex or block-rounded peaks; out of memory without a peak, or
    a peak over the budget; or a reserved peak pinned at the budget, as an allocator near its cap."""
    from labkit.memory import Trial

    budget = rng.randint(10**6, 10**10)
    fixed = rng.randint(0, budget // 2)
    per = max(1, int(budget / 10 ** rng.uniform(0.5, 5)))
    kind = rng.choice(["linear", "convex", "blocks", "pinned"])
    curvature = per / rng.choice([10, 1000])
    block = max(1, budget // rng.choice([100, 10_000]))
    ratio = 1 + rng.random()

    def allocated(n):
        return fixed + per * n + (int(curvature * n * n) if kind == "convex" else 0)

    def reserved(n):
        if kind == "blocks":
            return block * math.ceil(allocated(n) / block)
        if kind == "pinned":  # caches freely until the cap, then packs to fit up to 1.1x
            return int(allocated(n) * ratio) if allocated(n) * ratio <= budget else (
                budget if allocated(n) * 1.1 <= budget else budget + 1)
        return allocated(n)

    peak_when_over = kind != "pinned" and rng.random() < 0.5

    def trial(n):
        peak = reserved(n)
        if peak <= budget:
            return Trial(n, True, peak, 0.0, allocated(n))
        return Trial(n, False, peak if peak_when_over else None, 0.0, allocated(n) if peak_when_over else None)

    return trial, budget, fixed, lambda n: reserved(n) <= budget


@pytest.mark.parametrize("seed", range(300))
def test_search_is_exact_and_never_much_worse_than_binary_search(seed):
    import random

    from labkit.memory import search_max_batch

    rng = random.Random(seed)
    trial, budget, base, fits = _random_curve(rng)
    limit = rng.choice([1, 2, 3, rng.randint(4, 100), 1 << 16])
    truth = next((n for n in range(limit, 0, -1) if fits(n)), 0) if limit <= 100 else _truth_by_bisection(fits, limit)
    result = search_max_batch(trial, budget, limit=limit, base_bytes=rng.choice([0, base]))
    assert result.batch == truth
    assert all(1 <= t.batch <= limit for t in result.trials)
    if 0 < truth < limit:
        assert [t.fits for t in result.trials if t.batch == truth + 1] == [False]
    assert len(result.trials) <= 4 * math.ceil(math.log2(limit + 1)) + 6, [t.batch for t in result.trials]


def _truth_by_bisection(fits, limit):
    lo, hi = 0, limit + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def test_search_refuses_a_limit_below_one():
    from labkit.memory import search_max_batch

    with pytest.raises(ValueError, match="limit"):
        search_max_batch(_synthetic(lambda n: n, 10), 10, limit=0)


def test_measuring_a_training_step_or_cutting_segments_leaves_the_model_as_it_was():
    from labkit.memory import checkpointed, training_peak_bytes

    model = build_model("resnet50", "small").train()  # BatchNorm updates its statistics in training mode
    x = example_batch(model, 2)
    model(x).square().mean().backward()  # gradients a fine-tuning loop has accumulated
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    checkpointed(model, 4)
    training_peak_bytes(model, x)
    for before, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, before)
    for before, b in zip(buffers, model.buffers(), strict=True):
        torch.testing.assert_close(b, before)


def test_memory_caps_nest_never_loosen_and_restore(monkeypatch):
    from labkit.memory import cap

    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 100 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: calls.append((f, str(device))))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.9, raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cap, "_CAPS", {})
    with cap.memory_cap(20 * 2**30) as limit:  # "cuda" is the current device, cuda:0
        assert limit == 20 * 2**30
        with cap.memory_cap(50 * 2**30, "cuda:0") as inner:  # looser: the outer cap stays
            assert inner == limit
            with cap.memory_cap(10 * 2**30, torch.device("cuda", 0)):
                pass
        with cap.memory_cap(10**15, "cuda:1") as whole:  # another device: no more than was set before
            assert whole == int(0.9 * 100 * 2**30)
    assert [f for f, _ in calls] == [0.2, 0.2, 0.1, 0.2, 0.2, 0.9, 0.9, 0.9]
    assert {d for _, d in calls} == {"cuda:0", "cuda:1"}
    with pytest.raises(ValueError, match="CUDA"):
        with cap.memory_cap(2**30, "cpu"):
            pass
