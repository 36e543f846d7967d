import torch

from labkit.models import build_model, example_batch
from labkit.overhead import async_trap, count_operators


def test_count_operators_resnet50_top_level():
    model = build_model("resnet50", "small", "cpu")
    count = count_operators(model, example_batch(model, 1))
    ops = count.operators
    assert (ops["aten::conv2d"], ops["aten::batch_norm"], ops["aten::relu_"], ops["aten::add"]) == (53, 53, 49, 16)
    assert count.total == 175
    assert count.kernels is None  # a CPU launches no kernels
    assert "aten::convolution" not in ops  # counted at the level the modules call


def test_count_operators_small_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    count = count_operators(model, torch.randn(2, 4))
    assert count.operators == {"aten::linear": 1, "aten::relu": 1}


def test_async_trap_on_cpu_has_three_positive_timings():
    trap = async_trap("cpu", n=64, repeat=3)
    assert min(trap.unsynced_wall_ms, trap.synced_wall_ms, trap.event_ms) > 0
