"""Lesson 07's and 08's playgrounds, built headless: a click measures what the controls say."""

from __future__ import annotations

import pytest

from labkit.generation import GPT, GPTConfig
from labkit.ladder import RUNGS, climb
from labkit.models import build_model, example_batch
from labkit.roofline import flops_per_item
from labkit.widgets import generation_playground, ladder_playground

pytest.importorskip("ipywidgets")


def _text(out) -> str:
    return "".join(o.get("text", "") for o in out.outputs if o["output_type"] == "stream")


def test_the_ladder_playground_times_the_chosen_rungs_at_the_chosen_batch():
    model = build_model("tiny_cnn", "small")
    results = climb(model, lambda n: example_batch(model, n), "cpu", batch_sizes=(1, 2),
                    rungs=[RUNGS[0], RUNGS[1], RUNGS[2]], repeat=2)  # TF32 is skipped on a CPU
    playground = ladder_playground(results, lambda n: example_batch(model, n), flops_per_item=flops_per_item(
        model, example_batch(model, 1)), card="CPU", device="cpu", batch_sizes=(1, 4), ceiling_tflops=0.05)
    rungs, (batch, run) = playground.children[0].children[0], playground.children[0].children[1].children
    out = playground.children[1]
    assert rungs.options == ("fp32, TF32 off", "channels_last")  # only rungs that ran here
    rungs.value, batch.value = ("channels_last",), 4
    run.click()
    text = _text(out)
    assert "channels_last" in text and "fp32, TF32 off" not in text and "of the measured matmul ceiling" in text
    assert any(o["output_type"] == "display_data" for o in out.outputs)


def test_the_generation_playground_serves_one_trace_through_both_batchers():
    model = GPT(GPTConfig(context=96, n_layer=1, n_head=2, d_model=32)).eval()
    playground = generation_playground(model, n=6, static_batch=2)
    (rate, longest), (block, budget, run) = playground.children[0].children, playground.children[1].children
    out = playground.children[2]
    rate.value, longest.value, block.value, budget.value = 1000, 16, 8, 0.5
    run.click()
    text = _text(out)
    assert "6 requests at 1,000/s" in text and "outputs 4-16 tokens" in text
    assert "static" in text and "continuous" in text and text.count("tokens/s") == 2
    assert any(o["output_type"] == "display_data" for o in out.outputs)
