"""MultiModelServer on a CPU: results, per-request errors, a responsive event loop, lifecycle, stats."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from torch import nn

from labkit.models import build_model, example_batch
from labkit.serving import MultiModelServer, ServerStoppedError, UnknownModelError

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


class Slow(nn.Module):
    """Sleeps (as a GPU call waits), then scales its input; raises on a batch whose first value is -1."""

    def __init__(self, factor: float, sleep_s: float = 0.1):
        super().__init__()
        self.factor, self.sleep_s = factor, sleep_s

    def forward(self, x):
        time.sleep(self.sleep_s)
        if x[0, 0] == -1:
            raise ValueError("bad input for this model")
        return x * self.factor


def test_outputs_equal_each_plain_model():
    models = {"mlp": build_model("mlp", "small"), "cnn": build_model("tiny_cnn", "small")}
    inputs = {name: example_batch(m, 3, seed=1) for name, m in models.items()}

    async def main():
        async with MultiModelServer(models) as server:
            return await asyncio.gather(*(server.predict(n, x) for n, x in inputs.items()))

    outs = run(main())
    for (name, x), out in zip(inputs.items(), outs, strict=True):
        with torch.no_grad():
            torch.testing.assert_close(out, models[name](x))


def test_models_run_concurrently_and_the_event_loop_keeps_ticking():
    models = {f"m{i}": Slow(i, sleep_s=0.2) for i in range(4)}
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event):
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def main():
        async with MultiModelServer(models) as server:
            stop = asyncio.Event()
            tick = asyncio.create_task(ticker(stop))
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(server.predict(n, torch.ones(2, 2)) for n in models))
            elapsed = time.perf_counter() - t0
            stop.set()
            await tick
            return outs, elapsed

    outs, elapsed = run(main())
    assert [o[0, 0].item() for o in outs] == [0.0, 1.0, 2.0, 3.0]
    assert elapsed < 0.5  # four 0.2 s models at once, not 0.8 s one after another
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) >= 10 and max(gaps) < 0.1  # never blocked for a model's whole call


def test_requests_to_one_model_stay_in_order():
    async def main():
        async with MultiModelServer({"echo": Slow(1.0, sleep_s=0.001)}) as server:
            return await asyncio.gather(*(server.predict("echo", torch.full((1, 2), float(i))) for i in range(20)))

    assert [o[0, 0].item() for o in run(main())] == list(range(20))


def test_a_failing_request_gets_the_models_error_and_nobody_else_does():
    async def main():
        async with MultiModelServer({"a": Slow(2.0, 0.01), "b": Slow(3.0, 0.01)}) as server:
            results = await asyncio.gather(
                server.predict("a", torch.full((1, 2), -1.0)),
                server.predict("a", torch.ones(1, 2)),
                server.predict("b", torch.ones(1, 2)),
                return_exceptions=True,
            )
            return results, server.stats()

    (bad, good_a, good_b), stats = run(main())
    assert isinstance(bad, ValueError) and "bad input" in str(bad)
    assert good_a[0, 0].item() == 2.0 and good_b[0, 0].item() == 3.0
    assert stats["a"]["errors"] == 1 and stats["a"]["requests"] == 2 and stats["b"]["requests"] == 1


def test_unknown_model_lists_the_models_and_a_stopped_server_refuses():
    server = MultiModelServer({"alpha": Slow(1.0, 0), "beta": Slow(1.0, 0)})

    async def main():
        with pytest.raises(ServerStoppedError, match="not running"):
            await server.predict("alpha", torch.ones(1, 2))
        async with server:
            with pytest.raises(UnknownModelError, match="'gamma'.*'alpha', 'beta'"):
                await server.predict("gamma", torch.ones(1, 2))
            with pytest.raises(TypeError, match="torch.Tensor"):
                await server.predict("alpha", [1.0, 2.0])
        with pytest.raises(ServerStoppedError):
            await server.predict("alpha", torch.ones(1, 2))

    run(main())


def test_stop_finishes_accepted_requests():
    async def main():
        server = MultiModelServer({"slow": Slow(5.0, sleep_s=0.05)})
        await server.start()
        pending = [asyncio.create_task(server.predict("slow", torch.ones(1, 1))) for _ in range(4)]
        await asyncio.sleep(0)  # all four accepted
        await server.stop()
        return await asyncio.gather(*pending), server.stats()

    outs, stats = run(main())
    assert [o.item() for o in outs] == [5.0] * 4
    assert stats["slow"]["requests"] == 4


def test_a_model_served_through_a_dynamic_batcher_takes_single_inputs():
    model = build_model("mlp", "small")
    xs = list(example_batch(model, 6, seed=2))

    async def main():
        async with MultiModelServer({"mlp": model}, batching={"mlp": dict(max_batch_size=4, max_wait_ms=2)}) as server:
            return await asyncio.gather(*(server.predict("mlp", x) for x in xs)), server.stats()

    outs, stats = run(main())
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(outs), model(torch.stack(xs)))
    assert stats["mlp"]["requests"] == 6 and stats["mlp"]["batches"] >= 2 and stats["mlp"]["mean_batch_size"] > 1


def test_batching_for_a_model_that_does_not_exist_is_refused():
    with pytest.raises(UnknownModelError, match="nope"):
        MultiModelServer({"a": Slow(1.0)}, batching={"nope": {}})
    with pytest.raises(ValueError, match="at least one model"):
        MultiModelServer({})


def test_a_start_that_fails_part_way_releases_what_it_started():
    import threading

    server = MultiModelServer({"a": Slow(1.0, 0), "b": Slow(1.0, 0)},
                              batching={"a": dict(max_batch_size=2), "b": dict(max_inflight=0)})

    async def main():
        with pytest.raises(ValueError, match="max_inflight"):
            await server.start()
        with pytest.raises(ServerStoppedError):
            await server.predict("a", torch.ones(2))

    run(main())
    assert not [t for t in threading.enumerate() if t.name.startswith("labkit-")]
