"""Exercise 06: running any batch on CUDA graphs captured at a few fixed sizes (what
`labkit.graphs.GraphRunner` does), and what a recorded copy/compute timeline says about overlap.

The graphs are fakes built by the probe from plain data: each accepts exactly its own batch size
and dtype (a captured graph has fixed shapes), records which rows it was given, and, like a real
graph, writes its output into one static buffer that the next replay overwrites. Rows are never
mixed (row i out depends on row i in only), so a right answer's result is exact and every
mistake shows either in the values, in the calls recorded, or in a result that changes later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from labkit.grading.plain import describe, same, to_plain
from labkit.grading.trials import Mismatch, Observation, Oracle, Question, Trial

DTYPES = ("float32", "float16", "float64")
ZERO, OTHER = -1, None  # how the probe names a graph's input row: x's row index, all zeros, or neither
STALE = -7.0  # what the probe writes into every graph's output buffer after the answer returned


# -- 06.padded_runner ----------------------------------------------------------------------------


def _value(i: int, j: int) -> float:
    """Element j (row-major within the row) of row i of the probe's x: distinct, non-zero rows,
    exact in float16 as in float64."""
    return i + 1 + j / 4


def _expected_calls(sizes: Sequence[int], n: int) -> list[list]:
    """[size, rows] per call of a right answer, in chunk order: chunks of the largest size, each
    padded with zero rows to the smallest captured size that holds it."""
    ordered = sorted(sizes)
    calls = []
    for start in range(0, n, ordered[-1]):
        rows = list(range(start, min(n, start + ordered[-1])))
        size = next(s for s in ordered if s >= len(rows))
        calls.append([size, rows + [ZERO] * (size - len(rows))])
    return calls


def _rows_text(rows: list) -> str:
    shown = ["0s" if r == ZERO else "?" if r is OTHER else f"x[{r}]" for r in rows]
    return "[" + ", ".join(shown) + "]" if len(shown) <= 12 else "[" + ", ".join(shown[:12]) + ", ...]"


def _calls_text(calls: list) -> str:
    return "; ".join(f"graph {size} <- {_rows_text(rows)}" for size, rows in calls) or "no graph called"


def _padded_runner(sizes: Sequence[int], shape: Sequence[int], hint: str = "", dtype: str = "float32") -> Trial:
    """(captured batch sizes, shape of x as [n, *one input], hint, dtype: float32, float16 or float64)"""
    sizes, shape = [int(s) for s in sizes], [int(d) for d in shape]
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError("sizes must be distinct positive integers")
    if not shape or shape[0] < 1 or min(shape) < 1 or math.prod(shape[1:]) > 8 or shape[0] > 200:
        raise ValueError("shape must be [n, *one input] with 1 <= n <= 200 and at most 8 values an input")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    n, width = shape[0], math.prod(shape[1:])
    call = f"run_padded(graphs for batch sizes {sizes}, x of shape {tuple(shape)}, {dtype})"
    want = [[2 * _value(i, j) + 1 for j in range(width)] for i in range(n)]  # the fake graph: 2 x + 1
    want_calls = _expected_calls(sizes, n)

    def judge(seen: Observation) -> None:
        out = seen.output
        if not (isinstance(out, dict) and out.get("$") == "torch.Tensor"):
            raise Mismatch(call, f"a torch.Tensor of shape {tuple(shape)}", describe(out),
                           "concatenate the graphs' outputs with torch.cat")
        got_shape = out.get("shape")
        if got_shape != shape:
            leak = isinstance(got_shape, list) and got_shape[1:] == shape[1:] and got_shape[:1] > shape[:1]
            raise Mismatch(f"{call}: shape of the result", str(tuple(shape)), str(tuple(got_shape or ())),
                           "the pad rows leaked into the result: of each graph's output keep only as many rows as its chunk had"
                           if leak else hint or "one output row per row of x")
        if out.get("dtype") != f"torch.{dtype}":
            raise Mismatch(f"{call}: dtype of the result", f"torch.{dtype}", str(out.get("dtype")),
                           "pad with zeros of x's own dtype (x.new_zeros), so the graphs see what they were captured for")
        if not same(_flat(out.get("value")), want):
            raise Mismatch(f"{call}: the result, row by row (each row flattened)", _short(want),
                           _short(_flat(out.get("value"))),
                           "row i of the result is the graph's output for row i of x: chunks concatenated in order")
        calls = seen.extra.get("calls")
        got = sorted(calls, key=_first_row) if isinstance(calls, list) else []
        if got != want_calls:
            raise Mismatch(f"{call}: the graphs called (x[i] a row of x, 0s a zero row)", _calls_text(want_calls),
                           _calls_text(got), _calls_hint(got, want_calls))
        if seen.extra.get("overwritten"):
            raise Mismatch(f"{call}: the result after the graphs ran again (the next request)", "unchanged",
                           "changed: it shares memory with a graph's output buffer, which every replay overwrites",
                           "copy each output out of the graph's buffer (.clone()) before the next replay and "
                           "before returning it")

    inputs = {"sizes": sizes, "shape": shape, "dtype": dtype}
    return Trial(call, "padded_runner", inputs, judge, hint)


def _calls_hint(got: list, want: list) -> str:
    """Why the graphs called are not the right ones: the sizes, the padding or the rows."""
    if [c[0] if isinstance(c, list) and c else None for c in got] != [size for size, _ in want]:
        return ("the smallest captured size that holds the batch (the least padding computed and thrown away); "
                "past the largest, chunks of the largest, the last padded to the smallest size that holds it")
    for (_, rows), (_, right) in zip(got, want, strict=True):
        real = sum(r != ZERO for r in right)
        if rows[:real] == right[:real] and rows != right:
            return ("pad with zero rows (x.new_zeros): these pad rows were not zeros, and a model that mixes rows "
                    "(batch statistics, a NaN check) would be thrown off by them")
    return "chunk k holds rows k * largest to (k + 1) * largest of x, in order, then its zero pad rows"


def _first_row(call: Any) -> Any:
    """Sorts the recorded calls into chunk order (calls in another order are as right)."""
    rows = call[1] if isinstance(call, list) and len(call) == 2 and isinstance(call[1], list) else []
    real = [r for r in rows if isinstance(r, int) and r >= 0]
    return min(real) if real else math.inf


def _flat(value: Any) -> Any:
    """Each row of a nested list flattened, so that (n, 2, 3) compares as (n, 6)."""
    def flatten(v: Any) -> list:
        return [y for x in v for y in flatten(x)] if isinstance(v, list) else [v]
    return [flatten(row) for row in value] if isinstance(value, list) else value


def _short(rows: Any) -> str:
    text = repr(rows)
    return text if len(text) <= 300 else text[:300] + " ..."


class _FakeGraphs:
    """Captured graphs, faked: one per size, each taking exactly its own ``(size, *one)`` shape and
    dtype, writing ``2x + 1`` into its own static output, and logging which known rows it was fed."""

    def __init__(self, truth: Any, sizes: list[int]):
        self.truth, self.one = truth, tuple(truth.shape[1:])
        self.calls: list[list] = []
        self.buffers: list = []
        self.graphs = {size: self._graph(size) for size in sizes}

    def rows_of(self, batch: Any) -> list:
        """Each row of ``batch`` named: its index among the known rows, ZERO or OTHER."""
        flat = batch.reshape(len(batch), -1)
        known = self.truth.reshape(len(self.truth), -1)
        named = []
        for row in flat:
            if not bool(row.any()):
                named.append(ZERO)
                continue
            match = (known == row).all(dim=1).nonzero()
            named.append(int(match[0, 0]) if len(match) else OTHER)
        return named

    def _graph(self, size: int) -> Callable[[Any], Any]:
        import torch

        shape, dtype = (size, *self.one), self.truth.dtype
        static_out = torch.zeros(shape, dtype=dtype)
        self.buffers.append(static_out)

        def replay(batch: Any) -> Any:
            if not isinstance(batch, torch.Tensor):
                raise TypeError(f"the graph captured for batch {size} takes a torch.Tensor, got {type(batch).__name__}")
            if tuple(batch.shape) != shape or batch.dtype != dtype:
                raise ValueError(f"the graph captured for batch {size} was called with {tuple(batch.shape)} "
                                 f"{batch.dtype}: a captured graph takes exactly its own shape "
                                 f"{shape} and dtype {dtype}; pad the batch to {size} rows")
            self.calls.append([size, self.rows_of(batch)])
            static_out.copy_(batch * 2 + 1)  # row by row: no row depends on another
            return static_out
        return replay


def _padded_runner_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    """The answer on fake graphs (see the module's docstring). Fresh memory is filled with a
    non-zero byte meanwhile (glibc's M_PERTURB), so that padding with ``torch.empty`` shows as
    what it is, garbage, and not as zeros by luck."""
    import torch  # only this probe needs it

    dtype = getattr(torch, inputs["dtype"])
    n, *one = inputs["shape"]
    width = math.prod(one)
    truth = torch.tensor([[_value(i, j) for j in range(width)] for i in range(n)], dtype=torch.float64)
    fakes = _FakeGraphs(truth.to(dtype).reshape(n, *one), inputs["sizes"])
    perturb = _malloc_perturb()
    try:
        perturb(0x5A)
        result = answer(fakes.graphs, fakes.truth.clone())
    finally:
        perturb(0)
    first = to_plain(result)
    kept = torch.Tensor.clone(result) if type(result) is torch.Tensor else result  # what was returned, as it was
    for buffer in fakes.buffers:  # the next request's replays
        buffer.fill_(STALE)
    return kept, {"calls": fakes.calls, "overwritten": to_plain(result) != first}


def _malloc_perturb() -> Callable[[int], None]:
    """``set(byte)``: glibc fills each new allocation with ``byte ^ 0xff`` (0: off); a no-op elsewhere."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return lambda byte: None

    def set_perturb(byte: int) -> None:
        mallopt(-6, byte)  # -6: M_PERTURB

    return set_perturb


# -- 06.overlap_bound ----------------------------------------------------------------------------

KEYS = ("sequential_s", "best_s", "measured_s", "overlap_s")


def overlap_reference(events: Sequence[Sequence]) -> dict[str, float]:
    """The expected answer: one after another (every busy second added up); the best two serial
    streams can do in batch order (copies back to back, each compute as soon as its copy and the
    compute before it are done); first start to last end; seconds a copy and a compute ran at once."""
    copies = sorted((b, s, e) for stage, b, s, e in events if stage == "copy")
    computes = sorted((b, s, e) for stage, b, s, e in events if stage == "compute")
    copied = computed = 0.0
    for (_, cs, ce), (_, ks, ke) in zip(copies, computes, strict=True):
        copied += ce - cs
        computed = max(computed, copied) + ke - ks
    return {"sequential_s": sum(e - s for _, _, s, e in events), "best_s": computed,
            "measured_s": max(e for *_, e in events) - min(s for _, _, s, _ in events),
            "overlap_s": sum(max(0.0, min(ce, ke) - max(cs, ks)) for _, cs, ce in copies for _, ks, ke in computes)}


def _close(a: Any, b: float) -> bool:
    return type(a) in (int, float) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


HINTS = {
    "sequential_s": "every event's end - start, added up: what the run takes with nothing overlapped",
    "best_s": "copies back to back; each compute starts once its own copy and the compute before it have ended; "
              "best_s is when the last compute ends (max(total copy, total compute) forgets the first copy "
              "and the last compute)",
    "measured_s": "from the first start to the last end (the timeline need not start at 0)",
    "overlap_s": "for every copy and every compute (any batches), the length of their intersection, added up",
}


def _overlap_bound(events: Sequence[Sequence], hint: str = "") -> Trial:
    """(events as [(stage "copy" or "compute", batch, start_s, end_s)], hint)"""
    events = [[str(stage), int(batch), float(start), float(end)] for stage, batch, start, end in events]
    if not events or any(stage not in ("copy", "compute") or end < start for stage, _, start, end in events):
        raise ValueError('events must be ("copy" or "compute", batch, start_s, end_s) with end_s >= start_s')
    copies = sorted(b for stage, b, _, _ in events if stage == "copy")
    if copies != sorted(b for stage, b, _, _ in events if stage == "compute") or len(set(copies)) != len(copies):
        raise ValueError("each batch needs exactly one copy and one compute")
    want = overlap_reference(events)
    call = (f"overlap_bound({len(copies)} batches; copies {_durations(events, 'copy')} ms; computes "
            f"{_durations(events, 'compute')} ms; first start {min(s for _, _, s, _ in events):g} s)")

    def judge(seen: Observation) -> None:
        out = seen.output
        if not (isinstance(out, dict) and "$" not in out and set(out) == set(KEYS)):
            raise Mismatch(call, f"a dict with the keys {', '.join(KEYS)}", describe(out),
                           "return {'sequential_s': ..., 'best_s': ..., 'measured_s': ..., 'overlap_s': ...}")
        for key in KEYS:
            if not _close(out[key], want[key]):
                raise Mismatch(f"{call}: {key}", f"{want[key]:.6g}", describe(out[key]), HINTS[key])

    return Trial(call, "call", {"args": [to_plain(events)]}, judge, hint)


def _durations(events: list[list], stage: str) -> str:
    """A stage's durations in ms, in batch order: what the learner needs to work out best_s."""
    spans = [f"{round((e - s) * 1e3, 6):g}" for st, _, s, e in sorted(events, key=lambda e: e[1]) if st == stage]
    return ", ".join(spans) if len(spans) <= 8 else ", ".join(spans[:8]) + ", ..."


def _timeline(copy: Sequence[float], compute: Sequence[float], starts: Sequence[float] | None = None) -> list[list]:
    """Events of batches whose copies and computes last ``copy[i]`` and ``compute[i]``, computes
    starting at ``starts[i]`` (default: as early as a two-stream run allows); copies back to back."""
    events, copied, computed = [], 0.0, 0.0
    for i, (c, k) in enumerate(zip(copy, compute, strict=True)):
        events.append(["copy", i, copied, copied + c])
        copied += c
        begin = max(computed, copied) if starts is None else starts[i]
        events.append(["compute", i, begin, begin + k])
        computed = begin + k
    return events


def _one_after_another(copy: float, compute: float, batches: int, origin: float = 0.0) -> list[list]:
    events, t = [], origin
    for i in range(batches):
        events += [["copy", i, t, t + copy], ["compute", i, t + copy, t + copy + compute]]
        t += copy + compute
    return events


def _shifted(events: list[list], origin: float, order: Sequence[int] | None = None) -> list[list]:
    moved = [[stage, batch, start + origin, end + origin] for stage, batch, start, end in events]
    return [moved[i] for i in order] if order is not None else moved


QUESTIONS = [
    Question("06.padded_runner", "Any batch on graphs captured at fixed sizes", 4, _padded_runner, (
        ([1, 2, 4, 8], [3, 4], "3 rows run on the graph for 4 (the smallest that holds them), padded with one zero row; "
         "return the first 3 rows"),
        ([1, 2, 4, 8], [8, 4], "a batch of exactly a captured size needs no padding"),
        ([32, 2, 8, 16], [5, 2, 3], "the dict is not sorted; pad rows have x's shape past the first dimension "
         "and x's dtype", "float16"),
        ([2, 4], [11, 3], "past the largest size: chunks of 4, the last padded, outputs concatenated in order"),
        ([4, 8], [9, 2], "the last chunk is padded to the smallest size that holds it, not to the largest"),
    ), minutes=25, answer="run_padded"),
    Question("06.overlap_bound", "What a copy/compute timeline says about overlap", 3, _overlap_bound, (
        (_one_after_another(0.001, 0.002, 3), "nothing overlapped here: measured is the sequential time, "
         "yet two streams could have copied batch 1 while batch 0 computed"),
        (_shifted(_timeline([0.001] * 3, [0.002] * 3), 0.010, [5, 1, 4, 0, 3, 2]),
         "a double-buffered run, recorded from an origin before it, its events in no particular order"),
        (_shifted(_timeline([0.001, 0.005, 0.001, 0.001], [0.001, 0.001, 0.004, 0.001],
                            [0.001, 0.006, 0.008, 0.012]), 0.0, [5, 0, 1, 4, 3, 6, 7, 2]),
         "batches of different sizes, and the compute of batch 2 started late"),
    ), minutes=20),
]
PROBES = {"padded_runner": _padded_runner_probe}
