"""`labkit report`: run every lesson on this machine and write a report worth looking at.

Each notebook runs under papermill (parameters ``device``, ``size`` and any ``--param``) with a
per-cell timeout. A failing notebook is reported with its cell and error, and the others still
run. ``reports/<run>/index.html`` shows the machine, every figure the notebooks recorded with
`labkit.record` beside the GPU reference figures (card named), the plots they drew, links to each
executed notebook as HTML, and the failures; ``figures.json`` beside it holds the figures, so runs
on two machines can be compared (``labkit report --compare A B``).
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import nbformat
from tqdm.auto import tqdm

from labkit.claims import MIME as CLAIM_MIME
from labkit.recording import MIME
from labkit.reference import lesson_spread, spread

__all__ = ["NotebookRun", "run_report", "read_figures", "compare", "claims_in", "failed_claims"]


@dataclass
class NotebookRun:
    name: str
    status: str = "ok"  # or "failed"
    error: str = ""
    failed_cell: int | None = None  # its execution count: the "In [n]" of the executed notebook
    seconds: float = 0.0
    figures: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # files under the run folder


def figures_in(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Every `labkit.record` output of an executed notebook, in order (a later one of a name wins)."""
    found: dict[str, dict[str, Any]] = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if MIME in data:
                found[data[MIME]["name"]] = dict(data[MIME])
    return list(found.values())


def claims_in(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Every `labkit.claim` output of an executed notebook, in order."""
    return [dict(out["data"][CLAIM_MIME]) for cell in nb.cells for out in cell.get("outputs", [])
            if CLAIM_MIME in out.get("data", {})]


def failed_claims(runs: list[NotebookRun]) -> list[tuple[str, dict[str, Any]]]:
    """(notebook, claim) for each claim that did not hold, checked here or on record."""
    return [(r.name, c) for r in runs for c in r.claims if not c["holds"]]


def _save_images(nb: nbformat.NotebookNode, folder: Path, stem: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    pngs = [out["data"]["image/png"] for cell in nb.cells for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]
    for i, png in enumerate(pngs):
        path = folder / f"{stem}-{i:02d}.png"
        path.write_bytes(base64.b64decode(png))
        names.append(f"{folder.name}/{path.name}")
    return names


def _execute(path: Path, out: Path, parameters: dict[str, Any], timeout_s: float) -> NotebookRun:
    import papermill

    run = NotebookRun(path.stem)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(path.parent),
                                   kernel_name="python3", progress_bar=False, execution_timeout=timeout_s,
                                   # the kernel's own warning (TCP without encryption) once per notebook
                                   # would drown the progress bar; its errors still reach papermill
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except papermill.PapermillExecutionError as e:
        run.status, run.failed_cell, run.error = "failed", e.exec_count, f"{e.ename}: {e.evalue}"
    except Exception as e:  # a kernel that died, a timeout, an unreadable notebook
        run.status, run.error = "failed", f"{type(e).__name__}: {e}"
    run.seconds = time.perf_counter() - t0
    return run


def run_report(notebooks: list[Path], out_root: Path, *, device: str = "auto", size: str = "small",
               params: dict[str, dict[str, Any]] | None = None, timeout_s: float = 600.0,
               progress: bool = True) -> tuple[Path, list[NotebookRun]]:
    """Run ``notebooks`` and write ``out_root/<run>/`` (index.html, figures.json, executed notebooks)."""
    from nbconvert import HTMLExporter

    from labkit.device import pick_device
    from labkit.doctor import doctor_facts

    facts = doctor_facts()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    used = pick_device(device)  # the folder names the device the lessons ran on, not the default
    folder = out_root / f"{stamp}-{used.type}{used.index if used.index is not None else ''}-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    runs = []
    for path in tqdm(notebooks, desc="lessons", unit="notebook", disable=not progress):
        executed = folder / path.name
        parameters = {"device": device, "size": size, **(params or {}).get(path.stem, {})}
        run = _execute(path, executed, parameters, timeout_s)
        if executed.exists():
            nb = nbformat.read(executed, as_version=4)
            run.figures = figures_in(nb)
            run.claims = claims_in(nb)
            run.images = _save_images(nb, folder / "img", path.stem)
            (folder / f"{path.stem}.html").write_text(exporter.from_notebook_node(nb)[0])
        elif not run.error:
            run.status, run.error = "failed", "papermill wrote no executed notebook"
        runs.append(run)
    for run in runs:
        for fig in run.figures:
            # the lesson's own full-size run on a GPU first; else the benchmark figure it names
            found = lesson_spread(run.name, fig["name"])
            if found is not None:
                fig["reference_label"] = "this lesson at size='full'"
            elif fig.get("reference"):
                found = spread(fig["reference"])
            if found is not None:
                fig["reference_value"], fig["reference_spread"] = found.median, found.text()
                fig["reference_card"] = found.source
    (folder / "figures.json").write_text(json.dumps(
        {"run": folder.name, "machine": facts, "device": device, "size": size,
         "notebooks": {r.name: asdict(r) for r in runs}}, indent=1, default=str))
    (folder / "index.html").write_text(_INDEX.render(run=folder.name, facts=facts, runs=runs, size=size,
                                                         unheld=failed_claims(runs)))
    return folder, runs


def read_figures(path: Path) -> dict[str, Any]:
    """A run's figures.json, from the file or its run folder (`ValueError` saying what is wrong)."""
    file = path / "figures.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{path}: no such run (expected a run folder holding figures.json, or the file)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not a figures.json written by labkit report ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("notebooks"), dict):
        raise ValueError(f"{file}: not a figures.json written by labkit report (no 'notebooks')")
    return data


def compare(a: Path, b: Path) -> str:
    """A table of the figures two runs share: A, B and B / A."""
    runs = [read_figures(a), read_figures(b)]
    values = [{(nb, f["name"]): f for nb, r in run["notebooks"].items() for f in r["figures"]} for run in runs]
    lines = [f"A: {runs[0]['run']} ({runs[0]['machine']['device_name']})",
             f"B: {runs[1]['run']} ({runs[1]['machine']['device_name']})", "",
             f"{'notebook':24s} {'figure':36s} {'A':>12s} {'B':>12s} {'B/A':>7s}"]
    for key in sorted(values[0].keys() & values[1].keys()):
        fa, fb = values[0][key], values[1][key]
        ratio = (f"{fb['value'] / fa['value']:7.2f}" if isinstance(fa["value"], (int, float))
                 and isinstance(fb["value"], (int, float)) and fa["value"] else "")
        lines.append(f"{key[0]:24s} {key[1]:36s} {_fmt(fa):>12s} {_fmt(fb):>12s} {ratio:>7s}")
    only = values[0].keys() ^ values[1].keys()
    if only:
        lines += ["", f"{len(only)} figure(s) recorded in only one run: " + ", ".join(sorted(f"{n}/{f}" for n, f in only))]
    return "\n".join(lines)


def _fmt(fig: dict[str, Any]) -> str:
    v = fig["value"]
    return f"{v:,.4g}" if isinstance(v, (int, float)) else str(v)


_INDEX = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GPU Inference Lab report {{ run }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.failed { color: #b00020; font-weight: bold; } .ok { color: #1b5e20; }
.held { color: #1b5e20; } .unheld { color: #b00020; } .flag { border: 2px solid #b00020; padding: .5rem 1rem; }
.plots img { max-width: 340px; border: 1px solid #ddd; margin: .3rem; }
</style></head><body>
<h1>GPU Inference Lab: report {{ run }}</h1>
{% if unheld %}<div class="flag"><h2 class="unheld">{{ unheld|length }} claim(s) did not hold</h2><ul>
{% for nb, c in unheld %}<li><a href="#{{ nb }}">{{ nb }}</a>: {{ c.statement }}{% if c.checked == "recorded" %} (recorded on {{ c.source }}){% endif %}</li>{% endfor %}
</ul></div>{% endif %}
<h2>This machine</h2>
<table>
<tr><th>device</th><td>{{ facts.device_name }}</td></tr>
<tr><th>torch</th><td>{{ facts.torch }}{% if facts.cuda_build %} (CUDA {{ facts.cuda_build }}){% endif %}</td></tr>
<tr><th>python</th><td>{{ facts.python }} on {{ facts.platform }}</td></tr>
<tr><th>size</th><td>{{ size }}</td></tr>
<tr><th>plan</th><td>{% for line in facts.plan %}{{ line }}<br>{% endfor %}</td></tr>
</table>
<h2>Lessons</h2>
<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>figures</th><th>claims held</th><th>plots</th></tr>
{% for r in runs %}<tr><td><a href="{{ r.name }}.html">{{ r.name }}</a></td>
<td class="{{ r.status }}">{{ r.status }}{% if r.failed_cell is not none %} (In [{{ r.failed_cell }}]){% endif %}</td>
<td class="num">{{ "%.1f"|format(r.seconds) }}</td><td class="num">{{ r.figures|length }}</td>
<td class="num">{{ r.claims|selectattr("holds")|list|length }} / {{ r.claims|length }}</td>
<td class="num">{{ r.images|length }}</td></tr>{% endfor %}
</table>
{% set failed = runs|selectattr("status", "equalto", "failed")|list %}
{% if failed %}<h2 class="failed">Failures</h2><ul>
{% for r in failed %}<li><b>{{ r.name }}</b>{% if r.failed_cell is not none %}, cell In [{{ r.failed_cell }}]{% endif %}: <code>{{ r.error }}</code></li>{% endfor %}
</ul>{% endif %}
{% for r in runs %}
<h2 id="{{ r.name }}">{{ r.name }}</h2>
{% if r.figures %}<table><tr><th>figure</th><th>measured here</th><th>unit</th><th>recorded on a GPU: median (range) over the recorded runs, what was measured, card and runs</th></tr>
{% for f in r.figures %}<tr><td>{{ f.name }}</td>
<td class="num">{% if f.value is number %}{{ "{:,.4g}".format(f.value) }}{% else %}{{ f.value }}{% endif %}</td>
<td>{{ f.unit }}</td>
<td>{% if f.reference_value is defined %}{{ f.reference_spread }}{% if f.reference_label %}, {{ f.reference_label }}{% endif %} ({{ f.reference_card }}){% endif %}</td></tr>
{% endfor %}</table>{% else %}<p>No figures recorded.</p>{% endif %}
{% if r.claims %}<table><tr><th></th><th>claim</th><th>checked</th><th>evidence</th></tr>
{% for c in r.claims %}<tr><td class="{{ 'held' if c.holds else 'unheld' }}">{{ "✓" if c.holds else "✗" }}</td>
<td>{{ c.statement }}</td>
<td>{% if c.checked == "recorded" %}recorded on {{ c.source }}{% else %}on this machine{% endif %}{% if c.applies != "any" %} ({{ c.applies }} claim){% endif %}</td>
<td>{% for k, v in c.evidence.items() %}{{ k }} = {% if v is number %}{{ "{:,.4g}".format(v) }}{% else %}{{ v }}{% endif %}{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% else %}<p>No claims checked.</p>{% endif %}
<div class="plots">{% for img in r.images %}<a href="{{ img }}"><img src="{{ img }}" alt="{{ r.name }} plot {{ loop.index }}"></a>{% endfor %}</div>
{% endfor %}
</body></html>
""")
