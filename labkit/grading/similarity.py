"""Instructor-only similarity report: per question, pairs of students whose answers are
near-identical once names, comments, docstrings and formatting are normalised away (a hint to
look closer at possible copying, never a verdict)."""

from __future__ import annotations

import ast
import functools
import io
import itertools
import tokenize
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = ["SimilarPair", "answer_source", "normalise", "similar_pairs", "similarity_report"]

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_DOCUMENTED = (ast.Module, *_DEFS)
# INDENT/DEDENT are kept: they tell a statement inside a loop from one after it
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER}
# the attribute holding the name that each kind of node binds (a Name only when stored to)
_BINDS: dict[type, str] = {
    ast.Name: "id", ast.arg: "arg", ast.alias: "asname", ast.MatchMapping: "rest",
    **dict.fromkeys((*_DEFS, ast.ExceptHandler, ast.MatchAs, ast.MatchStar), "name"),
}


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, _DEFS):
        return node.name == name
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def answer_source(cells: list[str], name: str) -> str | None:
    """The source of the last top-level ``def``/``class``/assignment of ``name`` in the code
    cells, since that is the one executing the notebook would leave behind."""
    found = None
    for cell in cells:
        lines = [line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!"))]
        src = "\n".join(lines)  # IPython magics and shell escapes are not Python
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue  # a broken cell would not have defined anything either
        for node in tree.body:
            if _defines(node, name):
                if isinstance(node, _DEFS):  # whole lines, so that its decorators come along
                    start = min(n.lineno for n in [node, *node.decorator_list])
                    found = "\n".join(lines[start - 1 : node.end_lineno])
                else:
                    found = ast.get_source_segment(src, node)
    return found


@functools.lru_cache(maxsize=4096)  # a class shares many answers: the stub, the obvious one-liner
def _tokens(source: str) -> tuple[str, ...]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return tuple(source.split())
    binders, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, _DOCUMENTED) and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]  # docstrings are prose, not code
        if (attr := _BINDS.get(type(node))) and (name := getattr(node, attr)):
            binders.append(node)
            if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
                bound.add(name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            binders.append(node)
    # numbered in source order, so that an inserted line renumbers only the names after it
    names: dict[str, str] = {}
    for node in sorted(binders, key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Global | ast.Nonlocal):
            node.names = [names.setdefault(n, f"v{len(names)}") if n in bound else n
                          for n in node.names]
        elif (name := getattr(node, _BINDS[type(node)])) in bound:
            setattr(node, _BINDS[type(node)], names.setdefault(name, f"v{len(names)}"))
    tokens = tokenize.generate_tokens(io.StringIO(ast.unparse(tree)).readline)
    return tuple(t.string for t in tokens if t.type not in _SKIP)


def normalise(source: str) -> list[str]:
    """Tokens of ``source`` with docstrings, comments and formatting gone and every name bound in
    it renamed v0, v1, ...; names it uses but does not bind (builtins, modules, attributes) are
    kept, because they carry the algorithm. Unparseable source falls back to its raw words."""
    return list(_tokens(source))


@dataclass(frozen=True)
class SimilarPair:
    question: str
    a: str  # the student id first in sort order
    b: str
    similarity: float  # difflib ratio of the normalised token lists, 0..1, to 3 places
    identical: bool  # the normalised token lists are equal


def _bag(tokens: tuple[str, ...]) -> frozenset[str]:
    """The tokens as a set of "token, occurrence k" strings: two bags' intersection is then the
    multiset intersection quick_ratio() counts, but done by one set operation in C."""
    return frozenset(f"{t}\0{k}" for t, n in Counter(tokens).items() for k in range(n))


def _masks(tokens: tuple[str, ...]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | 1 << i
    return masks


def _lcs(a: tuple[str, ...], b_masks: dict[str, int], n: int) -> int:
    """Longest common subsequence of ``a`` and a length-``n`` sequence given by its masks,
    bit-parallel (Hyyrö): ratio()'s matching blocks form one, so it bounds what ratio() finds,
    much more tightly than token counts do, at a fraction of ratio()'s cost."""
    row = (1 << n) - 1
    for token in a:
        match = row & b_masks.get(token, 0)
        row = (row + match) | (row - match)
    return n - (row & (1 << n) - 1).bit_count()


def _short(matched: int, total: int, threshold: float) -> bool:
    return 2.0 * matched / total < threshold  # as ratio() computes it, so rounding loses no pair


def similar_pairs(answers: Mapping[str, Mapping[str, str | None]], *, threshold: float = 0.9,
                  ignore: Mapping[str, Iterable[str]] | None = None) -> list[SimilarPair]:
    """Every pair of students whose answers to a question are at least ``threshold`` similar
    after normalising; ``ignore[question]`` lists sources (the exercise's stub) that everyone
    who did not answer shares, so matching them is no sign of copying. A None answer (what
    answer_source gives for a missing one) is skipped."""
    pairs = []
    for question in sorted({q for per_student in answers.values() for q in per_student}):
        ignored = {_tokens(s) for s in (ignore or {}).get(question, ())}
        groups: dict[tuple[str, ...], list[str]] = {}  # identical answers are compared once
        for student in sorted(s for s, qs in answers.items() if qs.get(question)):
            tokens = _tokens(answers[student][question])
            if tokens and tokens not in ignored:  # blank and stub answers say nothing of copying
                groups.setdefault(tokens, []).append(student)
        for students in groups.values():
            pairs += [SimilarPair(question, a, b, 1.0, True)
                      for a, b in itertools.combinations(students, 2)]
        keys = list(groups)
        bags, masks = [_bag(k) for k in keys], [_masks(k) for k in keys]
        for j, y in enumerate(keys):
            for i, x in enumerate(keys[:j]):
                # ratio() is 2 * matched / total: drop the pair as soon as an upper bound of
                # matched falls short, cheapest bound first
                total = len(x) + len(y)
                if (_short(min(len(x), len(y)), total, threshold)
                        or _short(len(bags[i] & bags[j]), total, threshold)
                        or _short(_lcs(x, masks[j], len(y)), total, threshold)):
                    continue
                if (ratio := SequenceMatcher(None, x, y, autojunk=False).ratio()) >= threshold:
                    pairs += [SimilarPair(question, *sorted((a, b)), round(ratio, 3), False)
                              for a in groups[x] for b in groups[y]]
    return sorted(pairs, key=lambda p: (p.question, -p.similarity, p.a, p.b))


def similarity_report(pairs: list[SimilarPair], threshold: float, *,
                      questions: Iterable[str] = ()) -> str:
    """Plain text for the instructor, saying how answers were compared so that a high score is
    read as "look at these two", not as proof; ``questions`` adds those with no pairs."""
    lines = ["Similarity report (instructors only)", "",
             "Each question's answers were compared pairwise after normalising: docstrings,",
             "comments and formatting dropped, names bound in the answer renamed to v0, v1, ...",
             f"Pairs at or above {threshold:.0%} similar (difflib ratio of the tokens) are listed.",
             ""]
    compared = sorted({*questions, *(p.question for p in pairs)})
    if not compared:
        lines.append(f"No pairs at or above {threshold:.0%}.")
    for question in compared:
        found = [p for p in pairs if p.question == question]
        lines.append(f"{question}:")
        # percentages round down, so that only an identical pair can read as 100%
        lines += [f"  {p.a} ~ {p.b}: " + ("identical after normalising" if p.identical
                                          else f"{round(p.similarity * 1000) // 10}% similar")
                  for p in found] or [f"  no pairs at or above {threshold:.0%}"]
    return "\n".join(lines)
