"""Inference across processes with PyTorch's own engine, for when one machine is not enough.

Launch with torchrun, one process per GPU (or per CPU stand-in):

    torchrun --nproc-per-node 2 -m labkit.parallel.distributed data --model mlp --items 1000
    torchrun --nproc-per-node 2 -m labkit.parallel.distributed pipeline --model mlp --items 256

``data``: every rank holds the whole model and takes one contiguous shard of the dataset; rank 0
gathers the outputs in rank order, which is input order. ``pipeline``: rank i holds stage i of
the model (`torch.distributed.pipelining`, GPipe schedule, forward only); the last rank's
outputs are gathered on rank 0. NCCL on GPUs, Gloo on CPUs. Many machines: add torchrun's
``--nnodes`` and ``--rdzv-endpoint``; nothing here changes.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist

from labkit.models import build_model, example_batch, sequential_layers
from labkit.parallel.data import split_sizes
from labkit.parallel.pipeline import split_stages

__all__ = ["shard", "micro_batching", "main"]

LAUNCH = ("launch with torchrun, which starts one process per rank and tells each its RANK and WORLD_SIZE:\n"
          "  torchrun --nproc-per-node 2 -m labkit.parallel.distributed pipeline --model mlp --items 256")


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most 1)."""
    sizes = split_sizes(n, [1.0] * world)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def micro_batching(items: int, micro_batches: int) -> tuple[int, int]:
    """(micro-batches, rows padded to) for a GPipe step over ``items`` rows.

    A pipeline stage sizes its buffers from the first micro-batch, so every micro-batch must be
    the same size: the batch is padded to a multiple of the micro-batch count (copies of its last
    row, dropped from the output), and never cut into more micro-batches than it has rows."""
    if items < 1 or micro_batches < 1:
        raise ValueError(f"items and micro-batches must be at least 1, got {items} and {micro_batches}")
    n = min(micro_batches, items)
    return n, -(-items // n) * n


def _setup() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit(f"python -m labkit.parallel.distributed: {LAUNCH}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local, per_node = int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if per_node > torch.cuda.device_count():
            raise SystemExit(
                f"{per_node} processes on this machine but {torch.cuda.device_count()} GPU(s): NCCL needs one GPU "
                "per process. Start fewer processes, or run on the CPU over Gloo with CUDA_VISIBLE_DEVICES=''"
            )
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    return rank, world, device


def _data_parallel(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> torch.Tensor:
    model = build_model(args.model, args.size, device, seed=args.seed)  # same weights on every rank
    data = example_batch(model, args.items, device="cpu", seed=args.seed)  # same data on every rank
    start, end = shard(args.items, rank, world)
    with torch.no_grad():
        outs = [model(b.to(device)).cpu() for b in data[start:end].split(args.batch_size)]  # (≤ batch, *out) each
    return torch.cat(outs) if outs else torch.empty(0)  # (end - start, *out)


def _pipeline(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> torch.Tensor | None:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    model = build_model(args.model, args.size, "cpu", seed=args.seed)
    stage_module = split_stages(sequential_layers(model), world)[rank].to(device)
    stage = PipelineStage(stage_module, rank, world, device)
    n_micro, padded = micro_batching(args.items, args.micro_batches)  # the same on every rank
    schedule = ScheduleGPipe(stage, n_microbatches=n_micro)
    with torch.no_grad():
        if rank == 0:
            x = example_batch(model, args.items, device=device, seed=args.seed)  # (items, *input)
            pad = x[-1:].expand(padded - args.items, *x.shape[1:])  # (padded - items, *input)
            schedule.step(torch.cat([x, pad]))  # (padded, *input): n_micro equal micro-batches
            return None
        out = schedule.step()  # (padded, *output) on the last rank
    return out[: args.items].cpu() if rank == world - 1 else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.parallel.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["data", "pipeline"])
    parser.add_argument("--model", default="mlp", help="a labkit model (pipeline: mlp, tiny_cnn or resnet50)")
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--items", type=int, default=1024, help="dataset size")
    parser.add_argument("--batch-size", type=int, default=64, help="data mode: batch size on each rank")
    parser.add_argument("--micro-batches", type=int, default=8, help="pipeline mode: micro-batches per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="rank 0 saves the gathered outputs here (torch.save)")
    args = parser.parse_args(argv)
    if args.items < 1 or args.micro_batches < 1 or args.batch_size < 1:
        parser.error("--items, --micro-batches and --batch-size must be at least 1")

    rank, world, device = _setup()
    try:
        dist.barrier()
        t0 = time.perf_counter()
        local = (_data_parallel if args.mode == "data" else _pipeline)(args, rank, world, device)
        gc.collect()  # the pipeline stage's communication objects sit in reference cycles: free them
        # while the process group lives (freed at exit instead, they abort the process now and then)
        gathered: list[torch.Tensor | None] | None = [None] * world if rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        seconds = time.perf_counter() - t0
        if rank == 0:
            outputs = torch.cat([t for t in gathered if t is not None])  # (items, *out) in rank order
            print(f"{args.mode} parallel over {world} {device.type} process(es): {outputs.shape[0]} outputs "
                  f"in {seconds:.2f} s ({outputs.shape[0] / seconds:,.0f} items/s)")
            if args.out:
                torch.save(outputs, args.out)
        dist.barrier()  # every rank done with its sends before any tears the group down
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Some of PyTorch's communication threads outlive the process group, and one of them now and
    # then aborts the process as it exits ("terminate called without an active exception", seen
    # in pipeline runs on two CPU processes). Everything is written by now: leave without the
    # C++ destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
