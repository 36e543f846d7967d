"""Where inference memory goes, and the largest batch that fits, found in a handful of trials.

Three parts, one job each:

- `labkit.memory.accounting`: the allocator's and the process's figures, and bytes counted as
  ops create and free tensors (weights, layer outputs, what backward keeps, a training peak);
- `labkit.memory.checkpointing`: activation checkpointing cut where those bytes balance;
- the largest batch: `search` (the search over any ``trial(n)``), `trials` (a trial on CUDA, or
  simulated on the meta device), `cap` (a real limit on a CUDA device) and `find`
  (`find_max_batch`, `compare_precisions`).

The guide's versions, kept to be measured against, are in `labkit.guide`.
"""

from labkit.memory.accounting import (
    LayerMemory,
    MemoryStats,
    activation_memory,
    memory_stats,
    saved_for_backward_bytes,
    training_peak_bytes,
    weight_bytes,
)
from labkit.memory.cap import memory_cap
from labkit.memory.checkpointing import Checkpointed, checkpointed
from labkit.memory.find import PrecisionRow, compare_precisions, find_max_batch
from labkit.memory.search import MaxBatch, Trial, search_max_batch
from labkit.memory.trials import make_trial

__all__ = [
    "Checkpointed",
    "LayerMemory",
    "MaxBatch",
    "MemoryStats",
    "PrecisionRow",
    "Trial",
    "activation_memory",
    "checkpointed",
    "compare_precisions",
    "find_max_batch",
    "make_trial",
    "memory_cap",
    "memory_stats",
    "saved_for_backward_bytes",
    "search_max_batch",
    "training_peak_bytes",
    "weight_bytes",
]
