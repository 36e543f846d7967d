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
    assert [(e.stage, e.micro_batch) for e in pipe.timeline] == [(1, 0), (1, 1), (1, 2)]
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
    from labkit.parallel import StageEvent
    from labkit.streams import STAGES

    events = [StageEvent(0.0, 0.001, 0, 0), StageEvent(0.001, 0.003, 1, 0), StageEvent(0.003, 0.004, 2, 0)]
    fig = plots.plot_pipeline_timeline(events, stages=3, title="one batch", stage_names=STAGES)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(STAGES)
