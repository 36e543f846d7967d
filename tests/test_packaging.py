"""Set-up has one source of truth, CI runs the README's command, and labkit imports without Jupyter."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in reqs}


def test_environment_yml_installs_the_project_and_nothing_else():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert sorted(d.split("=")[0] for d in conda) == ["pip", "python"], "packages belong in pyproject.toml"
    assert pip == [{"pip": ["-e .[dev]"]}]
    python = next(d for d in conda if d.startswith("python="))
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(python.split("=")[1] + ".0")


def _extra(name: str) -> set[str]:
    """An extra's packages, the extras it names (``labkit[course]``) included."""
    names = set()
    for r in map(Requirement, PYPROJECT["optional-dependencies"][name]):
        names |= set().union(*(_extra(e) for e in r.extras)) if r.name == "labkit" else {r.name.lower()}
    return names


def test_dev_extra_has_the_course_tools():
    names = _names(PYPROJECT["dependencies"]) | _extra("dev")
    needed = {"pytest", "nbval", "papermill", "nbclient", "jupyterlab", "ipywidgets", "matplotlib", "nvidia-ml-py", "ruff"}
    assert needed <= names, f"missing: {needed - names}"


def test_the_course_extra_holds_what_the_cli_imports():
    assert {"papermill", "nbclient", "nbformat", "nbconvert", "jinja2", "ipykernel"} <= _extra("course")


def test_a_missing_course_package_names_the_extra_to_install(tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'papermill' or name == 'nbformat':\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from labkit.cli import main\n"
        "sys.exit(main(['report', '--device', 'cpu']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'labkit[course]'" in done.stderr and "Traceback" not in done.stderr


def test_torch_is_never_pinned_to_a_build_in_the_package():
    torch = [Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "torch"]
    assert torch and "2.11.0" in torch[0].specifier, "the GPU image's torch 2.11 must satisfy it"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make report" in readme
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-1] == "make test" and commands.count("make test") == 1, "CI ends by running the README's command"
    before = "\n".join(commands[:-1])
    assert "apt-get install" in before and "chromium" in before, "CI makes sure Chromium is there first"
    assert "export LABKIT_REQUIRE_BROWSER=1" in commands, "so that in CI the browser tests fail rather than skip"


def test_import_labkit_needs_no_jupyter():
    code = (
        "import sys, labkit, labkit.cli, labkit.device, labkit.measure, labkit.load, labkit.models, "
        "labkit.reference, labkit.sweep, labkit.overhead\n"
        "heavy = [m for m in ('ipywidgets', 'papermill', 'nbclient', 'jupyter_client', 'IPython') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
