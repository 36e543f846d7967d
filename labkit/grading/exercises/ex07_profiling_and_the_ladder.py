"""Exercise 07: counting a convolution's FLOPs by hand (what `torch.utils.flop_counter` counts), and
speeding up a given inference loop: graded on matching its outputs and on its speed-up over that
loop, both run by the grader on the same images, in alternating rounds.

The model is the lessons' tiny CNN (`labkit.models`, seeded), on the grading machine's device:
speed-up bands differ by device kind, because a GPU pays a launch per layer per call and a CPU
does not.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from labkit.grading import trials
from labkit.grading.plain import describe, value_of
from labkit.grading.trials import Question, Trial, calls, speed_credit

# Speed-up bands over the given loop (no credit at or below the first, full at the second).
# Measured through the grader on the 2-core CI box, 64 images: inference_mode alone 1.1x, one
# batch in inference_mode 2.6-3.0x (channels_last as well: 3x and more). The GPU bands are set
# from the launch-bound batch-1 figures of the recorded H200 runs, not yet graded on a GPU.
BANDS = {"cpu": (1.3, 2.2), "cuda": (3.0, 10.0)}
# Largest |answer - loop| / largest |loop output| accepted: room for TF32, bf16 and fp16, none for
# a wrong row (rows differ by far more than this).
TOLERANCE = 2e-2


@cache
def _model(device: str) -> Any:
    """The graded model, built once per process; answers get a copy of it (`_copy`), so that one
    that changes its model (casts it, puts it in train mode) changes neither the judge's nor the
    next round's."""
    from labkit.models import build_model

    return build_model("tiny_cnn", "small", device, seed=7)


def _copy() -> Any:
    import copy

    return copy.deepcopy(_model(_device()))


def _device() -> str:
    from labkit.device import pick_device

    return str(pick_device("auto"))


def _images(n: int, seed: int) -> list:
    """``n`` images as the loop receives them: separate (3, H, W) float32 tensors in host memory."""
    from labkit.models import example_batch

    return list(example_batch(_model(_device()), n, device="cpu", seed=seed)) if n else []


def naive_predict(model: Any, images: list) -> Any:
    """The loop to speed up (as the exercise gives it): one image at a time, autograd recording
    every operation for a backward pass that never comes, each result copied back on its own."""
    import torch

    device = next(model.parameters()).device
    outputs = [model(image.unsqueeze(0).to(device))[0].cpu() for image in images]
    return torch.stack(outputs) if outputs else torch.empty(0, model.head[-1].out_features)


def _predict_probe(answer: Callable, inputs: dict, oracle: trials.Oracle) -> tuple[Any, dict]:
    return answer(_copy(), _images(inputs["n"], inputs["seed"] + inputs.get("round", 0))), {}


def _judge_outputs(call: str, n: int, seed: int, hint: str, output: Any) -> None:
    import torch

    model = _model(_device())
    with torch.inference_mode():  # what the loop returns (to float rounding), in one call
        expected = model(torch.stack(_images(n, seed)).to(_device())).cpu() if n else naive_predict(model, [])
    if not (isinstance(output, dict) and output.get("$") == "torch.Tensor"):
        raise trials.Mismatch(call, f"a torch.Tensor of shape {tuple(expected.shape)}", describe(output), hint)
    values = value_of(output)
    try:
        got = torch.tensor(values, dtype=torch.float32) if values else torch.empty(0, *expected.shape[1:])
    except (TypeError, ValueError, RuntimeError):
        raise trials.Mismatch(call, f"a tensor of numbers, shape {tuple(expected.shape)}", describe(output), hint) from None
    if got.shape != expected.shape:
        raise trials.Mismatch(call, f"shape {tuple(expected.shape)}: one row per image, in order", f"shape {tuple(got.shape)}", hint)
    if n:
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if not error <= TOLERANCE:
            raise trials.Mismatch(call, f"the loop's outputs within {TOLERANCE:g} of its largest", f"off by {error:.3g} of it",
                           hint or "same images, same order, the same model")


def _outputs(n: int, seed: int, hint: str = "") -> Trial:
    """(images, seed, hint)"""
    call = f"fast_predict(model, {n} images)"
    return Trial(call, "fast_predict", {"n": n, "seed": seed},
                 lambda seen: _judge_outputs(call, n, seed, hint, seen.output), hint)


def _speed(n: int, seed: int, hint: str = "", rounds: int = 5) -> Trial:
    """(images, seed, hint, rounds)"""
    kind = "cuda" if _device().startswith("cuda") else "cpu"
    naive, full = BANDS[kind]
    call = f"fast_predict(model, {n} images) against the given loop, on the grader's {kind}"

    def reference(inputs: dict) -> None:  # in the grader: the given loop on the same images
        naive_predict(_copy(), _images(n, seed + inputs["round"]))

    def judge(seen: trials.Observation) -> None:
        for number, output in enumerate(seen.outputs):
            _judge_outputs(f"{call}, round {number + 1}", n, seed + number, hint, output)
        credit = speed_credit(seen.speedup, naive=naive, full=full)
        if credit < 1:
            raise trials.Partial(f"{call}: speed-up (median of {len(seen.rounds)} rounds)", f"{full:g}x or more on a {kind}",
                          f"{seen.speedup:.2f}x", hint or "no autograd (inference_mode), and one batch for all images, "
                          "not one call per image", credit=credit)

    return Trial(call, "fast_predict", {"n": n, "seed": seed}, judge, hint, reference=reference, rounds=rounds)


QUESTIONS = [
    Question("07.conv2d_flops", "A convolution's FLOPs, counted by hand", 2, calls("conv2d_flops"), (
        ((3, 64, 7, 112, 112, 1), 2 * 3 * 64 * 7 * 7 * 112 * 112,
         "ResNet-50's first layer: one multiply and one add per weight per output position"),
        ((64, 64, 1, 56, 56, 1), 2 * 64 * 64 * 56 * 56, "a 1x1 convolution is a matmul over positions"),
        ((32, 32, 3, 28, 28, 32), 2 * 32 * 9 * 28 * 28,
         "groups=32 (depthwise): each output channel sees c_in / groups input channels"),
    ), minutes=10),
    Question("07.fast_predict", "Speed up the inference loop: the same outputs", 2, _outputs, (
        (64, 0, "one row per image, in the order given"),
        (1, 3, "a single image"),
        (37, 5, "a count that no batch size divides"),
    ), minutes=20),
    Question("07.predict_speed", "Speed up the inference loop: its speed-up", 4, _speed, (
        (64, 11),
    ), kind="speed", minutes=10, budget_s=8.0, answer="fast_predict"),
]
PROBES = {"fast_predict": _predict_probe}
