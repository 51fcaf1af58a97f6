"""The relation and direction vocabularies and their shared keyword scan (no spaCy needed).

The scan is checked against a verbatim copy of the reference's two if/elif chains on
random token sequences, so sharing one function changes no parse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hybridgl import guidance, text
from hybridgl.types import DIRECTIONS, RELATIONS


@dataclass
class _Head:
    i: int


@dataclass
class _Tok:
    text: str
    head: _Head


def _reference_relation(doc: list[_Tok], fix_right: bool) -> str:
    # the chain as it was before the shared scan (text.py before issue 10)
    relation, best = "none", 999
    for tok in doc:
        t, head = tok.text, tok.head.i
        if t in text.LEFT_KEYWORDS and head < best:
            relation, best = "left", head
        elif (t in text.RIGHT_KEYWORDS if fix_right else t == text.RIGHT_KEYWORDS) and head < best:  # type: ignore[comparison-overlap]
            relation, best = "right", head
        elif t in text.UP_KEYWORDS and head < best:
            relation, best = "up", head
        elif t in text.DOWN_KEYWORDS and head < best:
            relation, best = "down", head
        elif t in text.BIG_KEYWORDS and head < best:
            relation, best = "big", head
        elif t in text.SMALL_KEYWORDS and head < best:
            relation, best = "small", head
        elif t in text.WITHIN_KEYWORDS and head < best:
            relation, best = "within", head
    return relation


def _reference_direction(doc: list[_Tok]) -> str:
    direction, best = "none", 999
    for tok in doc:
        t, head = tok.text, tok.head.i
        if t in text.DIRECTION_LEFT_KEYWORDS and head < best:
            direction, best = "left", head
        elif t in text.DIRECTION_RIGHT_KEYWORDS and head < best:
            direction, best = "right", head
        elif t in text.DIRECTION_MIDDLE_KEYWORDS and head < best:
            direction, best = "middle", head
        elif t in text.DIRECTION_UP_KEYWORDS and head < best:
            direction, best = "up", head
        elif t in text.DIRECTION_DOWN_KEYWORDS and head < best:
            direction, best = "down", head
    return direction


def test_tables_name_exactly_the_vocabularies() -> None:
    assert tuple(name for name, _ in text.RELATION_TABLE) == RELATIONS[1:]
    assert tuple(name for name, _ in text.DIRECTION_TABLE) == DIRECTIONS[1:]
    # one definition: guidance uses the very same tuples
    assert guidance.RELATIONS is RELATIONS and guidance.DIRECTIONS is DIRECTIONS


def test_shared_scan_equals_the_reference_chains() -> None:
    words = sorted(
        set().union(*(w for _, w in text.RELATION_TABLE), *(w for _, w in text.DIRECTION_TABLE))
    ) + ["the", "dog", "of", "picture"]
    rng = random.Random(0)
    fired = set()
    for _ in range(5000):
        n = rng.randint(0, 8)
        doc = [_Tok(rng.choice(words), _Head(rng.randint(0, 9))) for _ in range(n)]
        for fix in (False, True):
            got = text._relation(doc, [], fix)  # type: ignore[arg-type]
            assert got == _reference_relation(doc, fix)
            fired.add(got)
        got = text._direction(doc)  # type: ignore[arg-type]
        assert got == _reference_direction(doc)
        fired.add(got)
    assert fired >= set(RELATIONS) | set(DIRECTIONS)  # every outcome was exercised


def test_right_never_fires_without_the_fix() -> None:
    doc = [_Tok("right", _Head(0))]
    assert text._relation(doc, [], False) == "none"  # type: ignore[arg-type]
    assert text._relation(doc, [], True) == "right"  # type: ignore[arg-type]
    assert text._direction(doc) == "right"  # type: ignore[arg-type]
