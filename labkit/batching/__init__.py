"""Dynamic batching: many single requests in, batches through the model, one outcome each out.

- `DynamicBatcher`: FIFO; a batch leaves when full or when its oldest request has waited.
- `AdaptiveBatcher`: chooses batch size and wait to meet a p99 latency target.
- `PriorityBatcher`: several priority levels, work-conserving, with a starvation bound.
"""

from labkit.batching.adaptive import AdaptiveBatcher, BatchCostModel
from labkit.batching.core import Batcher
from labkit.batching.dynamic import DynamicBatcher
from labkit.batching.errors import BatcherError, BatcherStoppedError, LoadShedError, QueueFullError
from labkit.batching.priority import PriorityBatcher
from labkit.batching.stats import BatcherStats

__all__ = [
    "AdaptiveBatcher",
    "BatchCostModel",
    "Batcher",
    "BatcherError",
    "BatcherStats",
    "BatcherStoppedError",
    "DynamicBatcher",
    "LoadShedError",
    "PriorityBatcher",
    "QueueFullError",
]
