"""GraphRunner's contract on a CPU (eager fallback) and ImageBytes; the CUDA side is in tests/gpu."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs import GraphRunner
from labkit.models import ImageBytes, build_model, example_batch, input_spec_of


@pytest.fixture(scope="module")
def cnn():
    return build_model("tiny_cnn", "small")


def test_cpu_falls_back_to_eager_with_the_same_outputs(cnn):
    runner = GraphRunner(cnn)
    assert not runner.graphed
    x = example_batch(cnn, 5, seed=3)
    with torch.no_grad():
        expected = cnn(x)
    torch.testing.assert_close(runner(x), expected)


def test_refuses_inputs_of_another_shape_or_dtype_saying_what_it_expects(cnn):
    runner = GraphRunner(cnn)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(n, 3, 32, 32\)"):
        runner(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="dtype torch.float32"):
        runner(torch.zeros(2, 3, 32, 32, dtype=torch.float64))


def test_padded_size_is_the_smallest_captured_size_that_holds_the_batch(cnn):
    runner = GraphRunner(cnn, batch_sizes=(8, 1, 2, 4))
    assert runner.batch_sizes == (1, 2, 4, 8)
    assert [runner.padded_size(n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def test_needs_a_sample_for_a_model_without_input_spec():
    with pytest.raises(ValueError, match="sample="):
        GraphRunner(torch.nn.Linear(4, 2))
    runner = GraphRunner(torch.nn.Linear(4, 2), sample=torch.zeros(4))
    assert runner(torch.ones(3, 4)).shape == (3, 2)


def test_rejects_empty_or_nonpositive_batch_sizes(cnn):
    for sizes in ((), (0, 4)):
        with pytest.raises(ValueError, match="positive"):
            GraphRunner(cnn, batch_sizes=sizes)


def test_image_bytes_normalises_uint8_like_the_float_pipeline():
    model = build_model("resnet50", "small")
    wrapped = ImageBytes(model).eval()
    assert input_spec_of(wrapped).dtype == torch.uint8
    x = example_batch(wrapped, 2, seed=1)
    assert x.dtype == torch.uint8 and int(x.max()) > 200  # the whole byte range is drawn
    mean = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model((x.float() / 255 - mean) / std), rtol=1e-4, atol=1e-4)


def test_image_bytes_refuses_a_model_that_takes_no_images():
    with pytest.raises(ValueError, match="image inputs"):
        ImageBytes(build_model("mlp", "small"))


def test_the_batcher_takes_device_and_input_spec_from_a_graph_runner(cnn):
    from labkit.batching import DynamicBatcher

    with DynamicBatcher(GraphRunner(cnn)) as batcher:
        assert batcher.device == torch.device("cpu") and batcher.input_spec.shape == (3, 32, 32)
        with pytest.raises(ValueError, match="expected"):
            batcher.submit_sync(torch.zeros(3, 8, 8))
        assert batcher.submit_sync(torch.zeros(3, 32, 32)).shape == (10,)


def test_image_bytes_follows_the_model_to_its_device_and_precision():
    model = build_model("tiny_cnn", "small").to(torch.float64)
    wrapped = ImageBytes(model)
    assert wrapped.scale.dtype == torch.float64 and wrapped.shift.device == torch.device("cpu")
    assert wrapped(example_batch(wrapped, 2)).dtype == torch.float64
