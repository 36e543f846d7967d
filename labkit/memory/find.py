"""The largest batch a model can run: `search_max_batch` over the trials of `make_trial`."""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from labkit.device import device_of
from labkit.memory.accounting import weight_bytes
from labkit.memory.cap import budget_for, memory_cap
from labkit.memory.checks import measurable, whole_number
from labkit.memory.search import MaxBatch, search_max_batch
from labkit.memory.trials import make_trial
from labkit.models import example_batch

__all__ = ["find_max_batch", "PrecisionRow", "compare_precisions"]


def find_max_batch(
    model: nn.Module,
    example: torch.Tensor,
    device: str | torch.device | None = None,
    *,
    budget_bytes: float | None = None,
    limit: float = 1 << 16,
    channels_last: bool = False,
) -> MaxBatch:
    """The largest batch of ``example`` (one input, no batch dimension) that ``model`` can run,
    found by `search_max_batch` with the trials of `make_trial`.

    On CUDA with ``budget_bytes``, the search runs under `memory_cap` (the budget is a real
    limit); without, the limit is the device's. The answer is exact with no headroom: right at
    the cap, what fits depends on how the cache happens to be laid out, so serve a little below.
    ``budget_bytes`` may be a float (rounded down to whole bytes); ``limit`` is a whole number.
    """
    model = measurable(model)
    limit = whole_number(limit, "limit", minimum=1)
    device = torch.device(device) if device is not None else device_of(model)
    if budget_bytes is not None:
        budget_bytes = whole_number(budget_bytes, "budget_bytes", minimum=0, round_down=True)
    real_limit = device.type == "cuda" and budget_bytes is not None
    with memory_cap(budget_bytes, device) if real_limit else contextlib.nullcontext() as cap_bytes:
        budget = budget_for(device, budget_bytes if cap_bytes is None else min(budget_bytes, cap_bytes))
        trial = make_trial(model, example, device, budget_bytes=budget, channels_last=channels_last)
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)  # the weights and whatever else this process holds
        else:
            base = weight_bytes(model)
        result = search_max_batch(trial, budget, limit=limit, base_bytes=base)
    result.simulated = device.type != "cuda"
    return result


@dataclass(frozen=True)
class PrecisionRow:
    dtype: str
    channels_last: bool
    weight_bytes: int
    max_batch: int
    trials: int


def compare_precisions(
    model: nn.Module,
    budget_bytes: float | None = None,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16),
    channels_last: Sequence[bool] = (False,),
) -> list[PrecisionRow]:
    """The same model (copied) in each precision and layout: its weights and its largest batch.

    Tests the guide's "fit 2-3x larger batches" claim. Half precision halves weights (W) and
    activations, so under a budget B the batch grows 2(B - W/2)/(B - W) times: about 2x when
    the weights are small beside the budget, more when they fill most of it. The layout moves no
    bytes, only which kernels run. On CUDA the budget is the process's whole reserved memory:
    the original model, if it is on that device, counts against it too.
    """
    rows = []
    for dtype in dtypes:
        for nhwc in channels_last:
            layout = torch.channels_last if nhwc else torch.preserve_format
            variant = copy.deepcopy(model).to(dtype=dtype, memory_format=layout)
            example = example_batch(variant, 1)[0]
            found = find_max_batch(variant, example, budget_bytes=budget_bytes, channels_last=nhwc)
            rows.append(PrecisionRow(str(dtype).removeprefix("torch."), nhwc, weight_bytes(variant),
                                     found.batch, len(found.trials)))
            del variant
    return rows
