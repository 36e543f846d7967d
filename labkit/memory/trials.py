"""One trial of a max-batch search, ``trial(n) -> Trial``: a real forward pass on CUDA, or a
simulated one elsewhere, whose bytes are counted on the meta device without computing."""

from __future__ import annotations

import bisect
import contextlib
import copy
import gc
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from labkit.device import device_of
from labkit.memory.accounting import activation_memory, weight_bytes
from labkit.memory.cap import budget_for
from labkit.memory.checks import measurable
from labkit.memory.search import Trial
from labkit.models import input_spec_of

__all__ = ["make_trial", "recorded_curves", "recorded_trial"]


def make_trial(model: nn.Module, example: torch.Tensor, device: str | torch.device | None = None, *,
               budget_bytes: float | None = None, channels_last: bool = False) -> Callable[[int], Trial]:
    """``trial(n)``: does a batch of ``n`` copies of ``example`` fit? (the step of any max-batch search)

    On CUDA a trial is a real forward pass under ``no_grad``; its peak is the most the allocator
    reserved, weights included. Out of memory is caught, the batch freed and the cache emptied,
    so the allocator is usable afterwards; ``budget_bytes`` (default: what the process could
    hold now) bounds the peak too. Elsewhere the memory is *simulated*: a trial fits when the
    weights plus the measured activation peak (`activation_memory`, counted on the meta device,
    so without computing) stay within ``budget_bytes``, which is then required.
    ``example`` is one input, without the batch dimension (checked against the model's
    ``input_spec`` where it has one). ``channels_last``: batches in NHWC layout (for a model
    converted with the same format).
    """
    model = measurable(model)
    check_one_input(model, example)
    device = torch.device(device) if device is not None else device_of(model)
    budget = budget_for(device, budget_bytes)
    if device.type == "cuda":
        return _cuda_trial(model, example, device, budget, channels_last)
    return _simulated_trial(model, example, budget, channels_last)


def check_one_input(model: nn.Module, example: torch.Tensor) -> None:
    """A batch passed as ``example`` would be copied n times into (n, batch, ...): the model
    might run it (a linear layer takes any leading dimensions) and the search would answer in
    units of that batch, silently. Where the model declares its input shape, refuse it."""
    spec = input_spec_of(model)
    if spec is None or tuple(example.shape) == spec.shape:
        return
    hint = " (it looks like a batch: pass one of its inputs, example[0])" if tuple(example.shape[1:]) == spec.shape else ""
    raise ValueError(f"example must be one input of shape {spec.shape} ({type(model).__name__}'s input_spec), "
                     f"without a batch dimension; got shape {tuple(example.shape)}{hint}")


def _timed(run: Callable[[], tuple[int, int]], budget_bytes: int | None, n: int, on_oom: Callable[[], None]) -> Trial:
    """One trial: ``run`` returns (peak, allocated); out of memory is a trial that did not fit."""
    t0 = time.perf_counter()
    try:
        peak, allocated = run()
    except torch.cuda.OutOfMemoryError:
        peak = allocated = None
    if peak is None:  # out of the except block: the error's frames, which hold the batch, are gone
        on_oom()
        return Trial(n, False, None, time.perf_counter() - t0)
    return Trial(n, budget_bytes is None or peak <= budget_bytes, peak, time.perf_counter() - t0, allocated)


def _batch_of(example: torch.Tensor, n: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return example.to(device).expand(n, *example.shape).contiguous(memory_format=layout)  # (n, *example.shape)


def _cuda_trial(model: nn.Module, example: torch.Tensor, device: torch.device, budget: int,
                channels_last: bool) -> Callable[[int], Trial]:
    def run(n: int) -> tuple[int, int]:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # each trial starts from the weights alone
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(_batch_of(example, n, device, channels_last))
        torch.cuda.synchronize(device)
        # Reserved bounds the device's limit (block rounding and caching put it above what the
        # tensors occupy); allocated is what grows linearly, for the search's line.
        return torch.cuda.max_memory_reserved(device), torch.cuda.max_memory_allocated(device)

    def recover() -> None:  # the failed batch's tensors died with the exception's frames: free them
        gc.collect()
        torch.cuda.empty_cache()

    return lambda n: _timed(lambda: run(n), budget, n, recover)


def _simulated_trial(model: nn.Module, example: torch.Tensor, budget: int,
                     channels_last: bool = False) -> Callable[[int], Trial]:
    weights = weight_bytes(model)
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")  # bytes from shapes alone
    meta_example = example.to("meta")

    def run(n: int) -> tuple[int, int]:
        with _explained_meta_errors(model):
            peak = weights + activation_memory(meta, _batch_of(meta_example, n, meta_example.device, channels_last))[1]
        return peak, peak

    return lambda n: _timed(lambda: run(n), budget, n, gc.collect)


def _on_meta(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.is_meta


@contextlib.contextmanager
def _explained_meta_errors(model: nn.Module) -> Iterator[None]:
    """A model whose forward needs its tensors' values (``.item()``, a branch on a value, a
    boolean mask) cannot run on the meta device, which has shapes and no data: say so, and what
    to do, instead of torch's raw meta error. Other errors pass through as they are."""
    try:
        yield
    except (RuntimeError, NotImplementedError, TypeError) as err:
        if "meta" not in str(err):
            raise
        raise RuntimeError(
            f"{type(model).__name__} cannot be measured on the meta device, where a simulated budget counts "
            f"bytes from shapes alone: its forward needs its tensors' values or creates tensors elsewhere "
            f"({type(err).__name__}: {err}). Run the search on a CUDA device (device='cuda'), or keep "
            f"data-dependent steps (.item(), .tolist(), branches on values, boolean masks) and tensors "
            f"made on a fixed device (make them on x.device) out of forward.") from err


def recorded_curves() -> list[tuple[str, str, dict]]:
    """Every curve `bench/memory_curve.py` recorded under bench/results, oldest file first, as
    (card, precision, curve), each curve carrying its run's ``budget_bytes``."""
    import json

    from labkit.reference import results_dir

    found = []
    for path in sorted(results_dir().glob("*-memory-curve.json")):
        data = json.loads(path.read_text())
        budget = data["results"]["budget_bytes"]
        found += [(data["card"], name, curve | {"budget_bytes": budget}) for name, curve in data["results"]["curves"].items()]
    return found


def recorded_trial(curve: dict, budget_bytes: float | None = None) -> Callable[[int], Trial]:
    """``trial(n)`` as a GPU answered it, replayed from a curve `bench/memory_curve.py` recorded
    (``{"max_batch", "trials": [{"batch", "fits", "reserved", "allocated"}, ...]}``): recorded
    rows as they were, peaks between them interpolated, out of memory past the recorded maximum
    (every batch around it was tried). ``budget_bytes`` below the recording's: a batch fits only
    if its reserved peak stays within it too. Lets a search be tested, on any machine, against a
    real caching allocator's behaviour.
    """
    rows = {r["batch"]: r for r in curve["trials"]}
    fitted = sorted(n for n, r in rows.items() if r["fits"])

    def at(n: int, key: str) -> int:
        i = min(max(bisect.bisect_left(fitted, n), 1), len(fitted) - 1)
        a, b = fitted[i - 1], fitted[i]
        return round(rows[a][key] + (rows[b][key] - rows[a][key]) * (n - a) / (b - a))

    def trial(n: int) -> Trial:
        if n > curve["max_batch"]:
            return Trial(n, False, None, 0.0)
        reserved = at(n, "reserved")
        if budget_bytes is not None and reserved > budget_bytes:
            return Trial(n, False, None, 0.0)
        return Trial(n, True, reserved, 0.0, at(n, "allocated"))

    return trial
