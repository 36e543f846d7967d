"""Lessons 00, 01 and 04 in JupyterLab in a real browser: Run All Cells finishes without an
error, then the lesson's playground answers a moved slider and its button with a new plot whose
printed figures follow the new setting."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from .support import screenshot_on_failure

RUN_ALL_S = 180  # one lesson's Run All Cells; lesson 04 takes about 100 s on two cores
PLAYGROUND_S = 90  # one click of a playground button


def _number(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    assert found, f"no {pattern!r} in the playground's output:\n{text}"
    return float(found.group(1).replace(",", ""))


def _sweep_follows(before: str, after: str, old: str, new: str) -> None:
    assert _number(after, r"batch 1 to ([\d,]+):") == float(new), f"max batch {new} not followed:\n{after}"


def _batching_follows(before: str, after: str, old: str, new: str) -> None:
    was, now = (_number(t, r"served of ([\d,]+) offered") for t in (before, after))
    expected = was * float(new) / float(old)  # the offered rate is the load share of the capacity
    assert abs(now - expected) <= 0.02 * expected + 1, (
        f"load {old}% -> {new}%: offered {was:,.0f} -> {now:,.0f} requests/s, expected about {expected:,.0f}:\n{after}")


def _memory_follows(before: str, after: str, old: str, new: str) -> None:
    assert f"budget {old} MiB" in before, before
    assert f"budget {new} MiB" in after and "largest batch" in after, f"budget {new} MiB not followed:\n{after}"


@dataclass(frozen=True)
class Playground:
    button: str  # its label
    slider: str  # the slider's description
    key: str  # the key that moves it one step
    finished: str  # what its printed text says once a run is done
    baseline: bool  # press the button once before moving the slider (the built widget shows nothing)
    follows: Callable[[str, str, str, str], None]  # (text before, text after, old value, new value)


LESSONS = {
    "00_measuring": Playground("Run sweep", "max batch", "ArrowLeft", "items/s, at batch", False, _sweep_follows),  # 64 -> 32
    "01_dynamic_batching": Playground("Run", "load % cap.", "ArrowRight", "not served", True, _batching_follows),  # 70 -> 80
    "04_memory": Playground("Find max batch", "budget MiB", "ArrowRight", "(x: did not fit)", False, _memory_follows),  # 16 -> 17
}

PROMPTS = "[...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
# JupyterLab renders an error (a traceback) as stderr text, the mime type of warnings too: a traceback tells them apart
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'
TRACEBACKS = (f"root => [...root.querySelectorAll('{STDERR}')].map(e => e.textContent)"
              ".filter(t => t.includes('Traceback (most recent call last)'))")
IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"


def _run_all(page) -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(f"() => {PROMPTS}.some(t => t.includes('*'))", timeout=30_000)
    # done: nothing queued or running, and either every cell ran or one failed (the rest then stay unrun)
    page.wait_for_function(
        f"() => {{ const p = {PROMPTS}; return !p.some(t => t.includes('*')) && "
        f"(p.every(t => /\\[\\d+\\]/.test(t)) || ({TRACEBACKS})(document).length > 0) }}",
        timeout=RUN_ALL_S * 1000)
    page.wait_for_selector(IDLE, timeout=30_000)


def _output(widget) -> tuple[str, list[str]]:
    """The playground output's printed text and the src of each image it shows, loaded."""
    out = widget.locator(".widget-output")
    text = "".join(out.locator('[data-mime-type="application/vnd.jupyter.stdout"]').all_text_contents())
    images = out.locator("img").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0 ? i.src : 'unloaded')")
    return text, images


def _press(page, widget, label: str, before: tuple[str, list[str]], finished: str) -> tuple[str, list[str]]:
    """Click the button; wait for a new, loaded image and printed text saying ``finished``."""
    widget.get_by_role("button", name=label, exact=True).click()
    deadline = time.monotonic() + PLAYGROUND_S
    while time.monotonic() < deadline:
        now = _output(widget)
        if now[1] and now[1] != before[1] and "unloaded" not in now[1] and finished in now[0]:
            return now
        raised = widget.evaluate(TRACEBACKS)
        if raised:
            raise AssertionError(f"'{label}' raised:\n" + "\n---\n".join(e[-3000:] for e in raised))
        page.wait_for_timeout(250)
    raise AssertionError(f"'{label}' drew no new plot with its figures within {PLAYGROUND_S} s; the output "
                         f"shows {len(now[1])} image(s) (before: {len(before[1])}) and says:\n{now[0]}")


@pytest.mark.slow
@pytest.mark.timeout(RUN_ALL_S + 2 * PLAYGROUND_S + 60)
@pytest.mark.parametrize("name", list(LESSONS))
def test_lesson_runs_in_jupyterlab_and_its_playground_redraws(lab, browser, name, request):
    play = LESSONS[name]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    writes = []  # a save is a PUT to /api/contents/<path>; checkpoints (POST) go to the lab's temporary folder
    page.on("request", lambda r: writes.append(f"{r.method} {r.url.split('?')[0]}")
            if r.method in ("PUT", "PATCH", "DELETE") and "/api/contents/" in r.url else None)
    try:
        with screenshot_on_failure(page, request.node.name):
            page.goto(lab.open_url(f"notebooks/{name}.ipynb"))
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            lab.wait_for_kernel(f"notebooks/{name}.ipynb", 60)
            page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=30_000)  # and the page sees it
            _run_all(page)
            errors = page.evaluate(f"() => ({TRACEBACKS})(document.querySelector('.jp-Notebook'))")
            assert not errors, f"{name}: a cell raised:\n" + "\n---\n".join(e[-2000:] for e in errors)
            prompts = page.evaluate(f"() => {PROMPTS}")
            unrun = [i for i, t in enumerate(prompts) if not re.search(r"\[\d+\]", t)]
            assert not unrun, f"{name}: code cells {unrun} of {len(prompts)} have no execution count: {prompts}"

            widget = page.locator(".jp-Notebook .widget-vbox").filter(
                has=page.get_by_role("button", name=play.button, exact=True))
            assert widget.count() == 1, f"{name}: {widget.count()} playgrounds with a '{play.button}' button"
            widget.scroll_into_view_if_needed()
            before = _output(widget)
            if play.baseline:
                before = _press(page, widget, play.button, before, play.finished)
            slider = widget.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=play.slider))
            readout = slider.locator(".widget-readout")
            old = readout.text_content().strip()
            slider.locator(".noUi-handle").focus()
            page.keyboard.press(play.key)
            page.wait_for_function("([e, old]) => e.textContent.trim() !== old", arg=[readout.element_handle(), old],
                                   timeout=10_000)
            new = readout.text_content().strip()
            after = _press(page, widget, play.button, before, play.finished)
            play.follows(before[0], after[0], old.replace(",", ""), new.replace(",", ""))
            assert not writes, f"{name}: the page wrote to the project: {writes}"
    finally:
        page.close()
        lab.stop_kernels()
