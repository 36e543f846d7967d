"""The one rule for browser tests: Chromium driven by Playwright, or a clear skip.

Where Chromium or the playwright package is missing the browser tests skip, saying what is
missing; with ``LABKIT_REQUIRE_BROWSER=1`` (CI sets it) that is a failure instead. The conftest
fixture here and `tests/test_report.py` both go through `chromium()`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAILURES = ROOT / "reports" / "browser-failures"  # screenshots of failed browser tests (reports/ is ignored)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def unavailable(what: str) -> None:
    """Skip, saying ``what`` is missing; fail instead where LABKIT_REQUIRE_BROWSER=1."""
    if os.environ.get("LABKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LABKIT_REQUIRE_BROWSER=1 but {what}", pytrace=False)
    pytest.skip(f"{what} (set LABKIT_REQUIRE_BROWSER=1 to make this a failure)")


def require_module(name: str, hint: str) -> None:
    if find_spec(name) is None:
        unavailable(f"the {name} package is not installed ({hint})")


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (the system's, not one Playwright downloads), closed at the end."""
    require_module("playwright", "pip install -e '.[dev]'")
    path = next((shutil.which(n) for n in BROWSERS if shutil.which(n)), None)
    if path is None:
        unavailable(f"no Chromium on this machine (looked for {', '.join(BROWSERS)} on PATH)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])  # we run as root
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def screenshot_on_failure(page, name: str) -> Iterator[None]:
    """On any failure inside, keep a full-page screenshot and name it in the error."""
    try:
        yield
    except Exception as e:
        FAILURES.mkdir(parents=True, exist_ok=True)
        shot = FAILURES / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        try:
            page.screenshot(path=str(shot), full_page=True)
            kept = f"screenshot: {shot}"
        except Exception as why:  # a crashed page: the original error matters more
            kept = f"no screenshot ({type(why).__name__}: {why})"
        raise AssertionError(f"{e}\n[{kept}]") from e
