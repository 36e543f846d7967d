import json

import pytest

from labkit.reference import lesson_spread, lookup, recorded_runs, results_dir, save_results, spread


def write(path, data):
    path.write_text(json.dumps(data))


@pytest.fixture
def results(tmp_path):
    write(tmp_path / "2025-12-01-h100-old.json", {
        "device": "NVIDIA H100", "torch": "2.4.0",
        "a": {"b": 1}, "only_old": {"x": 7},
    })
    write(tmp_path / "2026-01-02-a100.json", {
        "card": "NVIDIA A100-SXM4-80GB", "date": "2026-01-05", "torch": "2.6.0",
        "device_type": "cuda", "results": {"a": {"b": 2, "c": [1, 2]}},
    })
    write(tmp_path / "2026-02-01-notes.json", {"a": {"b": 3}, "comment": "no card named"})
    write(tmp_path / "2026-02-02-cpu.json", {
        "card": "CPU", "date": "2026-02-02", "device_type": "cpu", "results": {"a": {"b": 4}},
    })
    (tmp_path / "README.txt").write_text("not a results file")
    return tmp_path


def test_recorded_runs_reads_new_and_old_style(results):
    runs = recorded_runs(results)
    assert [r.path.name for r in runs] == ["2025-12-01-h100-old.json", "2026-01-02-a100.json"]
    old, new = runs
    assert (old.card, old.date, old.torch) == ("NVIDIA H100", "2025-12-01", "2.4.0")
    assert (new.card, new.date, new.torch) == ("NVIDIA A100-SXM4-80GB", "2026-01-05", "2.6.0")
    for run in runs:
        assert run.card in run.label and run.date in run.label
        assert run.is_gpu


def test_recorded_runs_can_include_cpu_runs(results):
    names = [r.path.name for r in recorded_runs(results, gpu_only=False)]
    assert names == ["2025-12-01-h100-old.json", "2026-01-02-a100.json", "2026-02-02-cpu.json"]


def test_undated_file_is_labelled_undated(tmp_path):
    write(tmp_path / "h200.json", {"device": "NVIDIA H200"})
    (run,) = recorded_runs(tmp_path)
    assert run.date == "undated"
    assert run.torch == "?"


def test_empty_directory_has_no_runs(tmp_path):
    assert recorded_runs(tmp_path) == []


def test_lookup_returns_newest_value_and_its_run(results):
    value, run = lookup("a.b", results)
    assert value == 2
    assert run.card == "NVIDIA A100-SXM4-80GB"


def test_lookup_returns_subtrees(results):
    value, _ = lookup("a", results)
    assert value == {"b": 2, "c": [1, 2]}


def test_lookup_falls_back_to_older_runs(results):
    value, run = lookup("only_old.x", results)
    assert value == 7
    assert run.card == "NVIDIA H100"


@pytest.mark.parametrize("key", ["missing", "a.missing", "a.b.c", "comment"])
def test_lookup_missing_path_is_none(results, key):
    assert lookup(key, results) is None


def test_save_results_round_trips_as_a_cpu_run(tmp_path):
    path = save_results({"a": {"b": 5}}, "cpu", source="test", suffix="smoke", directory=tmp_path / "out")
    assert path.parent == tmp_path / "out"
    assert path.name.endswith("-cpu-smoke.json")
    data = json.loads(path.read_text())
    assert (data["card"], data["device_type"], data["source"]) == ("CPU", "cpu", "test")
    assert data["results"] == {"a": {"b": 5}}
    assert recorded_runs(path.parent) == []
    (run,) = recorded_runs(path.parent, gpu_only=False)
    assert run.card == "CPU" and run.date == data["date"]
    assert path.name.startswith(data["date"])


def test_save_results_merges_sections_into_the_days_file_when_asked(tmp_path):
    save_results({"a": 1, "b": 2}, "cpu", source="test", directory=tmp_path)
    path = save_results({"b": 3, "c": 4}, "cpu", source="test", directory=tmp_path, merge=True)
    assert json.loads(path.read_text())["results"] == {"a": 1, "b": 3, "c": 4}
    save_results({"d": 5}, "cpu", source="test", directory=tmp_path)
    assert json.loads(path.read_text())["results"] == {"d": 5}


def test_repository_has_recorded_gpu_runs():
    assert results_dir().is_dir()
    runs = recorded_runs()
    assert any("NVIDIA" in r.card for r in runs)
    assert all(r.is_gpu for r in runs)


def test_an_unreadable_results_file_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "2026-01-01-h100.json").write_text(json.dumps({"card": "NVIDIA H100", "x": 1}))
    (tmp_path / "2026-01-02-broken.json").write_text("{ not json")
    with pytest.warns(UserWarning, match="2026-01-02-broken.json"):
        runs = recorded_runs(tmp_path)
    assert [r.card for r in runs] == ["NVIDIA H100"]


def test_spread_takes_each_run_once_from_the_first_path_it_has(tmp_path):
    write(tmp_path / "2026-11-27-h200-anchors.json", {"device": "NVIDIA H200", "old": {"ms": 5.53}})
    write(tmp_path / "2026-11-27-h200-first.json", {"card": "NVIDIA H200", "results": {"new": {"ms": 8.35}}})
    write(tmp_path / "2026-11-28-h200.json", {"card": "NVIDIA H200", "results": {"new": {"ms": 4.46}, "old": {"ms": 99}}})
    s = spread("new.ms", "old.ms", directory=tmp_path)
    assert s.values == (5.53, 8.35, 4.46)  # the last run has both paths: the first one named wins
    assert (s.median, s.lo, s.hi) == (5.53, 4.46, 8.35)
    assert s.text(unit="ms") == "5.53 ms (median of 3 runs, 4.46–8.35)"
    assert s.source.startswith("NVIDIA H200, 2026-11-27/2026-11-28, 3 runs:") and "h200-anchors" in s.source


def test_spread_never_mixes_cards_and_skips_non_numbers(tmp_path):
    write(tmp_path / "2026-01-01-a100.json", {"card": "NVIDIA A100", "results": {"x": 1.0}})
    write(tmp_path / "2026-01-02-h200.json", {"card": "NVIDIA H200", "results": {"x": 2.0}})
    write(tmp_path / "2026-01-03-h200.json", {"card": "NVIDIA H200", "results": {"x": "n/a"}})
    s = spread("x", directory=tmp_path)
    assert s.values == (2.0,) and s.card == "NVIDIA H200" and s.text() == "2 (1 run)"
    assert spread("missing", directory=tmp_path) is None


def test_a_lessons_own_full_size_runs_are_found_by_figure_name_on_the_newest_card(tmp_path):
    lessons = lambda v: {"lessons": {"01_dynamic_batching": {"DynamicBatcher / ceiling": v, "device": "GPU"}}}  # noqa: E731
    write(tmp_path / "2026-11-01-h100-report.json", {"card": "NVIDIA H100", "device_type": "cuda", "results": lessons(0.5)})
    write(tmp_path / "2026-12-01-h200-report.json", {"card": "NVIDIA H200", "device_type": "cuda", "results": lessons(0.97)})
    write(tmp_path / "2026-12-02-h200-report.json", {"card": "NVIDIA H200", "device_type": "cuda", "results": lessons(0.99)})
    write(tmp_path / "2026-12-03-cpu-report.json", {"card": "CPU", "device_type": "cpu", "results": lessons(0.2)})
    found = lesson_spread("01_dynamic_batching", "DynamicBatcher / ceiling", tmp_path)
    assert found.values == (0.97, 0.99) and found.card == "NVIDIA H200"  # a dotted, spaced name; no CPU run
    assert lesson_spread("01_dynamic_batching", "device", tmp_path) is None  # text is not a figure
    assert lesson_spread("02_adaptive_and_priority", "DynamicBatcher / ceiling", tmp_path) is None
