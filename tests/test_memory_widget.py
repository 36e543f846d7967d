"""labkit.widgets.memory_playground, built headless: its controls drive `find_max_batch`."""

from __future__ import annotations

import pytest

from labkit.memory import find_max_batch
from labkit.models import build_model, example_batch
from labkit.widgets import memory_playground  # ipywidgets is imported when a playground is built

pytest.importorskip("ipywidgets")


def _parts(playground):
    model_box, precision, budget, run = playground.children[0].children
    return model_box, precision, budget, run, playground.children[1]


def _text(out) -> str:
    return "".join(o.get("text", "") for o in out.outputs if o["output_type"] == "stream")


def test_the_default_case_is_found_when_the_playground_is_built():
    model_box, precision, budget, _, out = _parts(memory_playground("cpu", budget_mib=1))
    assert (model_box.value, precision.value, budget.value) == ("tiny_cnn", "float32", 1)
    model = build_model("tiny_cnn", "small")
    truth = find_max_batch(model, example_batch(model, 1)[0], budget_bytes=2**20).batch
    assert truth > 0
    text = _text(out)
    assert "CPU, simulated budget" in text and "not a device limit" in text
    assert f"largest batch: {truth:,} ({truth:,} fits, {truth + 1:,} does not)" in text
    assert f"predicted from the first two trials: {truth:,}" in text  # activations are linear in the batch
    assert any(o["output_type"] == "display_data" for o in out.outputs)  # the trial chart


def test_a_run_follows_the_controls_and_half_precision_fits_weights_that_float32_cannot():
    model_box, precision, budget, run, out = _parts(memory_playground("cpu", budget_mib=1))
    model_box.value, budget.value = "resnet50", 64  # ResNet-50's float32 weights alone are 98 MiB
    run.click()
    text = _text(out)
    assert "resnet50 (small) in float32, budget 64 MiB" in text
    assert "largest batch: 0 (not even one input fits: the weights alone need 97.7 MiB)" in text
    precision.value = "float16"
    run.click()
    text = _text(out)
    assert "in float16" in text and "weights: 48.85 MiB" in text
    assert "largest batch: 0" not in text and "does not)" in text


def test_mlp_in_half_precision_fits_more_than_twice_the_batch_on_a_tight_budget():
    model_box, precision, budget, run, out = _parts(memory_playground("cpu", budget_mib=4))
    found = {}
    for dtype in ("float32", "bfloat16"):
        model_box.value, precision.value = "mlp", dtype
        run.click()
        line = next(s for s in _text(out).splitlines() if "largest batch:" in s)
        found[dtype] = int(line.split("largest batch:")[1].split("(")[0].replace(",", ""))
    # 1.5 MiB of weights in a 4 MiB budget: halving them frees room on top of the 2x from activations
    assert found["bfloat16"] > 2 * found["float32"] > 0
