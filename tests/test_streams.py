"""StreamPipeline and simple_loop on a CPU (the CUDA side is in tests/gpu)."""

from __future__ import annotations

import pytest
import torch

from labkit.models import build_model, example_batch
from labkit.streams import StreamPipeline, simple_loop


@pytest.fixture(scope="module")
def cnn():
    return build_model("tiny_cnn", "small")


def test_outputs_equal_the_model_in_order_for_batches_of_any_size(cnn):
    batches = [example_batch(cnn, n, seed=n) for n in (4, 1, 7, 3, 4)]
    pipe = StreamPipeline(cnn, buffers=2)
    outs = pipe.run(batches)
    with torch.no_grad():
        expected = [cnn(x) for x in batches]
    assert [len(o) for o in outs] == [4, 1, 7, 3, 4]
    for out, ref in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(outs, simple_loop(cnn, batches, "cpu"), strict=True))


def test_recorded_timeline_has_one_compute_event_per_batch_on_a_cpu(cnn):
    pipe = StreamPipeline(cnn)
    pipe.run([example_batch(cnn, 2, seed=i) for i in range(3)], record=True)
    assert [(e.stage, e.item) for e in pipe.timeline] == [(1, 0), (1, 1), (1, 2)]
    assert all(0 <= e.start_s <= e.end_s for e in pipe.timeline)
    pipe.run([example_batch(cnn, 2)])
    assert pipe.timeline == []  # not recorded unless asked


def test_buffers_must_be_positive(cnn):
    with pytest.raises(ValueError, match="buffers"):
        StreamPipeline(cnn, buffers=0)


def test_graph_runner_is_offered_here_too():
    from labkit.graphs import GraphRunner as G
    from labkit.streams import GraphRunner

    assert GraphRunner is G


def test_the_timeline_plot_names_the_stream_stages(cnn):
    from labkit import plots
    from labkit.streams import STAGES
    from labkit.timeline import StageEvent

    events = [StageEvent(0.0, 0.001, 0, 0), StageEvent(0.001, 0.003, 1, 0), StageEvent(0.003, 0.004, 2, 0)]
    fig = plots.plot_pipeline_timeline(events, stages=3, title="one batch", stage_names=STAGES)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(STAGES)


class FailsOn(torch.nn.Module):
    """Adds one to its input, and raises on the batches whose first value is in ``bad``."""

    def __init__(self, bad: set[float]) -> None:
        super().__init__()
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.flatten()[0]) in self.bad:
            raise RuntimeError(f"bad batch {float(x.flatten()[0])}")
        return x + 1


@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_a_run_that_raises_leaves_nothing_for_the_next_run(buffers):
    # the slots are the same on a CPU as on a GPU: batches 0 and 1 sit in them when batch 2 raises
    pipe = StreamPipeline(FailsOn({2.0}), buffers=buffers, device="cpu")
    with pytest.raises(RuntimeError, match="bad batch 2"):
        pipe.run([torch.full((3, 2), float(i)) for i in range(5)])
    batches = [torch.full((2, 2), 10.0 + i) for i in range(4)]
    outs = pipe.run(batches)
    assert len(outs) == 4  # this run's outputs only, none of the failed run's
    assert all(torch.equal(o, b + 1) for o, b in zip(outs, batches, strict=True))
