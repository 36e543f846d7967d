"""labkit.parallel.data: split_sizes, scaling_efficiency and DataParallel on CPU stand-ins."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
from torch import nn

from labkit.device import devices
from labkit.models import build_model, example_batch
from labkit.parallel import DataParallel, scaling_efficiency, split_sizes

pytestmark = pytest.mark.timeout(120)

MODELS = ["mlp", "tiny_cnn", "transformer", "resnet50"]
BATCH_SIZES = [1, 2, 7, 13]
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build_model(name, "small", seed=0) for name in MODELS}


class RowRecorder(nn.Module):
    """Returns the first column of its input (which identifies the row) and records, per call,
    which rows it saw and when it finished. ``gate``, when set, is waited on before computing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []
        self.finished: list[float] = []
        self.gate: threading.Event | None = None
        self.done: threading.Event | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            assert self.gate.wait(10), "the other replicas never finished"
        self.seen.append(x[:, 0].long().tolist())
        self.finished.append(time.perf_counter())
        if self.done is not None:
            self.done.set()
        return x[:, :1] * 1


def rows(n: int, width: int = 4) -> torch.Tensor:
    """Row i holds i in every column."""
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, width)


def dp_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("labkit-dp-")}


# --- split_sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "shares", "expected"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (9, [1, 1, 1], [3, 3, 3]),
        (11, [1, 1, 1], [4, 4, 3]),
        (8, [3, 1], [6, 2]),
        (7, [3, 1], [5, 2]),  # exact 5.25 / 1.75: the larger remainder (0.75) gets the spare item
        (10, [1, 2, 2], [2, 4, 4]),
        (10, [0.1, 0.2, 0.7], [1, 2, 7]),  # floating-point shares that sum to ~1
        (5, [0, 1, 0], [0, 5, 0]),
        (3, [1, 1, 0], [2, 1, 0]),
        (0, [1, 1], [0, 0]),
        (1, [1, 1, 1], [1, 0, 0]),
        (2, [1, 1, 1], [1, 1, 0]),
        (1, [1, 3], [0, 1]),
        (100, [1], [100]),
    ],
)
def test_split_sizes_examples(n, shares, expected):
    assert split_sizes(n, shares) == expected


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_split_sizes_sums_to_n_and_follows_shares(k):
    g = torch.Generator().manual_seed(k)
    for n in range(0, 60):
        shares = (torch.rand(k, generator=g) * 5).tolist()
        if k > 2:
            shares[1] = 0.0
        sizes = split_sizes(n, shares)
        assert len(sizes) == k
        assert sum(sizes) == n
        assert all(s >= 0 for s in sizes)
        total = sum(shares)
        for size, share in zip(sizes, shares, strict=True):
            # largest remainder: every size is the floor or the ceiling of its exact share
            assert abs(size - n * share / total) < 1
            if share == 0:
                assert size == 0


def test_split_sizes_equal_shares_differ_by_at_most_one():
    for k in range(1, 6):
        for n in range(0, 30):
            sizes = split_sizes(n, [1.0] * k)
            assert max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)  # the spares go to the first devices


@pytest.mark.parametrize(
    ("n", "shares"),
    [(-1, [1, 1]), (5, []), (5, [1, -1]), (5, [0, 0]), (5, [-1, -2])],
)
def test_split_sizes_rejects_invalid_input(n, shares):
    with pytest.raises(ValueError):
        split_sizes(n, shares)


# --- scaling_efficiency ------------------------------------------------------------------------


def test_scaling_efficiency_math():
    assert scaling_efficiency(400.0, 100.0, 4) == pytest.approx(1.0)
    assert scaling_efficiency(300.0, 100.0, 4) == pytest.approx(0.75)
    assert scaling_efficiency(100.0, 100.0, 1) == pytest.approx(1.0)
    assert scaling_efficiency(150.0, 100.0, 2) == pytest.approx(0.75)
    assert scaling_efficiency(50.0, 100.0, 2) == pytest.approx(0.25)  # slower than one device
    assert scaling_efficiency(0.0, 10.0, 3) == 0.0


@pytest.mark.parametrize(("tn", "t1", "n"), [(100.0, 100.0, 0), (100.0, 100.0, -2), (100.0, 0.0, 2), (100.0, -1.0, 2)])
def test_scaling_efficiency_rejects_invalid_input(tn, t1, n):
    with pytest.raises(ValueError):
        scaling_efficiency(tn, t1, n)


# --- DataParallel: equal to the model ----------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_data_parallel_equals_the_model(models, name, k):
    model = models[name]
    devs = devices(k, "cpu")
    with DataParallel(model, devs) as dp:
        assert len(dp.replicas) == k
        for n in BATCH_SIZES:
            x = example_batch(model, n, seed=n)
            with torch.no_grad():
                expected = model(x)
            out = dp(x)
            assert out.shape == expected.shape
            assert out.device.type == "cpu"
            assert torch.allclose(out, expected, **TOL), f"{name} on {k} devices, batch {n}"


def test_data_parallel_replicas_are_copies(models):
    model = models["mlp"]
    before = copy.deepcopy(model.state_dict())
    with DataParallel(model, devices(2, "cpu")) as dp:
        assert all(r is not model for r in dp.replicas)
        assert dp.replicas[0] is not dp.replicas[1]
        assert all(not r.training for r in dp.replicas)
        dp(example_batch(model, 3))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


# --- DataParallel: order and shares ------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
def test_outputs_stay_in_input_order_when_the_first_device_finishes_last(k):
    """The guide's as_completed gather returns chunks in finishing order: here chunk 0 is
    forced to finish after every other chunk, and the rows must still come back in order."""
    n = 13
    with DataParallel(RowRecorder(), devices(k, "cpu")) as dp:
        others = []
        for replica in dp.replicas[1:]:
            replica.done = threading.Event()
            others.append(replica.done)
        gate = threading.Event()
        dp.replicas[0].gate = gate
        # gate opens once every other replica has finished its chunk
        waiter = threading.Thread(target=lambda: (all(e.wait(10) for e in others), gate.set()), daemon=True)
        waiter.start()
        out = dp(rows(n))
        waiter.join(10)
        first_done = dp.replicas[0].finished[0]
        assert all(first_done > r.finished[0] for r in dp.replicas[1:]), "chunk 0 did not finish last"
    assert torch.equal(out, torch.arange(n, dtype=torch.float32)[:, None])


def test_outputs_stay_in_input_order_with_a_slow_first_device(monkeypatch):
    """The same with a slow device 0 (a sleep in the worker), over repeated calls."""
    with DataParallel(RowRecorder(), devices(3, "cpu")) as dp:
        run = dp._run

        def slow_first(replica, device, chunk):
            if replica is dp.replicas[0]:
                time.sleep(0.05)
            return run(replica, device, chunk)

        monkeypatch.setattr(dp, "_run", slow_first)
        for n in [3, 7, 13]:
            out = dp(rows(n))
            assert torch.equal(out[:, 0], torch.arange(n, dtype=torch.float32))
        assert dp.replicas[0].finished[-1] > dp.replicas[2].finished[-1]


@pytest.mark.parametrize(
    ("shares", "n", "expected"),
    [
        ((3, 1), 8, [6, 2]),
        ((3, 1), 13, [10, 3]),
        ((1, 1, 1), 10, [4, 3, 3]),
        ((1, 0), 5, [5, 0]),
        ((0, 1, 1), 5, [0, 3, 2]),
        ((1, 1, 1), 1, [1, 0, 0]),  # fewer items than devices
        ((1, 1, 1), 2, [1, 1, 0]),
    ],
)
def test_shares_split_the_batch_into_contiguous_chunks(shares, n, expected):
    with DataParallel(RowRecorder(), devices(len(shares), "cpu"), shares=shares) as dp:
        out = dp(rows(n))
        start = 0
        for replica, size in zip(dp.replicas, expected, strict=True):
            if size == 0:
                assert replica.seen == []  # an empty chunk is not run at all
            else:
                assert replica.seen == [list(range(start, start + size))]
            start += size
    assert torch.equal(out[:, 0], torch.arange(n, dtype=torch.float32))


def test_uneven_shares_equal_the_model(models):
    model = models["tiny_cnn"]
    x = example_batch(model, 13, seed=1)
    with torch.no_grad():
        expected = model(x)
    with DataParallel(model, devices(2, "cpu"), shares=[3, 1]) as dp:
        assert torch.allclose(dp(x), expected, **TOL)


def test_invalid_construction_raises():
    model = RowRecorder()
    with pytest.raises(ValueError):
        DataParallel(model, [])
    with pytest.raises(ValueError):
        DataParallel(model, devices(2, "cpu"), shares=[1, 1, 1])
    with pytest.raises(ValueError):
        DataParallel(model, devices(3, "cpu"), shares=[1])
    with pytest.raises(ValueError):
        DataParallel(model, devices(2, "cpu"), shares=[0, 0])
    with pytest.raises(ValueError):
        DataParallel(model, devices(2, "cpu"), shares=[1, -1])


# --- DataParallel: lifecycle -------------------------------------------------------------------


def test_close_stops_the_worker_threads():
    before = dp_threads()
    dp = DataParallel(RowRecorder(), devices(3, "cpu"))
    dp(rows(6))
    started = dp_threads() - before
    assert len(started) == 3
    assert all(t.is_alive() for t in started)
    dp.close()
    assert not any(t.is_alive() for t in started)


def test_context_manager_stops_the_worker_threads():
    before = dp_threads()
    with DataParallel(RowRecorder(), devices(2, "cpu")) as dp:
        assert isinstance(dp, DataParallel)
        dp(rows(4))
        started = dp_threads() - before
        assert len(started) == 2
    assert not any(t.is_alive() for t in started)


def test_context_manager_closes_on_error():
    before = dp_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with DataParallel(RowRecorder(), devices(2, "cpu")) as dp:
            dp(rows(4))
            started = dp_threads() - before
            raise RuntimeError("inside")
    assert started and not any(t.is_alive() for t in started)


def test_replica_error_reaches_the_caller():
    class Fails(nn.Module):
        def forward(self, x):
            if (x[:, 0] == 5).any():
                raise KeyError("row 5")
            return x

    with DataParallel(Fails(), devices(2, "cpu")) as dp:
        with pytest.raises(KeyError, match="row 5"):
            dp(rows(8))
        assert torch.equal(dp(rows(4)), rows(4))  # still usable afterwards
