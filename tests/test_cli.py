import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit.cli import main

REPO = Path(__file__).resolve().parent.parent
has_cuda = torch.cuda.is_available()


def labkit(*args):
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
def test_doctor_reports_the_machine_and_the_plan():
    proc = labkit("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "torch" in proc.stdout
    assert torch.__version__ in proc.stdout
    assert "NVML" in proc.stdout
    assert "What the course will do" in proc.stdout


@pytest.mark.slow
def test_doctor_json():
    proc = labkit("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert {"torch", "gpus", "nvml", "plan", "recorded_gpu_runs"} <= facts.keys()
    assert facts["torch"] == torch.__version__
    assert isinstance(facts["gpus"], list) and len(facts["gpus"]) == (torch.cuda.device_count() if has_cuda else 0)
    assert isinstance(facts["nvml"], bool)
    assert facts["plan"] and all(isinstance(line, str) for line in facts["plan"])
    for run in facts["recorded_gpu_runs"]:
        assert {"card", "date", "file"} <= run.keys()


@pytest.mark.slow
@pytest.mark.skipif(has_cuda, reason="checks the no-GPU exit code")
def test_doctor_require_gpu_fails_without_a_gpu():
    proc = labkit("doctor", "--require-gpu")
    assert proc.returncode == 1
    assert "--require-gpu" in proc.stderr


@pytest.mark.slow
def test_unknown_subcommand_exits_2():
    proc = labkit("frobnicate")
    assert proc.returncode == 2
    assert "usage: labkit" in proc.stderr


def test_main_doctor_in_process(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "What the course will do on this machine:" in out
    assert "NVML" in out
    assert f"device      {'cuda:0' if has_cuda else 'cpu'}" in out


@pytest.mark.skipif(has_cuda, reason="checks the CPU-only plan")
def test_main_doctor_json_plan_on_cpu(capsys):
    assert main(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["gpus"] == [] and facts["cuda_available"] is False and facts["device"] == "cpu"
    assert any("CPU" in line for line in facts["plan"])
    assert any("stand-in" in line for line in facts["plan"])


@pytest.mark.skipif(has_cuda, reason="checks the no-GPU exit code")
def test_main_require_gpu_returns_1(capsys):
    assert main(["doctor", "--require-gpu"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["frobnicate"], [], ["doctor", "--bogus"]])
def test_main_rejects_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
