"""`make gpu-wheels`: the wheels `labkit report` needs on a GPU machine that has no network.

The lent GPU image has python3 3.12 with torch, numpy, matplotlib, jinja2 and more, but no
Jupyter: papermill, nbclient, nbconvert, ipykernel and their own needs are missing. This
downloads them, for that python, into ``.whl/`` (git-ignored, about 15 MB), leaving out what the
image already holds (`IMAGE_HAS`), so the image's versions are the ones used. `gpu_check.py`
installs them into a temporary folder there (`install`) before it runs the report.

``--dry-run`` checks the wheelhouse on this machine: it downloads the same set for this
machine's python, builds a fresh virtual environment holding only torch and `IMAGE_HAS`'s
packages (a stand-in for the image), installs the wheelhouse with no index, and runs lesson 00
through `labkit report` there.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".whl"
COURSE = ["papermill", "nbclient", "nbformat", "nbconvert", "ipykernel", "ipywidgets"]
# The GPU image's own packages that the course's needs include, from its package list as last read
# on 2026-11-17 (the device tool's KINDS.md, "Python packages already there").
IMAGE_HAS = [
    "attrs", "certifi", "charset-normalizer", "click", "jinja2", "markupsafe", "packaging",
    "platformdirs", "psutil", "pygments", "python-dateutil", "pyyaml", "requests", "tqdm",
    "typing-extensions", "urllib3", "idna", "six",
]
# What pip needs to pick the GPU image's wheels from this machine (Python 3.12, x86-64 Linux).
IMAGE_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                    "manylinux1_x86_64", "linux_x86_64") for arg in ("--platform", tag)
]


def _project(wheel: Path) -> str:
    """A wheel's project name, normalised (``python_dateutil-2.9.whl`` -> ``python-dateutil``)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def download(dest: Path, *, for_image: bool = True) -> list[Path]:
    """The course's packages and everything they need, minus `IMAGE_HAS`, as wheels in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    platform = IMAGE_PLATFORM if for_image else ["--only-binary=:all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), *platform, *COURSE],
                   check=True)
    kept = []
    for wheel in sorted(dest.glob("*.whl")):
        if _project(wheel) in IMAGE_HAS:
            wheel.unlink()
        else:
            kept.append(wheel)
    return kept


def install(wheelhouse: Path, target: Path, python: str = sys.executable) -> None:
    """Install every wheel of ``wheelhouse`` into ``target`` with no index and no resolver: the
    wheelhouse is complete by construction, and the machine may have no network."""
    wheels = sorted(str(w) for w in wheelhouse.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {wheelhouse}: run `make gpu-wheels` on a machine with network")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(target), *wheels], check=True)


def site_env(target: Path) -> dict[str, str]:
    """The environment that makes a process see what `install` put in ``target``: its modules,
    and its Jupyter data (nbconvert's templates, ipykernel's kernel spec), which Jupyter looks for
    under ``sys.prefix``, not beside the modules."""
    def prepend(name: str, *paths: Path) -> str:
        return os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get(name)])])

    return {"PYTHONPATH": prepend("PYTHONPATH", target, ROOT),
            "JUPYTER_PATH": prepend("JUPYTER_PATH", target / "share" / "jupyter")}


def dry_run() -> int:
    """Lesson 00 through `labkit report` in a fresh environment that has torch, the image's packages
    and the wheelhouse, and nothing else (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="labkit-dry-run-") as tmp:
        tmp = Path(tmp)
        wheels = download(tmp / "whl", for_image=False)
        print(f"wheelhouse for this python: {len(wheels)} wheels, "
              f"{sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB", flush=True)
        env_python = str(tmp / "image" / "bin" / "python")
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "image")], check=True)
        import torch  # the stand-in image gets this machine's torch build, as the GPU image has its own

        stand_in = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "matplotlib", "nvidia-ml-py", *IMAGE_HAS]
        subprocess.run([env_python, "-m", "pip", "install", "--quiet", *stand_in], check=True)
        install(tmp / "whl", tmp / "site", python=env_python)
        env = os.environ | site_env(tmp / "site")
        proc = subprocess.run([env_python, "-m", "labkit", "report", "--device", "cpu", "--out", str(tmp / "reports"),
                               str(ROOT / "notebooks" / "00_measuring.ipynb")], cwd=ROOT, env=env)
        print("dry run:", "lesson 00 ran from the wheelhouse" if proc.returncode == 0 else f"failed ({proc.returncode})")
        return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="check the wheelhouse on this machine (see above)")
    args = parser.parse_args()
    if args.dry_run:
        return dry_run()
    wheels = download(WHEELHOUSE)
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB, in {WHEELHOUSE.relative_to(ROOT)}/ "
          f"(carry it to the GPU machine: `make gpu-check` installs it there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
