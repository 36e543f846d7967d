"""Exercise 06's judges: the solution's answers earn full marks, and each typical mistake fails
with a message that names what went wrong."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from labkit.grading.check import grade_here, run_here
from labkit.grading.exercises.ex06_streams_and_graphs import _timeline, overlap_reference
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import Mismatch, Observation

HIDDEN = Path(__file__).parent / "hidden" / "hidden_06.py"
_spec = importlib.util.spec_from_file_location("hidden_06", HIDDEN)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
TESTS = json.loads(json.dumps(_module.TESTS))  # as the grader receives them: tuples become lists

# -- 06.padded_runner: the right answer and typical wrong ones --------------------------------------


def _smallest(sizes: list[int], n: int) -> int:
    return next(s for s in sizes if s >= n)


def run_padded(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    sizes = sorted(graphs)
    outputs = []
    for chunk in x.split(sizes[-1]):
        size = _smallest(sizes, len(chunk))
        padded = torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[size](padded)[: len(chunk)].clone())
    return torch.cat(outputs)


def always_largest(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    largest = max(graphs)
    outputs = []
    for chunk in x.split(largest):
        padded = torch.cat([chunk, chunk.new_zeros((largest - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[largest](padded)[: len(chunk)].clone())
    return torch.cat(outputs)


def no_slice(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    sizes = sorted(graphs)
    outputs = []
    for chunk in x.split(sizes[-1]):
        size = _smallest(sizes, len(chunk))
        padded = torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[size](padded).clone())
    return torch.cat(outputs)


def garbage_padding(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    sizes = sorted(graphs)
    outputs = []
    for chunk in x.split(sizes[-1]):
        size = _smallest(sizes, len(chunk))
        padded = torch.empty((size, *chunk.shape[1:]), dtype=chunk.dtype)
        padded[: len(chunk)] = chunk
        outputs.append(graphs[size](padded)[: len(chunk)].clone())
    return torch.cat(outputs)


def chunks_reversed(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    sizes = sorted(graphs)
    outputs = []
    for chunk in reversed(x.split(sizes[-1])):
        size = _smallest(sizes, len(chunk))
        padded = torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[size](padded)[: len(chunk)].clone())
    return torch.cat(outputs)


def float32_padding(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    """Zeros in the default dtype: torch.cat promotes a float16 batch to float32."""
    sizes = sorted(graphs)
    outputs = []
    for chunk in x.split(sizes[-1]):
        size = _smallest(sizes, len(chunk))
        padded = torch.cat([chunk, torch.zeros((size - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[size](padded)[: len(chunk)].clone())
    return torch.cat(outputs)


def no_clone(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    """Views of the graphs' buffers: a chunk's rows are overwritten by the next replay of its graph."""
    sizes = sorted(graphs)
    outputs = []
    for chunk in x.split(sizes[-1]):
        size = _smallest(sizes, len(chunk))
        padded = torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[size](padded)[: len(chunk)])
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def unsorted_sizes(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    """The first size in the dict that holds the batch, not the smallest."""
    largest = max(graphs)
    outputs = []
    for chunk in x.split(largest):
        size = next(s for s in graphs if s >= len(chunk))
        padded = torch.cat([chunk, chunk.new_zeros((size - len(chunk), *chunk.shape[1:]))])
        outputs.append(graphs[size](padded)[: len(chunk)].clone())
    return torch.cat(outputs)


def unpadded(graphs: dict, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([graphs[max(graphs)](chunk).clone() for chunk in x.split(max(graphs))])


def test_the_solution_earns_full_marks_on_the_public_and_hidden_cases():
    score = grade_here("06.padded_runner", run_padded)
    assert score.points == 4 and not score.feedback, score.report()
    hidden = QUESTIONS["06.padded_runner"].trials(TESTS["06.padded_runner"])
    for trial in hidden:
        seen = run_here(trial, run_padded)
        assert seen.error is None, seen.error
        trial.judge(seen)


@pytest.mark.parametrize(("answer", "says"), [
    (always_largest, "the smallest captured size that holds the batch"),
    (no_slice, "the pad rows leaked into the result: of each graph's output keep only"),
    (garbage_padding, "pad with zero rows"),
    (chunks_reversed, "the result, row by row"),
    (float32_padding, "a captured graph takes exactly its own shape"),
    (no_clone, "changed: it shares memory with a graph's output buffer"),
    (unsorted_sizes, "the smallest captured size that holds the batch"),
    (unpadded, "pad the batch to"),
])
def test_a_typical_mistake_loses_points_and_says_why(answer, says):
    score = grade_here("06.padded_runner", answer)
    assert score.points < 4, score.report()
    assert any(says in line for line in score.feedback), score.report()
    print(score.report())


def test_feedback_names_the_call_what_was_expected_and_what_came_back():
    score = grade_here("06.padded_runner", always_largest)
    line = next(f for f in score.feedback if "graphs called" in f)
    assert "run_padded(graphs for batch sizes [1, 2, 4, 8], x of shape (3, 4), float32)" in line
    assert "expected graph 4 <- [x[0], x[1], x[2], 0s]" in line
    assert "got graph 8 <- [x[0], x[1], x[2], 0s, 0s, 0s, 0s, 0s]" in line


def test_garbage_padding_is_caught_even_where_fresh_memory_would_be_zeros():
    """The probe fills new allocations with a non-zero byte, so torch.empty is never zeros by luck."""
    trial = QUESTIONS["06.padded_runner"].trials()[0]
    for _ in range(5):
        seen = run_here(trial, garbage_padding)
        assert seen.extra["calls"][0][1][3] is None  # the pad row: neither a row of x nor zeros


def test_a_malformed_case_is_refused():
    build = QUESTIONS["06.padded_runner"].build
    for bad in (([], [3, 2]), ([2, 2], [3, 2]), ([4], [0, 2]), ([4], [3, 9]), ([4], [3, 2], "", "int8")):
        with pytest.raises(ValueError):
            build(*bad)


# -- 06.overlap_bound --------------------------------------------------------------------------------


def overlap_bound(events: list) -> dict[str, float]:
    return overlap_reference(events)


def _with(**changes):
    def answer(events: list) -> dict:
        right = overlap_reference(events)
        copies = sorted((b, s, e) for stage, b, s, e in events if stage == "copy")
        computes = sorted((b, s, e) for stage, b, s, e in events if stage == "compute")
        total_copy = sum(e - s for _, s, e in copies)
        total_compute = sum(e - s for _, s, e in computes)
        first_copy, last_compute = copies[0][2] - copies[0][1], computes[-1][2] - computes[-1][1]
        made = {
            "max_only": {"best_s": max(total_copy, total_compute)},
            "both_ends": {"best_s": max(total_copy, total_compute) + first_copy + last_compute},
            "two_terms": {"best_s": max(total_copy + last_compute, first_copy + total_compute)},
            "from_zero": {"measured_s": max(e for *_, e in events)},
            "busy": {"measured_s": right["sequential_s"]},
            "same_batch": {"overlap_s": sum(max(0.0, min(c[2], k[2]) - max(c[1], k[1]))
                                            for c, k in zip(copies, computes, strict=True))},
        }[changes["mistake"]]
        return {**right, **made}
    return answer


def in_list_order(events: list) -> dict:
    """Batches taken in the order the events come, not by batch number."""
    copies = [e for e in events if e[0] == "copy"]
    computes = [e for e in events if e[0] == "compute"]
    copied = computed = 0.0
    for c, k in zip(copies, computes, strict=True):
        copied += c[3] - c[2]
        computed = max(computed, copied) + k[3] - k[2]
    return {**overlap_reference(events), "best_s": computed}


def test_the_reference_matches_values_worked_out_by_hand():
    public = [case[0] for case in QUESTIONS["06.overlap_bound"].cases]
    by_hand = [(0.009, 0.007, 0.009, 0.0), (0.009, 0.007, 0.007, 0.002), (0.015, 0.012, 0.013, 0.002)]
    for events, want in zip(public, by_hand, strict=True):
        got = overlap_reference(events)
        assert all(math.isclose(got[k], w, abs_tol=1e-12) for k, w in
                   zip(("sequential_s", "best_s", "measured_s", "overlap_s"), want, strict=True)), got
    # many equal batches: sequential / best tends to the lesson's (copy + compute) / max(copy, compute)
    many = overlap_reference(_timeline([0.001] * 1000, [0.003] * 1000))
    assert math.isclose(many["sequential_s"] / many["best_s"], 4 / 3, rel_tol=1e-3)


def test_overlap_bound_solution_earns_full_marks_on_the_public_and_hidden_cases():
    score = grade_here("06.overlap_bound", overlap_bound)
    assert score.points == 3 and not score.feedback, score.report()
    for trial in QUESTIONS["06.overlap_bound"].trials(TESTS["06.overlap_bound"]):
        trial.judge(run_here(trial, overlap_bound))


@pytest.mark.parametrize(("mistake", "says"), [
    ("max_only", "best_s"), ("both_ends", "best_s"), ("two_terms", "best_s"),
    ("from_zero", "measured_s"), ("busy", "measured_s"), ("same_batch", "overlap_s"),
])
def test_a_typical_overlap_mistake_fails_on_its_own_number(mistake, says):
    score = grade_here("06.overlap_bound", _with(mistake=mistake))
    assert score.points < 3, score.report()
    assert any(f": {says}: expected" in line for line in score.feedback), score.report()
    print(score.report())


def test_batches_are_taken_by_number_not_by_list_order():
    score = grade_here("06.overlap_bound", in_list_order)
    assert score.points < 3 and any("best_s" in line for line in score.feedback), score.report()


def test_a_tuple_or_a_missing_key_is_told_the_shape_wanted():
    score = grade_here("06.overlap_bound", lambda events: tuple(overlap_reference(events).values()))
    assert score.points == 0 and "a dict with the keys sequential_s, best_s, measured_s, overlap_s" in score.feedback[0]


def test_the_overlap_judge_tolerates_rounding_only():
    trial = QUESTIONS["06.overlap_bound"].trials()[1]
    right = overlap_reference(trial.inputs["args"][0])
    trial.judge(Observation({k: v * (1 + 1e-9) for k, v in right.items()}))
    with pytest.raises(Mismatch):
        trial.judge(Observation({**right, "best_s": right["best_s"] * 1.01}))
    with pytest.raises(Mismatch):
        trial.judge(Observation({**right, "overlap_s": True}))


def test_a_malformed_timeline_is_refused():
    build = QUESTIONS["06.overlap_bound"].build
    for bad in ([], [["copy", 0, 0.0, 1.0]], [["load", 0, 0.0, 1.0], ["compute", 0, 1.0, 2.0]],
                [["copy", 0, 1.0, 0.5], ["compute", 0, 1.0, 2.0]]):
        with pytest.raises(ValueError):
            build(bad)
