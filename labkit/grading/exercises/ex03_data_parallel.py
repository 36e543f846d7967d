"""Exercise 03: a balanced split across devices and a gather in input order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from labkit.grading.plain import describe, same, to_plain
from labkit.grading.trials import Mismatch, Observation, Oracle, Question, Trial, calls


def _gather(parts: Sequence[tuple[int, list]], expected: list, hint: str = "") -> Trial:
    """(parts as [(index, nested list)], expected nested list, hint)"""
    call = f"gather(chunks finished in the order {', '.join(str(i) for i, _ in parts)})"
    want = to_plain(expected)

    def judge(seen: Observation) -> None:
        out = seen.output
        if not (isinstance(out, dict) and out.get("$") == "torch.Tensor" and same(out.get("value"), want)):
            raise Mismatch(call, f"torch.Tensor {want!r}", describe(out), hint)

    return Trial(call, "gather", {"parts": to_plain([[i, v] for i, v in parts])}, judge, hint)



def _gather_probe(answer: Callable, inputs: dict, oracle: Oracle) -> tuple[Any, dict]:
    import torch  # only this probe needs it

    return answer([(index, torch.tensor(values)) for index, values in inputs["parts"]]), {}



QUESTIONS = [
    Question("03.split_sizes", "Balanced contiguous split", 2, calls("split_sizes"), (
        ((10, 3), [4, 3, 3], "sizes differ by at most one, larger first"),
        ((9, 3), [3, 3, 3], "even when it divides"),
        ((2, 4), [1, 1, 0, 0], "more devices than items: some get nothing"),
        ((0, 2), [0, 0], "nothing to split"),
    )),
    Question("03.gather", "Gather in input order", 2, _gather, (
        ([(2, [[5.0]]), (0, [[1.0], [2.0]]), (1, [[3.0], [4.0]])], [[1.0], [2.0], [3.0], [4.0], [5.0]],
         "sort by chunk index before concatenating: completion order is not input order"),
        ([(0, [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])], [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
         "a single chunk comes back unchanged"),
    )),
]
PROBES = {"gather": _gather_probe}
