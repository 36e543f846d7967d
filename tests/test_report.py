"""`labkit report`: every lesson executed once (here, on this machine's CPU), figures and plots
collected into one HTML page; a failing notebook gives a partial report and a non-zero exit."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from browser import support as browser_support  # tests/browser/support.py
from markupsafe import escape
from nbformat.v4 import new_code_cell, new_notebook

from labkit.cli import main
from labkit.report import compare, run_report

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The first test that asks for `course` runs every lesson in its setup (about 2.5 minutes on two
# cores); each lesson has its own 300 s limit inside run_report, so this only bounds the whole.
COURSE_TIMEOUT_S = 300 * len(LESSONS)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    folder, runs = run_report(LESSONS, tmp_path_factory.mktemp("reports"), device="cpu", size="small",
                              timeout_s=300, progress=False)
    return folder, {r.name: r for r in runs}


@pytest.mark.slow
@pytest.mark.timeout(COURSE_TIMEOUT_S)
@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_lesson_runs_records_figures_and_draws(course, path):
    folder, runs = course
    run = runs[path.stem]
    assert run.status == "ok", run.error
    assert run.figures, "a lesson records its key figures with labkit.record"
    assert len(run.claims) >= 3, "a lesson backs its teaching points with at least three checked claims"
    assert run.images, "a lesson draws at least one plot"
    assert all((folder / image).stat().st_size > 1000 for image in run.images)
    nb = nbformat.read(folder / path.name, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'device = "cpu"' in injected[0].source
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "CPU" in text, "on a CPU run the lesson must say its figures are CPU figures"
    assert (folder / f"{path.stem}.html").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.timeout(COURSE_TIMEOUT_S)
def test_index_shows_every_figure_every_plot_and_the_machine(course):
    folder, runs = course
    page = (folder / "index.html").read_text()
    assert "CPU" in page and "Failures" not in page
    for run in runs.values():
        assert f'href="{run.name}.html"' in page
        for fig in run.figures:
            assert str(escape(fig["name"])) in page, fig["name"]
        for image in run.images:
            assert f'src="{image}"' in page
    assert "NVIDIA H200" in page  # reference figures beside ours, with the card that measured them
    data = json.loads((folder / "figures.json").read_text())
    assert set(data["notebooks"]) == set(runs) and data["machine"]["device"] == "cpu"


@pytest.mark.slow
@pytest.mark.timeout(COURSE_TIMEOUT_S)
def test_every_claim_checked_on_this_cpu_held_and_none_is_a_gpu_claim_checked_on_cpu_figures(course):
    folder, runs = course
    checked = [(name, c) for name, r in runs.items() for c in r.claims if c["checked"] == "here"]
    assert checked
    misplaced = [(name, c["statement"]) for name, c in checked if c["applies"] == "gpu"]
    assert not misplaced, f"GPU claims 'checked' on a CPU run: {misplaced}"
    unheld = [f"{name}: {c['statement']} {c['evidence']}" for name, c in checked if not c["holds"]]
    assert not unheld, "claims this CPU run checked did not hold:\n" + "\n".join(unheld)
    recorded = [(name, c) for name, r in runs.items() for c in r.claims if c["checked"] == "recorded"]
    assert all(c["source"] and c["applies"] == "gpu" for _, c in recorded)
    data = json.loads((folder / "figures.json").read_text())
    for name, run in runs.items():
        assert data["notebooks"][name]["claims"] == run.claims
        assert all({"statement", "holds", "applies", "evidence"} <= c.keys() for c in run.claims)
    page = (folder / "index.html").read_text()
    for _, c in checked + recorded:
        assert str(escape(c["statement"])) in page


def _tiny(path: Path, *cells: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def tiny_notebooks(tmp_path):
    good = _tiny(tmp_path / "10_good.ipynb", 'device = "auto"\nsize = "small"\nn = 1',
                 'from labkit import record\nrecord("n", n, "things")\nrecord("speed", 12.5, "img/s", '
                 'reference="batching.resnet50_gpu.fp32_graph.batcher.img_s")',
                 "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    bad = _tiny(tmp_path / "11_bad.ipynb", 'device = "auto"\nsize = "small"',
                'from labkit import record\nrecord("before the failure", 3)',
                'raise RuntimeError("deliberate")', 'record("never reached", 4)')
    return good, bad


def test_claims_reach_the_page_and_figures_json_and_an_unheld_one_is_flagged_without_failing(tmp_path):
    nb = _tiny(tmp_path / "12_claims.ipynb", 'device = "auto"\nsize = "small"',
               'from labkit import claim\nclaim("two beats one", 2 > 1, evidence={"ratio": 2.0})\n'
               'claim("one beats two", 1 > 2, evidence={"ratio": 0.5})\n'
               'claim("graphs win 3x", True, applies="gpu", recorded="NVIDIA H200, 2026-11-27, 2 runs: a, b")')
    out = tmp_path / "reports"
    cli = subprocess.run([sys.executable, "-m", "labkit.cli", "report", str(nb), "--out", str(out), "--device", "cpu"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr  # a claim that did not hold is information, not a failed run
    assert "2 of 3 claims held" in cli.stdout and "did not hold: 12_claims: one beats two" in cli.stdout
    (folder,) = out.iterdir()
    claims = json.loads((folder / "figures.json").read_text())["notebooks"]["12_claims"]["claims"]
    assert [(c["statement"], c["holds"], c["applies"], c["checked"]) for c in claims] == [
        ("two beats one", True, "any", "here"), ("one beats two", False, "any", "here"),
        ("graphs win 3x", True, "gpu", "recorded")]
    assert claims[0]["evidence"] == {"ratio": 2.0}
    page = (folder / "index.html").read_text()
    flag = page[:page.index("This machine")]
    assert "1 claim(s) did not hold" in flag and "one beats two" in flag and "two beats one" not in flag
    assert "recorded on NVIDIA H200" in page and "2 / 3" in page


def test_a_failing_notebook_gives_a_partial_report_and_a_non_zero_exit(tiny_notebooks, tmp_path):
    good, bad = tiny_notebooks
    out = tmp_path / "reports"
    cli = subprocess.run([sys.executable, "-m", "labkit.cli", "report", str(bad), str(good), "--out", str(out),
                          "--device", "cpu", "--param", "10_good:n=5"], capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 1, cli.stderr
    assert "failed: 11_bad, cell In [4]: RuntimeError: deliberate" in cli.stderr  # after papermill's injected cell
    (folder,) = out.iterdir()
    page = (folder / "index.html").read_text()
    assert "Failures" in page and "RuntimeError: deliberate" in page
    data = json.loads((folder / "figures.json").read_text())
    good_figs = {f["name"]: f for f in data["notebooks"]["10_good"]["figures"]}
    bad_figs = [f["name"] for f in data["notebooks"]["11_bad"]["figures"]]
    assert good_figs["n"]["value"] == 5  # --param reached that notebook only
    assert "without encryption" not in cli.stderr  # the kernel's warning no longer drowns the progress
    assert "-cpu-small" in folder.name
    assert good_figs["speed"]["reference_card"].startswith("NVIDIA H200")
    assert bad_figs == ["before the failure"]
    assert data["notebooks"]["10_good"]["images"] and (folder / "11_bad.html").exists()


def test_param_must_name_a_notebook_and_a_key(tiny_notebooks, tmp_path):
    good, _ = tiny_notebooks
    cli = _report_cli(str(good), "--param", "n=5", cwd=tmp_path)
    assert cli.returncode == 2 and "NOTEBOOK:KEY=VALUE" in cli.stderr


def _report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`labkit report ARGS` in this process (a refusal starts no kernel, so no process is needed):
    its exit code and what it printed."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["report", *args])
            except SystemExit as e:  # argparse's refusals
                code = e.code
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["labkit", "report", *args], code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("args, says", [
    (["{good}", "--param", "10_goood:n=5"], "no notebook '10_goood' in this run"),
    (["{good}", "--device", "tpu"], "--device tpu: device must be"),
    (["{good}", "--device", "cpu:1"], "--device cpu:1"),
    (["{tmp}/nowhere.ipynb"], "no such notebook"),
    ([], "no lessons here"),
    (["--compare", "{tmp}/missing", "{tmp}"], "no such run"),
    (["--compare", "{tmp}/broken.json", "{tmp}/broken.json"], "not a figures.json written by labkit report"),
])
def test_report_mistakes_are_refused_up_front_in_one_line(tiny_notebooks, tmp_path, args, says):
    good, _ = tiny_notebooks
    (tmp_path / "broken.json").write_text("{not json")
    cli = _report_cli(*(a.format(good=good, tmp=tmp_path) for a in args), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert cli.returncode == 2 and says in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before a kernel started


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where CUDA is missing")
def test_report_refuses_cuda_without_a_gpu_once(tiny_notebooks, tmp_path):
    good, bad = tiny_notebooks
    cli = _report_cli(str(good), str(bad), "--device", "cuda", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert cli.returncode == 2 and cli.stderr.count("sees no CUDA device") == 1


def test_the_run_folder_names_the_device_the_lessons_ran_on(tiny_notebooks, tmp_path, monkeypatch):
    import labkit.doctor

    good, _ = tiny_notebooks
    facts = labkit.doctor.doctor_facts()
    monkeypatch.setattr(labkit.doctor, "doctor_facts", lambda: {**facts, "device": "cuda:0"})  # this machine's default
    folder, _ = run_report([good], tmp_path / "out", device="cpu", progress=False)
    assert "-cpu-small" in folder.name and "cuda" not in folder.name


def test_compare_two_runs(tmp_path):
    def run(name, device, speed):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "figures.json").write_text(json.dumps({
            "run": name, "machine": {"device_name": device},
            "notebooks": {"01": {"figures": [{"name": "speed", "value": speed}, {"name": f"only {name}", "value": 1}]}}}))
        return folder

    table = compare(run("a", "CPU (2 threads)", 100.0), run("b", "NVIDIA H200", 2500.0))
    assert "CPU (2 threads)" in table and "NVIDIA H200" in table
    line = next(row for row in table.splitlines() if "speed" in row)
    assert line.split()[-1] == "25.00"
    assert "2 figure(s) recorded in only one run" in table


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium through Playwright; skips (or fails, with LABKIT_REQUIRE_BROWSER=1) as
    every browser test does where it or playwright is missing (tests/browser/support.py)."""
    with browser_support.chromium() as browser:
        yield browser


_IMAGES = "() => [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 80), ok: i.complete && i.naturalWidth > 0}))"
# for each lesson section of index.html: the images in its plots block, and how many loaded
_PLOTS = """() => [...document.querySelectorAll('h2[id]')].map(h => {
  let e = h.nextElementSibling;
  while (e && !(e.matches('div.plots') || e.matches('h2'))) e = e.nextElementSibling;
  const imgs = e && e.matches('div.plots') ? [...e.querySelectorAll('img')] : [];
  return [h.id, imgs.filter(i => i.complete && i.naturalWidth > 0).length];
})"""


@pytest.mark.slow
@pytest.mark.timeout(COURSE_TIMEOUT_S)
def test_the_report_renders_in_a_real_browser(course, chromium):
    folder, runs = course
    page = chromium.new_page(viewport={"width": 1200, "height": 1000})
    # the pages are files; an executed notebook's HTML names CDN scripts, which have no business here
    page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
    try:
        with browser_support.screenshot_on_failure(page, "report-index"):
            page.goto((folder / "index.html").as_uri(), wait_until="load")
            images = page.evaluate(_IMAGES)
            assert images and all(i["ok"] for i in images), f"images that did not load: {[i for i in images if not i['ok']]}"
            plots = dict(page.evaluate(_PLOTS))
            assert plots.keys() >= runs.keys(), f"lessons without a section: {runs.keys() - plots.keys()}"
            assert all(plots[name] >= 1 for name in runs), f"loaded plots per lesson: {plots}"
        for name in runs:  # each executed lesson, reached by its link
            with browser_support.screenshot_on_failure(page, f"report-{name}"):
                page.goto((folder / "index.html").as_uri(), wait_until="load")
                page.locator(f'a[href="{name}.html"]').first.click()
                page.wait_for_url(f"**/{name}.html", wait_until="load")
                images = page.evaluate(_IMAGES)
                assert images, f"{name}.html shows no plot"
                assert all(i["ok"] for i in images), f"{name}.html: images that did not load: {[i for i in images if not i['ok']]}"
    finally:
        page.close()
