"""labkit.parallel on a real CUDA device. Skipped without one (see tests/conftest.py).

`devices(2)` names two GPUs where there are two, and the one GPU twice where there is one: either
way the CUDA code paths (pinned copies, per-stage streams, pre-hooks moving activations) run.
"""

from __future__ import annotations

import copy
import itertools
import threading

import pytest
import torch
from torch import nn

from labkit.device import devices
from labkit.models import build_model, example_batch, sequential_layers
from labkit.parallel import DataParallel, ModelParallel, PipelineParallel, split_stages

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(180)]

TOL = dict(rtol=1e-4, atol=1e-4)
SLEEP_CYCLES = 20_000_000  # about 10-30 ms of GPU time at any plausible SM clock


@pytest.fixture(autouse=True)
def exact_fp32():
    """Plain fp32 (no TF32) so the parallel runs and the direct call compute the same thing."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.init()
    yield
    torch.cuda.synchronize()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def cpu_models() -> dict[str, nn.Module]:
    return {name: build_model(name, "small", seed=0) for name in ["mlp", "tiny_cnn", "resnet50", "transformer"]}


def direct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model`` (a CPU model) run on cuda:0 on the whole batch, the result back on the CPU."""
    on_gpu = copy.deepcopy(model).to("cuda")
    with torch.no_grad():
        out = on_gpu(x.to("cuda")).cpu()
    torch.cuda.synchronize()
    return out


def overlapping_pairs(timeline):
    return [(a, b) for a, b in itertools.combinations(timeline, 2)
            if a.stage != b.stage and a.start_s < b.end_s and b.start_s < a.end_s]


def no_stage_threads() -> bool:
    return not any(t.name.startswith("labkit-stage-") and t.is_alive() for t in threading.enumerate())


class GpuSleep(nn.Module):
    """Keeps its stream busy for a fixed number of cycles, then adds ``add``."""

    def __init__(self, add: float) -> None:
        super().__init__()
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(SLEEP_CYCLES)
        return x + self.add


def test_devices_are_cuda():
    devs = devices(2)
    assert [d.type for d in devs] == ["cuda", "cuda"]


@pytest.mark.parametrize("name", ["mlp", "tiny_cnn", "resnet50", "transformer"])
def test_data_parallel_on_cuda_equals_the_model(cpu_models, name):
    model = cpu_models[name]
    with DataParallel(model, devices(2)) as dp:
        assert all(next(r.parameters()).device.type == "cuda" for r in dp.replicas)
        for n in [1, 7, 13]:
            x = example_batch(model, n, device="cpu", seed=n)
            expected = direct(model, x)
            out = dp(x)  # from (pinned) CPU memory
            assert out.device.type == "cpu"
            assert torch.allclose(out, expected, **TOL), f"{name}, batch {n}"
            out = dp(x.to("cuda"))  # already on the GPU
            assert out.device.type == "cpu"
            assert torch.allclose(out, expected, **TOL), f"{name}, batch {n}, input on cuda"


def test_data_parallel_uneven_shares_on_cuda(cpu_models):
    model = cpu_models["resnet50"]
    x = example_batch(model, 13, device="cpu", seed=3)
    with DataParallel(model, devices(2), shares=[3, 1], pin_memory=False) as dp:
        assert torch.allclose(dp(x), direct(model, x), **TOL)


@pytest.mark.parametrize("name", ["mlp", "tiny_cnn", "resnet50", "transformer"])
def test_model_parallel_balanced_on_cuda_equals_the_model(cpu_models, name):
    model = cpu_models[name]
    devs = devices(2)
    mp = ModelParallel(copy.deepcopy(model), "balanced", devices=devs)
    assert set(mp.placement.values()) == set(devs)
    assert all(p.device.type == "cuda" for p in mp.parameters())
    for n in [1, 7]:
        x = example_batch(model, n, device="cpu", seed=n)
        expected = direct(model, x)
        with torch.no_grad():
            out = mp(x)  # a CPU input goes to the first device
        assert out.device == devs[-1]  # the output stays on the last layer's device
        assert torch.allclose(out.cpu(), expected, **TOL), f"{name}, batch {n}"


def test_model_parallel_output_device_cpu(cpu_models):
    model = cpu_models["resnet50"]
    mp = ModelParallel(copy.deepcopy(model), "balanced", devices=devices(2), output_device="cpu")
    x = example_batch(model, 5, device="cpu")
    with torch.no_grad():
        out = mp(x)
    assert out.device.type == "cpu"
    assert torch.allclose(out, direct(model, x), **TOL)


@pytest.mark.parametrize(("name", "mbs"), [("mlp", 2), ("tiny_cnn", 4), ("resnet50", 4)])
def test_pipeline_on_cuda_equals_the_model(cpu_models, name, mbs):
    model = cpu_models[name]
    pipe = PipelineParallel(split_stages(sequential_layers(copy.deepcopy(model)), 2), devices(2), mbs)
    assert all(p.device.type == "cuda" for s in pipe.stages for p in s.parameters())
    for n in [1, 7, 13]:
        x = example_batch(model, n, device="cpu", seed=n)
        expected = direct(model, x)
        out = pipe(x)
        assert out.device.type == "cpu"
        assert torch.allclose(out, expected, **TOL), f"{name}, micro-batch {mbs}, batch {n}"
        assert len(pipe.timeline) == 2 * -(-n // mbs)
        seq = pipe.run_sequential(x)
        assert seq.device.type == "cpu"
        assert torch.allclose(seq, expected, **TOL)
    assert no_stage_threads()


def test_pipeline_on_cuda_overlaps_with_sleep_kernels():
    pipe = PipelineParallel([GpuSleep(1.0), GpuSleep(10.0)], devices(2), 1)
    x = torch.arange(6, dtype=torch.float32)[:, None]
    out = pipe(x)
    assert out.device.type == "cpu"
    assert torch.equal(out, x + 11)
    assert len(pipe.timeline) == 12
    assert overlapping_pairs(pipe.timeline), "no two stages were ever busy at the same time"
    pipelined = pipe.bubble
    assert torch.equal(pipe.run_sequential(x), x + 11)
    assert overlapping_pairs(pipe.timeline) == []
    assert pipe.bubble > pipelined
    assert no_stage_threads()


def test_pipeline_on_cuda_overlaps_on_a_real_model(cpu_models):
    model = cpu_models["resnet50"]
    pipe = PipelineParallel(split_stages(sequential_layers(copy.deepcopy(model)), 2), devices(2), 4)
    x = example_batch(model, 32, device="cpu")
    pipe(x)  # warm-up: cuDNN algorithm choice, allocator
    for _ in range(3):
        out = pipe(x)
        if overlapping_pairs(pipe.timeline):
            break
    assert overlapping_pairs(pipe.timeline), "the stages never overlapped"
    assert 0.0 <= pipe.bubble < 1.0
    assert torch.allclose(out, direct(model, x), **TOL)


def test_pipeline_stage_error_on_cuda():
    class Fails(nn.Module):
        def forward(self, x):
            if (x == 5).any().item():
                raise ValueError("saw 5")
            return x

    pipe = PipelineParallel([GpuSleep(0.0), Fails()], devices(2), 2)
    with pytest.raises(ValueError, match="saw 5") as info:
        pipe(torch.arange(12, dtype=torch.float32)[:, None])
    assert any("stage 1" in note for note in info.value.__notes__)
    assert no_stage_threads()
