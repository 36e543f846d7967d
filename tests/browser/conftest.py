"""Fixtures for the browser tests: a headless Chromium and a JupyterLab started as `make lab`
starts it (rooted at the project, the venv's lab settings), stopped at the end with its kernels."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from .support import ROOT, chromium, require_module

START_S = 60  # the server answering; a few seconds here


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@dataclass
class Lab:
    url: str
    token: str
    log: Path

    def api(self, method: str, path: str) -> object:
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def open_url(self, path: str) -> str:
        """A URL that opens ``path`` (relative to the project) in a fresh workspace."""
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"

    def wait_for_kernel(self, path: str, timeout_s: float) -> None:
        """Until the server holds an idle kernel for the notebook at ``path``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [s["kernel"]["execution_state"] for s in self.api("GET", "sessions")
                      if s["path"] == path and s.get("kernel")]
            if "idle" in states:
                return
            time.sleep(0.3)
        raise AssertionError(f"no idle kernel for {path} within {timeout_s:g} s")

    def stop_kernels(self) -> None:
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`python -m jupyter lab --ServerApp.root_dir=<project>` as `make lab` runs it, headless, on a
    free loopback port with a token. Its state (user settings, workspaces, checkpoints, runtime
    files) goes to a temporary folder; autosave is off, so running the lessons writes nothing
    into notebooks/ (the tests check that the page asked for no save)."""
    require_module("jupyterlab", "pip install -e '.[dev]'")
    home = tmp_path_factory.mktemp("lab")
    settings = home / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    token, port = secrets.token_hex(16), _free_port()
    log = home / "server.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={ROOT}", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True",
           f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
           f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}"]  # absolute: not beside the notebooks
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    with log.open("w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    lab = Lab(f"http://127.0.0.1:{port}", token, log)
    children: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited ({server.returncode}) before answering:\n{log.read_text()[-3000:]}")
            try:
                lab.api("GET", "status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer within {START_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield lab
    finally:
        try:
            children = set(psutil.Process(server.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        try:
            lab.api("POST", "shutdown")  # stops its kernels too
        except OSError:
            pass
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        for child in children:  # a kernel the shutdown missed
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(children), timeout=10)
