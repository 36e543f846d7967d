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
from labkit.parallel.distributed import shard

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


# --- torchrun ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Two ranks on this machine, Gloo on the CPU, over loopback only."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # Gloo even on a GPU box
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "labkit.parallel.distributed", *args]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"
    return result


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
