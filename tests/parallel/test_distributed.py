"""labkit.parallel.distributed: shard(), and both torchrun modes over two Gloo processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit.models import build_model, example_batch
from labkit.parallel.distributed import micro_batching, shard

pytestmark = pytest.mark.timeout(120)

TOL = dict(rtol=1e-4, atol=1e-4)


# --- shard -------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_covers_the_range_contiguously(world):
    for n in range(0, 40):
        shards = [shard(n, rank, world) for rank in range(world)]
        assert shards[0][0] == 0
        assert shards[-1][1] == n
        for (_, end), (start, _) in zip(shards, shards[1:], strict=False):
            assert end == start  # no gap, no overlap
        sizes = [end - start for start, end in shards]
        assert all(s >= 0 for s in sizes)
        assert max(sizes) - min(sizes) <= 1


def test_shard_examples():
    assert [shard(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard(101, r, 2) for r in range(2)] == [(0, 51), (51, 101)]
    assert [shard(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]


def test_micro_batching_pads_to_equal_micro_batches():
    assert micro_batching(64, 4) == (4, 64)
    assert micro_batching(100, 8) == (8, 104)  # 8 micro-batches of 13: 4 padding rows, dropped
    assert micro_batching(3, 8) == (3, 3)  # never more micro-batches than rows
    assert micro_batching(1, 4) == (1, 1)
    for bad in [(0, 4), (4, 0)]:
        with pytest.raises(ValueError):
            micro_batching(*bad)


# --- torchrun ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torchrun(tmp_path: Path, *args: str) -> subprocess.Popen:
    """Two ranks on this machine, Gloo on the CPU, over loopback only."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # Gloo even on a GPU box
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "labkit.parallel.distributed", *args]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"
    return result


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return succeeded(finish(start_torchrun(tmp_path, *args)))


def expected_outputs(items: int) -> torch.Tensor:
    model = build_model("mlp", "small", seed=0)
    with torch.no_grad():
        return model(example_batch(model, items, seed=0))


@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp_path = tmp_path_factory.mktemp("torchrun-data")
    out = tmp_path / "dp.pt"
    result = torchrun(tmp_path, "data", "--items", "101", "--batch-size", "16", "--out", str(out))
    return result, out


@pytest.mark.slow
def test_torchrun_data_parallel_equals_the_model(data_run):
    _, out = data_run
    outputs = torch.load(out)
    expected = expected_outputs(101)
    assert outputs.shape == expected.shape == (101, 10)  # every row once, in input order
    assert torch.allclose(outputs, expected, **TOL)


@pytest.mark.slow
def test_torchrun_rank_0_prints_the_summary(data_run):
    result, _ = data_run
    lines = [line for line in result.stdout.splitlines() if "parallel over" in line]
    assert len(lines) == 1, result.stdout  # rank 0 only
    assert lines[0].startswith("data parallel over 2 cpu process(es): 101 outputs in ")
    assert "items/s" in lines[0]


@pytest.mark.slow
def test_torchrun_pipeline_equals_the_model(tmp_path):
    out = tmp_path / "pp.pt"
    result = torchrun(tmp_path, "pipeline", "--items", "64", "--micro-batches", "4", "--out", str(out))
    assert "pipeline parallel over 2 cpu process(es): 64 outputs" in result.stdout
    outputs = torch.load(out)
    expected = expected_outputs(64)
    assert outputs.shape == expected.shape == (64, 10)
    assert torch.allclose(outputs, expected, **TOL)


# (items, micro-batches): items that do not divide into micro-batches, fewer items than
# micro-batches, and one item. Every row once, in input order, equal to the single-device model.
UNEVEN = [(100, 8), (3, 8), (1, 4)]


@pytest.fixture(scope="module")
def uneven_runs(tmp_path_factory) -> dict[tuple[int, int], tuple[subprocess.CompletedProcess, Path]]:
    """The uneven pipeline runs started together (each is mostly start-up) and awaited in turn."""
    tmp_path = tmp_path_factory.mktemp("torchrun-uneven")
    started = {}
    for items, micro in UNEVEN:
        out = tmp_path / f"pp-{items}-{micro}.pt"
        started[items, micro] = start_torchrun(tmp_path, "pipeline", "--items", str(items), "--micro-batches",
                                               str(micro), "--out", str(out)), out
    return {case: (finish(proc), out) for case, (proc, out) in started.items()}


@pytest.mark.slow
@pytest.mark.parametrize("items,micro", UNEVEN)
def test_torchrun_pipeline_gives_one_row_per_item_when_items_do_not_divide(uneven_runs, items, micro):
    result, out = uneven_runs[items, micro]
    succeeded(result)
    assert f"pipeline parallel over 2 cpu process(es): {items} outputs" in result.stdout
    outputs = torch.load(out)
    expected = expected_outputs(items)
    assert outputs.shape == expected.shape == (items, 10)
    assert torch.allclose(outputs, expected, **TOL)


def test_without_torchrun_it_says_how_to_launch():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    proc = subprocess.run([sys.executable, "-m", "labkit.parallel.distributed", "pipeline", "--items", "4"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "launch with torchrun" in proc.stderr and "KeyError" not in proc.stderr, proc.stderr
