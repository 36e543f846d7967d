"""labkit.parallel.pipeline: split_stages and PipelineParallel on CPU stand-ins."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch
from torch import nn

from labkit.device import devices
from labkit.models import build_model, example_batch, sequential_layers
from labkit.parallel import PipelineParallel, split_stages
from labkit.timeline import StageEvent, bubble_fraction

pytestmark = pytest.mark.timeout(120)

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build_model(name, "small", seed=0) for name in ["mlp", "tiny_cnn", "resnet50"]}


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("labkit-stage-") and t.is_alive()]


def overlapping_pairs(timeline) -> list[tuple[StageEvent, StageEvent]]:
    """Pairs of events of different stages whose [start_s, end_s] intervals intersect."""
    return [(a, b) for a, b in itertools.combinations(timeline, 2)
            if a.stage != b.stage and a.start_s < b.end_s and b.start_s < a.end_s]


def check_timeline(pipe: PipelineParallel, n_items: int) -> None:
    n_stages = len(pipe.stages)
    n_micro = -(-n_items // pipe.micro_batch_size)
    timeline = pipe.timeline
    assert len(timeline) == n_stages * n_micro
    assert {(e.stage, e.item) for e in timeline} == set(itertools.product(range(n_stages), range(n_micro)))
    assert timeline == sorted(timeline)
    assert all(0 <= e.start_s <= e.end_s for e in timeline)
    at = {(e.stage, e.item): e for e in timeline}
    for s, m in itertools.product(range(n_stages), range(n_micro)):
        if s > 0:  # a stage starts a micro-batch only once the stage before it is done with it
            assert at[s, m].start_s >= at[s - 1, m].end_s
        if m > 0:  # one thread per stage: its micro-batches run one after another, in order
            assert at[s, m].start_s >= at[s, m - 1].end_s
    assert 0.0 <= pipe.bubble < 1.0
    assert pipe.bubble == bubble_fraction(timeline, n_stages)


class Sleep(nn.Module):
    """Sleeps, then adds ``add``: a stage whose busy time is known and releases the GIL."""

    def __init__(self, seconds: float, add: float = 0.0) -> None:
        super().__init__()
        self.seconds, self.add = seconds, add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x + self.add


class Boom(Exception):
    pass


class RaiseOn(nn.Module):
    """Raises `Boom` when it sees ``value`` in its input; else passes the input on."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if (x == self.value).any():
            raise Boom(f"saw {self.value}")
        return x * 1


def rows(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)


# --- split_stages ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "tiny_cnn", "resnet50"])
def test_split_stages_is_contiguous_non_empty_and_complete(models, name):
    layers = sequential_layers(models[name])
    for n in range(1, len(layers) + 1):
        stages = split_stages(layers, n)
        assert len(stages) == n
        assert all(isinstance(s, nn.Sequential) and len(s) > 0 for s in stages)
        flat = [layer for stage in stages for layer in stage]
        assert len(flat) == len(layers)
        assert all(a is b for a, b in zip(flat, layers, strict=True))  # the same layers, in order


def test_split_stages_balances_parameters():
    layers = [nn.Linear(8, 8) for _ in range(8)]
    for n, size in [(1, 8), (2, 4), (4, 2), (8, 1)]:
        assert [len(s) for s in split_stages(layers, n)] == [size] * n
    # a heavy layer: the first stage closes right after it
    layers = [nn.Linear(2, 2), nn.Linear(100, 100), nn.Linear(2, 2), nn.Linear(2, 2)]
    assert [len(s) for s in split_stages(layers, 2)] == [2, 2]


def test_split_stages_random_sizes_never_leave_a_stage_empty():
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        count = int(torch.randint(1, 9, (1,), generator=g))
        layers = [nn.Linear(int(w), 2) for w in torch.randint(1, 50, (count,), generator=g)]
        for n in range(1, count + 1):
            stages = split_stages(layers, n)
            assert [len(s) > 0 for s in stages] == [True] * n
            assert [layer for s in stages for layer in s] == layers


def test_split_stages_rejects_bad_counts(models):
    layers = sequential_layers(models["mlp"])
    with pytest.raises(ValueError):
        split_stages(layers, len(layers) + 1)
    with pytest.raises(ValueError):
        split_stages(layers, 0)
    with pytest.raises(ValueError):
        split_stages([], 1)


# --- PipelineParallel: equal to the model ------------------------------------------------------


@pytest.mark.parametrize("mbs", [1, 2, 4])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", ["mlp", "tiny_cnn"])
def test_pipeline_equals_the_model(models, name, k, mbs):
    model = models[name]
    pipe = PipelineParallel(split_stages(sequential_layers(model), k), devices(k, "cpu"), mbs)
    for n in [1, 7, 13]:
        x = example_batch(model, n, seed=n)
        with torch.no_grad():
            expected = model(x)
        out = pipe(x)
        assert out.shape == expected.shape and out.device.type == "cpu"
        assert torch.allclose(out, expected, **TOL), f"{name}, {k} stages, micro-batch {mbs}, batch {n}"
        check_timeline(pipe, n)
        seq = pipe.run_sequential(x)
        assert torch.allclose(seq, expected, **TOL)
        check_timeline(pipe, n)
    assert stage_threads() == []


@pytest.mark.parametrize(("k", "mbs", "n"), [(2, 4, 7), (3, 2, 13)])
def test_pipeline_equals_resnet50(models, k, mbs, n):
    model = models["resnet50"]
    pipe = PipelineParallel(split_stages(sequential_layers(model), k), devices(k, "cpu"), mbs)
    x = example_batch(model, n, seed=n)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(pipe(x), expected, **TOL)
    check_timeline(pipe, n)
    assert torch.allclose(pipe.run_sequential(x), expected, **TOL)


@pytest.mark.parametrize("queue_depth", [1, 2, 5])
def test_pipeline_keeps_input_order(queue_depth):
    stages = [Sleep(0.0, 1.0), Sleep(0.001, 10.0), Sleep(0.0, 100.0)]
    pipe = PipelineParallel(stages, devices(3, "cpu"), 2, queue_depth=queue_depth)
    x = rows(11)
    assert torch.equal(pipe(x), x + 111)
    assert torch.equal(pipe.run_sequential(x), x + 111)


def test_single_stage_pipeline(models):
    model = models["mlp"]
    pipe = PipelineParallel([nn.Sequential(*sequential_layers(model))], ["cpu"], 3)
    x = example_batch(model, 7)
    with torch.no_grad():
        assert torch.allclose(pipe(x), model(x), **TOL)
    check_timeline(pipe, 7)


# --- PipelineParallel: overlap -----------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
def test_pipelined_stages_overlap_and_sequential_ones_do_not(k):
    stages = [Sleep(0.02) for _ in range(k)]
    pipe = PipelineParallel(stages, devices(k, "cpu"), 1)
    x = rows(6)
    assert torch.equal(pipe(x), x)
    check_timeline(pipe, 6)
    pairs = overlapping_pairs(pipe.timeline)
    assert pairs, "no two stages were ever busy at the same time"
    assert {frozenset((a.stage, b.stage)) for a, b in pairs} >= {frozenset((s, s + 1)) for s in range(k - 1)}
    pipelined_bubble = pipe.bubble
    # ideal: (k - 1) / (6 + k - 1) idle; one stage at a time: (k - 1) / k idle
    assert pipelined_bubble < (k - 1) / k - 0.1

    assert torch.equal(pipe.run_sequential(x), x)
    check_timeline(pipe, 6)
    assert overlapping_pairs(pipe.timeline) == []
    assert pipe.bubble > pipelined_bubble


def test_pipelined_real_model_overlaps(models):
    model = models["tiny_cnn"]
    pipe = PipelineParallel(split_stages(sequential_layers(model), 2), devices(2, "cpu"), 2)
    x = example_batch(model, 16)
    for _ in range(3):  # the OS may schedule one thread at a time now and then: three tries
        pipe(x)
        if overlapping_pairs(pipe.timeline):
            break
    assert overlapping_pairs(pipe.timeline), "the stages of a real model never overlapped"
    pipe.run_sequential(x)
    assert overlapping_pairs(pipe.timeline) == []


# --- PipelineParallel: errors and threads ------------------------------------------------------


@pytest.mark.parametrize(("stage", "k"), [(0, 2), (1, 2), (1, 3), (2, 3)])
def test_a_stage_error_reaches_the_caller(stage, k):
    """Row 5 is in micro-batch 2 (micro-batches of 2): the stage raises there."""
    stages: list[nn.Module] = [Sleep(0.0) for _ in range(k)]
    stages[stage] = RaiseOn(5.0)
    pipe = PipelineParallel(stages, devices(k, "cpu"), 2)
    with pytest.raises(Boom, match="saw 5.0") as info:
        pipe(rows(12))
    notes = getattr(info.value, "__notes__", [])
    assert any(f"stage {stage}" in note and "micro-batch 2" in note for note in notes), notes
    assert stage_threads() == []
    # micro-batches 0 and 1 went through; after its error on 2, the stage computes nothing more
    assert stages[stage].calls == 3
    # the pipeline still works afterwards, on inputs without the marked value
    x = rows(4)
    assert torch.equal(pipe(x), x)
    check_timeline(pipe, 4)
    assert stage_threads() == []


def test_run_sequential_error_reaches_the_caller():
    pipe = PipelineParallel([Sleep(0.0), RaiseOn(3.0)], devices(2, "cpu"), 2)
    with pytest.raises(Boom):
        pipe.run_sequential(rows(6))


def test_error_on_the_first_micro_batch_with_a_small_queue():
    pipe = PipelineParallel([RaiseOn(0.0), Sleep(0.0)], devices(2, "cpu"), 1, queue_depth=1)
    with pytest.raises(Boom) as info:
        pipe(rows(20))
    assert any("stage 0" in n and "micro-batch 0" in n for n in info.value.__notes__)
    assert stage_threads() == []


def test_a_successful_call_leaves_no_stage_thread(models):
    model = models["mlp"]
    pipe = PipelineParallel(split_stages(sequential_layers(model), 3), devices(3, "cpu"), 2)
    pipe(example_batch(model, 9))
    assert stage_threads() == []


def test_invalid_arguments_raise(models):
    stages = split_stages(sequential_layers(models["mlp"]), 2)
    with pytest.raises(ValueError):
        PipelineParallel(stages, devices(3, "cpu"), 2)
    with pytest.raises(ValueError):
        PipelineParallel(stages, devices(1, "cpu"), 2)
    with pytest.raises(ValueError):
        PipelineParallel([], [], 2)
    with pytest.raises(ValueError):
        PipelineParallel(stages, devices(2, "cpu"), 0)
    with pytest.raises(ValueError):
        PipelineParallel(stages, devices(2, "cpu"), 2, queue_depth=0)


def test_empty_batch_raises(models):
    pipe = PipelineParallel(split_stages(sequential_layers(models["mlp"]), 2), devices(2, "cpu"), 2)
    empty = torch.empty(0, 256)
    with pytest.raises(ValueError, match="empty"):
        pipe(empty)
    with pytest.raises(ValueError, match="empty"):
        pipe.run_sequential(empty)
    assert stage_threads() == []


@pytest.mark.gpu
def test_each_stage_keeps_its_stream_across_calls(models):
    """A fresh pool stream per call would start each call with an empty allocator cache."""
    model = models["mlp"]
    pipe = PipelineParallel(split_stages(sequential_layers(model), 2), devices(2, "cuda"), 4)
    streams = list(pipe.streams)
    assert all(s is not None for s in streams)
    x = example_batch(model, 16, device="cpu")
    with torch.no_grad():
        expected = model.to("cuda")(x.cuda()).cpu()
    for _ in range(3):
        torch.testing.assert_close(pipe(x), expected, **TOL)
    assert pipe.streams == streams
    assert stage_threads() == []
