"""FLOPs counted on the meta device; achieved FLOP/s as a share of the datasheet peak."""

import pytest
import torch

from labkit.models import build_model, example_batch
from labkit.roofline import (
    MatmulCeiling,
    flops_per_item,
    matmul_ceiling,
    peak_tflops,
    precision_of,
    roofline,
)


def test_resnet50_costs_its_known_flops_per_image_and_nothing_is_computed():
    model = build_model("resnet50", "full")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    per_image = flops_per_item(model, example_batch(model, 2))
    assert per_image == pytest.approx(8.18e9, rel=0.01)  # ~4.1 GMAC at 224²
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


def test_a_linear_layer_costs_two_flops_per_multiply_add():
    layer = torch.nn.Linear(64, 32, bias=False)
    assert flops_per_item(layer, torch.zeros(8, 64)) == 2 * 64 * 32


def test_share_of_peak_matches_the_recorded_h200_fp16_figure():
    r = roofline(10_700, 8.18e9, "NVIDIA H200", "fp16")
    assert r.tflops == pytest.approx(87.5, rel=0.01)
    assert r.share_of_peak == pytest.approx(0.088, abs=0.002)
    assert "8.8% of the NVIDIA H200's fp16 peak" in str(r)


def test_unknown_cards_and_precisions_have_no_peak():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("CPU", "fp32") is None
    assert peak_tflops("Tesla T4", "bf16") is None
    assert roofline(100, 1e9, "CPU", "fp32").share_of_peak is None
    assert "no fp32 peak on file" in str(roofline(100, 1e9, "CPU", "fp32"))


def test_fp32_on_cuda_is_measured_against_tf32_when_cudnn_allows_it(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert precision_of(torch.float32, "cuda") == "tf32"
    assert precision_of(torch.float32, "cpu") == "fp32"
    assert precision_of(torch.float16, "cpu") == "fp16" and precision_of(torch.bfloat16, "cuda") == "bf16"


def test_a_convolution_costs_its_hand_counted_flops():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, bias=False)
    # each of the 8 x 6 x 6 outputs is a dot product of 3 x 3 x 3 multiply-adds, 2 FLOPs each
    assert flops_per_item(conv, torch.zeros(4, 3, 8, 8)) == 2 * 3 * 3 * 3 * 8 * 6 * 6


def test_the_matmul_ceiling_is_timed_and_counted_as_two_n_cubed():
    ceiling = matmul_ceiling("cpu", n=256, repeat=3)
    assert ceiling.n == 256 and ceiling.dtype == torch.float32 and ceiling.median_ms > 0
    assert ceiling.tflops == pytest.approx(2 * 256**3 / (ceiling.median_ms / 1e3) / 1e12)
    assert MatmulCeiling(1000, torch.float32, 2.0).tflops == pytest.approx(1.0)  # 2e9 FLOPs in 2 ms
