"""The similarity report: answers that differ only in names, comments, docstrings or layout are
caught as identical, genuinely different code is not, and the cheap bounds never hide a pair."""

from __future__ import annotations

import itertools
import random
import re
from difflib import SequenceMatcher

from labkit.grading.similarity import (
    SimilarPair,
    answer_source,
    normalise,
    similar_pairs,
    similarity_report,
)

SPLIT_DIVMOD = '''
def split_sizes(n, parts):
    """Sizes of `parts` nearly equal chunks of `n` items."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]
'''

# the same answer, copied: names changed, comments and blank lines added, layout and quotes changed
SPLIT_DIVMOD_COPY = """
def split_sizes( total,k ):
    # one chunk each, the remainder spread over the first ones
    q , r = divmod( total , k )

    return [ q+(j<r)
             for j in range(k) ]   # done
"""

SPLIT_LOOP = """
def split_sizes(n, parts):
    sizes = [0] * parts
    for i in range(n):
        sizes[i % parts] += 1
    return sizes
"""


def test_renamed_commented_and_reformatted_copy_is_identical():
    assert normalise(SPLIT_DIVMOD) == normalise(SPLIT_DIVMOD_COPY)
    pairs = similar_pairs({"bob": {"q1": SPLIT_DIVMOD_COPY}, "alice": {"q1": SPLIT_DIVMOD}})
    assert pairs == [SimilarPair("q1", "alice", "bob", 1.0, True)]


def test_bound_names_become_numbered_in_order_of_appearance():
    tokens = normalise("def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n")
    assert tokens[:6] == ["def", "v0", "(", "v1", ")", ":"]
    assert {"f", "xs", "total", "x"}.isdisjoint(tokens)
    assert "v3" in tokens and "v4" not in tokens


def test_an_inserted_line_renumbers_only_the_names_after_it():
    # numbering in source order, not in the order of the tree, keeps near copies near
    before = normalise("def f(a):\n    b = [c for c in a]\n    return b\n")
    after = normalise("def f(a):\n    b = [c for c in a]\n    d = 0\n    return b\n")
    cut = after.index("v4")
    assert after[cut : cut + 3] == ["v4", "=", "0"]
    assert after[:cut] + after[cut + 3 :] == before


def test_every_kind_of_binding_is_renamed():
    source = """
import numpy as np
def f(path, *args, key=None, **kw):
    try:
        with open(path) as fh:
            rows = [line for line in fh]
    except OSError as err:
        raise ValueError(err) from err
    if (count := len(rows)) > 1:
        return np.mean(rows, axis=0), count
    class Box:
        pass
    return lambda item: item
"""
    renamed = {"np", "f", "path", "args", "key", "kw", "fh", "rows", "line", "err", "count",
               "Box", "item"}
    tokens = normalise(source)
    assert renamed.isdisjoint(tokens)
    assert "count" not in normalise("def bump():\n    global count\n    count += 1\n")
    # free names, attributes and keyword-argument names carry the algorithm, so they stay
    assert {"numpy", "open", "OSError", "ValueError", "len", "mean", "axis"} <= set(tokens)


def test_a_different_algorithm_for_the_same_task_is_not_reported():
    assert normalise(SPLIT_DIVMOD) != normalise(SPLIT_LOOP)
    answers = {"alice": {"q1": SPLIT_DIVMOD}, "bob": {"q1": SPLIT_LOOP}}
    assert similar_pairs(answers) == []
    ratio = SequenceMatcher(None, normalise(SPLIT_DIVMOD), normalise(SPLIT_LOOP), autojunk=False).ratio()
    assert ratio < 0.9
    assert similar_pairs(answers, threshold=ratio - 0.01)[0].similarity == round(ratio, 3)


def test_docstrings_are_ignored():
    plain = "def f(x):\n    return x + 1\n"
    documented = 'def f(x):\n    """Add one, because the spec says so."""\n    return x + 1\n'
    only_docstring = 'class A:\n    """Nothing here yet."""\n'
    assert normalise(plain) == normalise(documented)
    assert normalise(only_docstring) == normalise("class A:\n    pass\n")


def test_builtins_attributes_and_globals_are_kept():
    assert normalise("def f(x):\n    return sorted(x)\n") != normalise("def f(x):\n    return reversed(x)\n")
    assert normalise("def f(t):\n    return t.mean()\n") != normalise("def f(t):\n    return t.sum()\n")
    assert normalise("def f(t):\n    return torch.relu(t)\n") != normalise("def f(t):\n    return jax.relu(t)\n")
    assert normalise("f(x, dim=0)") != normalise("f(x, axis=0)")
    # a name the answer does not bind is kept even when another answer binds it
    assert normalise("y = x + 1") != normalise("x = 1\ny = x + 1")


def test_indentation_is_structure():
    inside = "for i in range(3):\n    a()\n    b()\n"
    after = "for i in range(3):\n    a()\nb()\n"
    assert normalise(inside) != normalise(after)


def test_unparseable_source_falls_back_to_whitespace_tokens():
    assert normalise("def f(:\n  return  1") == ["def", "f(:", "return", "1"]


def test_answer_source_last_definition_wins():
    cells = [
        "import math\n\ndef area(r):\n    return 3 * r * r\n",
        "print(area(2))",
        "def area(r):\n    # better\n    return math.pi * r ** 2\n",
        "x = area(1)",
    ]
    assert answer_source(cells, "area") == "def area(r):\n    # better\n    return math.pi * r ** 2"
    assert answer_source(cells, "volume") is None


def test_answer_source_finds_assignments_classes_and_decorated_functions():
    cells = [
        "LR: float = 0.1\nBATCH = 32; STEPS = 10\n",
        "@torch.no_grad()\n@other\ndef evaluate(model):\n    return model.eval()\n",
        "class Net:\n    pass\n",
        "async def fetch():\n    pass\n",
    ]
    assert answer_source(cells, "LR") == "LR: float = 0.1"
    assert answer_source(cells, "STEPS") == "STEPS = 10"
    assert answer_source(cells, "evaluate").startswith("@torch.no_grad()\n@other\ndef evaluate(model):")
    assert answer_source(cells, "Net") == "class Net:\n    pass"
    assert answer_source(cells, "fetch") == "async def fetch():\n    pass"
    # only top-level definitions count: a nested one is not the answer
    assert answer_source(["def outer():\n    def inner():\n        pass\n"], "inner") is None


def test_answer_source_drops_magics_and_skips_broken_cells():
    cells = [
        "%load_ext autoreload\n  !pip install torch\ndef f():\n    return 1\n",
        "def f(:\n    return 2\n",  # does not parse: as if it were never run
    ]
    assert answer_source(cells, "f") == "def f():\n    return 1"
    assert answer_source(["%%time\nf = 3\n"], "f") == "f = 3"


STUB = 'def split_sizes(n, parts):\n    """Sizes of nearly equal chunks."""\n    raise NotImplementedError\n'


def test_ignore_drops_stub_answers():
    # the stub, reformatted and without its docstring, is still the stub
    unanswered = "def split_sizes(n,parts):\n    raise NotImplementedError"
    answers = {"amy": {"q1": STUB}, "ben": {"q1": unanswered}, "cat": {"q1": SPLIT_DIVMOD}}
    assert [(p.a, p.b) for p in similar_pairs(answers)] == [("amy", "ben")]
    assert similar_pairs(answers, ignore={"q1": [STUB]}) == []
    assert similar_pairs(answers, ignore={"q2": [STUB]}) != []  # another question's stub


def test_missing_blank_and_none_answers_are_skipped():
    answers = {"amy": {"q1": ""}, "ben": {"q1": "  \n"}, "cat": {"q1": None}, "dan": {}}
    assert similar_pairs(answers) == []


def test_pairs_are_sorted_and_students_ordered():
    near = SPLIT_DIVMOD.replace("i < extra", "i <= extra")
    answers = {
        "zoe": {"q2": SPLIT_DIVMOD, "q1": SPLIT_LOOP},
        "yan": {"q2": SPLIT_DIVMOD_COPY, "q1": SPLIT_LOOP},
        "xia": {"q2": near},
        "abe": {"q2": near, "q1": SPLIT_DIVMOD},
    }
    pairs = similar_pairs(answers)
    assert [(p.question, p.a, p.b, p.identical) for p in pairs] == [
        ("q1", "yan", "zoe", True),
        ("q2", "abe", "xia", True),
        ("q2", "yan", "zoe", True),
        ("q2", "abe", "yan", False),
        ("q2", "abe", "zoe", False),
        ("q2", "xia", "yan", False),
        ("q2", "xia", "zoe", False),
    ]
    assert 0.9 <= pairs[-1].similarity < 1


def test_cheap_bounds_never_hide_a_pair():
    rng = random.Random(1)
    base = [rng.choice("abcde") for _ in range(40)]
    sources = {}
    for s in range(30):  # variations of one sequence, so that many pairs sit near the threshold
        tokens = list(base)
        for _ in range(rng.randint(0, 12)):
            tokens[rng.randrange(len(tokens))] = rng.choice("abcdef")
        sources[f"s{s:02d}"] = "? " + " ".join(tokens[: rng.randint(30, 40)])  # "?": not Python
    for threshold in (0.6, 0.8, 0.9):
        expected = set()
        for (a, x), (b, y) in itertools.combinations(sorted(sources.items()), 2):
            ratio = SequenceMatcher(None, normalise(x), normalise(y), autojunk=False).ratio()
            if ratio >= threshold:
                expected.add((a, b, round(ratio, 3)))
        found = similar_pairs({s: {"q": src} for s, src in sources.items()}, threshold=threshold)
        assert {(p.a, p.b, p.similarity) for p in found} == expected
        assert len(expected) > 5


def _class_answers(
    students: int, questions: int, copies: int
) -> tuple[dict[str, dict[str, str]], set[tuple[str, str, str]]]:
    """Independent answers built from one template per question, plus planted copies."""
    rng = random.Random(0)
    answers: dict[str, dict[str, str]] = {f"s{s:03d}": {} for s in range(students)}
    planted = set()
    for q in range(questions):
        length = rng.randint(8, 38)
        for student in answers.values():
            names, lines = ["data", "size"], [f"def answer_{q}(data, size):", '    """Doc."""']
            for i in range(length + rng.randint(-3, 3)):
                a, b = rng.sample(names, 2)
                fn, op = rng.choice(["len", "sum", "max", "sorted"]), rng.choice("+-*%")
                lines.append(f"    t{i} = {fn}([{a}]) {op} {b} {op} {rng.randint(1, 9)}")
                names.append(f"t{i}")
            student[f"q{q}"] = "\n".join([*lines, f"    return {names[-1]}"])
        for _ in range(copies):  # renamed, and one constant changed
            a, b = rng.sample(sorted(answers), 2)
            copy = answers[a][f"q{q}"].replace("data", "xs").replace("size", "n")
            answers[b][f"q{q}"] = re.sub(r"\d$", "0", copy, count=1, flags=re.M)
            planted.add((f"q{q}", *sorted((a, b))))
    return answers, planted


def test_a_class_of_100_with_10_questions_runs():
    answers, planted = _class_answers(100, 10, copies=3)
    pairs = similar_pairs(answers)
    assert planted <= {(p.question, p.a, p.b) for p in pairs}


def test_report_says_how_and_lists_pairs_per_question():
    pairs = [
        SimilarPair("q1", "alice", "bob", 1.0, True),
        SimilarPair("q1", "dan", "eve", 0.998, False),
        SimilarPair("q1", "alice", "carol", 0.94, False),
    ]
    report = similarity_report(pairs, 0.9, questions=["q1", "q2"])
    assert report.splitlines()[0] == "Similarity report (instructors only)"
    assert "normalising" in report and "90%" in report
    q1, q2 = report.index("q1:"), report.index("q2:")
    assert q1 < report.index("alice ~ bob: identical after normalising") < report.index(
        "alice ~ carol: 94% similar") < q2
    assert "dan ~ eve: 99% similar" in report  # not 100%: that would read as identical
    assert report[q2:].splitlines()[1].strip() == "no pairs at or above 90%"
    assert "No pairs at or above 85%." in similarity_report([], 0.85)
