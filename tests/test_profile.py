"""labkit.profile on a CPU: the table torch.profiler gives, per step; the diagnosis; the trace."""

from __future__ import annotations

import json

import pytest
import torch

from labkit.overhead import count_operators
from labkit.profile import COMPUTE_BOUND, LAUNCH_BOUND, diagnose, profile_call


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8)).eval()


def test_a_profile_counts_each_operator_per_step_and_times_the_step():
    found = profile_call(_mlp(), torch.randn(32, 64), steps=4)
    assert found.steps == 4 and found.wall_ms > 0
    assert found.top_level["aten::linear"] == 8 and found.top_level["aten::relu"] == 4  # 2 and 1 a step
    names = [r.name for r in found.rows]
    assert "aten::addmm" in names  # inside linear: every operator is in the rows, not only the top level
    assert [r.cpu_ms for r in found.rows] == sorted((r.cpu_ms for r in found.rows), reverse=True)
    assert found.device_ms is None and found.kernels is None  # no device queue on a CPU
    assert found.diagnosis.startswith("CPU:")


def test_the_table_shows_the_top_rows_per_step():
    found = profile_call(_mlp(), torch.randn(8, 64), steps=2)
    lines = found.table(top=3).splitlines()
    assert len(lines) == 4 and "calls/step" in lines[0]
    linear = next(line for line in found.table(top=50).splitlines() if line.startswith("aten::linear "))
    assert linear.split()[1] == "2.0"  # two linear layers a step


def test_the_trace_is_a_chrome_trace(tmp_path):
    path = profile_call(_mlp(), torch.randn(4, 64), steps=1).export_trace(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    assert any(e.get("name") == "aten::linear" for e in events)


@pytest.mark.parametrize(("wall", "device", "says"), [
    (10.0, 9.0, "compute-bound"),
    (10.0, COMPUTE_BOUND * 10.0, "compute-bound"),
    (10.0, 2.0, "launch-bound"),
    (10.0, LAUNCH_BOUND * 10.0, "launch-bound"),
    (10.0, 6.5, "between"),
])
def test_the_diagnosis_follows_the_device_busy_share(wall, device, says):
    text = diagnose(wall, device)
    assert text.startswith(says) and f"{device:.3f} ms of a {wall:.3f} ms step" in text


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        profile_call(_mlp(), torch.randn(1, 64), steps=0)


def test_count_operators_reads_the_same_profile():
    count = count_operators(_mlp(), torch.randn(2, 64))
    assert count.operators["aten::linear"] == 2 and count.kernels is None
