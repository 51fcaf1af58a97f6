"""Zero, one or many targets (issue 19): the decision arithmetic with hand-computed values,
the parse's number cues, the record shape, and the mechanics on the tiny random segmenter
(whose choices mean nothing; the contracts are real)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hybridgl.schemas import validate
from hybridgl.targets import (
    TargetRules,
    ThresholdsError,
    check_mode,
    dedupe,
    eligible_targets,
    load_thresholds,
    no_target_check,
    overlap_counts,
    wants_many,
)
from hybridgl.types import Parse, Prediction, Target, TargetEvidence

# --------------------------------------------------------------------------- pure rules


def test_no_target_check_every_branch() -> None:
    contrast = {"background": 0.20, "a photo": 0.24}
    # floor: 0.14 < 0.15
    assert no_target_check(0.14, contrast, 0.15, 0.0) == (False, "below_floor")
    assert no_target_check(math.nan, contrast, 0.15, 0.0) == (False, "below_floor")
    # contrast: 0.25 - 0.24 = 0.01 < 0.02
    assert no_target_check(0.25, contrast, 0.15, 0.02) == (False, "contrast")
    # 0.25 - 0.24 = 0.01 >= 0.0
    assert no_target_check(0.25, contrast, 0.15, 0.0) == (True, "passed")
    # equality passes: 0.24 - 0.24 = 0 >= 0
    assert no_target_check(0.24, contrast, 0.15, 0.0) == (True, "passed")
    # no contrast prompt: the floor alone
    assert no_target_check(0.16, {}, 0.15, 5.0) == (True, "passed")
    # a non-finite contrast cosine is ignored
    assert no_target_check(0.3, {"x": math.nan}, 0.15, 0.1) == (True, "passed")


def test_eligible_targets_margins_and_order() -> None:
    cands = [4, 7, 1, 9]
    scores = [0.50, 0.40, 0.30, 0.45]  # best (4) has 0.50
    cosines = [0.30, 0.29, 0.31, 0.20]
    # margin 0.15: scores >= 0.35 -> 7 (0.40), 9 (0.45); cosine margin 0.02: >= 0.28 -> 7, 1
    assert eligible_targets(4, cands, scores, cosines, 0.15, 0.02) == [4, 7]
    # no score margin: only the cosine one -> 7 (0.40) before 1 (0.30)
    assert eligible_targets(4, cands, scores, cosines, None, 0.02) == [4, 7, 1]
    # wide margins: everything, by decreasing score
    assert eligible_targets(4, cands, scores, cosines, 1.0, 1.0) == [4, 9, 7, 1]
    # the best comes first even when another candidate scores more
    assert eligible_targets(7, cands, scores, cosines, 1.0, 1.0) == [7, 4, 9, 1]
    with pytest.raises(ValueError, match="not among"):
        eligible_targets(3, cands, scores, cosines, 1.0, 1.0)
    with pytest.raises(ValueError, match="length"):
        eligible_targets(4, cands, scores[:2], cosines, 1.0, 1.0)


def test_overlap_counts_and_dedupe() -> None:
    m = np.zeros((5, 4, 10), bool)
    m[0, :, 0:4] = True  # area 16
    m[1, :, 0:3] = True  # area 12, inside 0: inter 12, IoU 12/16 = 0.75
    m[2, :, 3:7] = True  # area 16, inter with 0: 4, IoU 4/28
    m[3, :, 7:10] = True  # area 12, disjoint from 0 and 2
    # 4 is empty
    inter, areas = overlap_counts(m)
    assert areas.tolist() == [16, 12, 16, 12, 0]
    assert inter[0, 1] == 12 and inter[0, 2] == 4 and inter[2, 3] == 0
    # IoU 0.5: 1 is a duplicate of 0 (0.75 > 0.5); 2 (IoU 0.14, contained 4/16) kept; 4 empty
    assert dedupe(inter, areas, 0.5, 1.0, 10) == [0, 2, 3]
    # IoU threshold 0.8 keeps 1 by IoU, but containment 0.8 drops it (12/12 = 1 > 0.8)
    assert dedupe(inter, areas, 0.8, 0.8, 10) == [0, 2, 3]
    # with neither test, 1 stays
    assert dedupe(inter, areas, 1.0, 1.0, 10) == [0, 1, 2, 3]
    # containment 0.2: 1 (12/12 inside 0) and 2 (4/16 = 0.25 inside 0) are dropped
    assert dedupe(inter, areas, 1.0, 0.2, 10) == [0, 3]
    # containment 0.3: 2 (0.25) stays
    assert dedupe(inter, areas, 1.0, 0.3, 10) == [0, 2, 3]
    assert dedupe(inter, areas, 0.5, 1.0, 2) == [0, 2]  # the limit
    assert dedupe(np.zeros((0, 0)), np.zeros(0), 0.5, 0.8, 3) == []


def test_rules_validation_and_files(tmp_path) -> None:
    assert check_mode("many") == "many"
    with pytest.raises(ValueError, match="targets must be one of"):
        check_mode("some")
    assert wants_many(("plural_noun:dogs",)) and not wants_many(())
    with pytest.raises(ThresholdsError, match="floor"):
        TargetRules(floor=math.inf)
    with pytest.raises(ThresholdsError, match="pool"):
        TargetRules(pool=0)
    with pytest.raises(ThresholdsError, match="dedup_iou"):
        TargetRules(dedup_iou=1.5)
    rules = TargetRules(floor=0.2, contrast_prompts=("nothing",))
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"rules": rules.to_dict(), "fit": {"n": 3}}))
    assert TargetRules.load(path) == rules == load_thresholds(str(path))
    assert load_thresholds(None) == TargetRules()
    assert load_thresholds({"margin": 0.5}).margin == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ThresholdsError, match="bad.json"):
        TargetRules.load(bad)
    bad.write_text(json.dumps({"flor": 0.1}))
    with pytest.raises(ThresholdsError, match="unknown keys"):
        TargetRules.load(bad)
    bad.write_text(json.dumps({"floor": "x"}))
    with pytest.raises(ThresholdsError, match="bad.json: floor"):
        TargetRules.load(bad)
    big = tmp_path / "big.json"
    big.write_text(" " * 70_000 + "{}")
    with pytest.raises(ThresholdsError, match="more than"):
        TargetRules.load(big)
    with pytest.raises(ThresholdsError, match="cannot read"):
        TargetRules.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- parse cues


@pytest.mark.parametrize(
    ("text", "cues"),
    [
        ("the dogs on the left", ("plural_noun:dogs",)),
        ("both cups", ("plural_noun:cups", "quantifier:both")),
        ("two men", ("plural_noun:men", "numeral:two")),
        ("every chair", ("quantifier:every",)),
        ("the red car", ()),
        ("man in jeans", ()),  # jeans: not the head
        ("the man with both hands up", ()),  # both: modifies hands, not the head
        ("jeans", ()),  # plural-only noun
        ("the second man from the left", ()),  # an ordinal is not a number of objects
        ("3 zebras", ("plural_noun:zebras", "numeral:3")),
    ],
)
def test_number_cues(text: str, cues: tuple[str, ...]) -> None:
    from hybridgl.text import TextParser

    assert TextParser().parse(text).number_cues == cues


# --------------------------------------------------------------------------- record shape


def _parse() -> Parse:
    return Parse("the cups", "the cups", "the cups", number_cues=("plural_noun:cups",))


def test_record_with_targets_validates() -> None:
    a = np.zeros((6, 8), bool)
    a[0:2, 0:2] = True
    b = np.zeros((6, 8), bool)
    b[4:6, 5:8] = True
    t = [
        Target(index=3, mask=a, box=(0.0, 0.0, 1.0, 1.0), score=0.9, clip_score=30.0),
        Target(index=1, mask=b, box=(5.0, 4.0, 2.0, 1.0), score=0.7, clip_score=29.0),
    ]
    ev = TargetEvidence(
        mode="many", rule="passed", several=True, best_index=3, cosine=0.3,
        contrast={"background": 0.2}, floor=0.15, contrast_margin=0.0, margin=0.25,
        cosine_margin=0.03, considered=5, duplicates=1,
    )  # fmt: skip
    pred = Prediction(
        mask=a | b, box=(0.0, 0.0, 7.0, 5.0), score=0.9, found=True, candidates=[],
        pure_index=3, index=3, parse=_parse(), num_proposals=5, targets=t, evidence=ev,
    )  # fmt: skip
    d = pred.to_dict()
    validate(d)
    assert [x["index"] for x in d["targets"]] == [3, 1]
    assert [x["area"] for x in d["targets"]] == [4, 6] and d["area"] == 10
    assert d["evidence"]["rule"] == "passed" and d["evidence"]["duplicates"] == 1
    assert d["parse"]["number_cues"] == ["plural_noun:cups"]
    json.dumps(d, allow_nan=False)
    coco = pred.to_coco_results(7)
    assert len(coco) == 2 and [c["score"] for c in coco] == [0.9, 0.7]
    assert coco[1]["bbox"] == [5.0, 4.0, 3.0, 2.0]  # COCO's own convention
    none = Prediction(
        mask=np.zeros((6, 8), bool), box=(0.0, 0.0, 0.0, 0.0), score=0.9, found=False,
        candidates=[], pure_index=3, index=None, parse=_parse(),
        evidence=TargetEvidence(mode="auto", rule="contrast", several=True),
    )  # fmt: skip
    validate(none.to_dict())
    assert none.to_coco_results(7) == []


# --------------------------------------------------------------------------- mechanics


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _columns(h: int = 48, w: int = 64, n: int = 4) -> np.ndarray:
    """``n`` disjoint column proposals, then a duplicate of the first and a part of the second."""
    props = np.zeros((n + 2, h, w), bool)
    step = w // n
    for i in range(n):
        props[i, :, i * step : (i + 1) * step] = True
    props[n] = props[0]
    props[n + 1, : h // 2] = props[1, : h // 2]
    return props


OPEN = TargetRules(floor=-1.0, contrast_margin=-2.0, margin=10.0, cosine_margin=2.0, pool=10)


@pytest.fixture(scope="module")
def state(tiny_segmenter):
    return tiny_segmenter.encode_image(_image(), proposals=_columns())


def test_one_is_the_default(tiny_segmenter, state) -> None:
    seg = tiny_segmenter
    for guidance in (True, False):
        a = seg.predict("the cups", state=state, guidance=guidance)
        b = seg.predict("the cups", state=state, guidance=guidance, targets="one", thresholds=OPEN)
        da, db = a.to_dict(), b.to_dict()
        validate(da)
        da.pop("timings"), db.pop("timings")
        assert da == db
        assert [t.index for t in a.targets] == [a.index]
        assert a.targets[0].mask is a.mask and a.evidence.rule == "best"


@pytest.mark.parametrize("guidance", [True, False])
def test_many_takes_every_distinct_proposal(tiny_segmenter, state, guidance) -> None:
    seg = tiny_segmenter
    one = seg.predict("the cups", state=state, guidance=guidance)
    many = seg.predict("the cups", state=state, guidance=guidance, targets="many", thresholds=OPEN)
    assert many.found and many.evidence.rule == "passed" and many.evidence.several
    assert many.index == one.index and many.targets[0].index == one.index
    kept = {t.index for t in many.targets}
    # of 0 and its duplicate 4 one stays; 5 is a part of 1 (containment 1.0 > 0.8) unless
    # it ranked before 1, in which case 1 (IoU 0.5, half of it outside) stays as well
    assert len(kept & {0, 4}) == 1 and {2, 3} <= kept
    assert kept & {1, 5}
    assert many.evidence.considered == 6 and many.evidence.duplicates == 6 - len(kept)
    union = np.logical_or.reduce([state.input_mask(i) for i in kept])
    np.testing.assert_array_equal(many.mask, union)
    d = many.to_dict()
    validate(d)
    assert d["area"] == int(union.sum())
    assert many.evidence.margin == (10.0 if guidance else None)  # no guidance: cosine only
    # with a single target allowed, many is the one answer
    single = seg.predict(
        "the cups", state=state, guidance=guidance, targets="many",
        thresholds=TargetRules(floor=-1.0, contrast_margin=-2.0, max_targets=1),
    )  # fmt: skip
    assert [t.index for t in single.targets] == [one.index]
    np.testing.assert_array_equal(single.mask, one.mask)


def test_no_target_rules(tiny_segmenter, state) -> None:
    seg = tiny_segmenter
    floor = seg.predict("a cup", state=state, targets="many", thresholds=TargetRules(floor=1.5))
    assert not floor.found and floor.evidence.rule == "below_floor" and floor.targets == []
    assert not floor.mask.any() and floor.index is None and floor.box == (0.0, 0.0, 0.0, 0.0)
    ev = floor.evidence
    assert ev.best_index is not None and set(ev.contrast) == set(TargetRules().contrast_prompts)
    # the cosine recorded is the best proposal's CLIP score over the logit scale
    clip = seg.predict("a cup", state=state).candidates
    best = next(c for c in clip if c.index == ev.best_index)
    assert ev.cosine == pytest.approx(best.clip_score / seg.logit_scale, rel=1e-5)
    contrast = seg.predict(
        "a cup", state=state, targets="auto",
        thresholds=TargetRules(floor=-1.0, contrast_margin=2.5),  # cosines differ by < 2
    )  # fmt: skip
    assert not contrast.found and contrast.evidence.rule == "contrast"
    validate(contrast.to_dict())


def test_auto_follows_the_parse(tiny_segmenter, state) -> None:
    seg = tiny_segmenter
    single = seg.predict("the red cup", state=state, targets="auto", thresholds=OPEN)
    assert single.found and single.evidence.several is False and len(single.targets) == 1
    plural = seg.predict("both cups", state=state, targets="auto", thresholds=OPEN)
    assert plural.evidence.several is True and len(plural.targets) >= 3
    assert plural.evidence.number_cues == ("plural_noun:cups", "quantifier:both")
    [p1, p2] = seg.predict_many(
        ["the red cup", "both cups"], state=state, targets="auto", thresholds=OPEN
    )
    assert [t.index for t in p1.targets] == [t.index for t in single.targets]
    assert [t.index for t in p2.targets] == [t.index for t in plural.targets]
    sc = seg.score(state, seg.parse("both cups"), targets="auto", thresholds=OPEN)
    assert [t.index for t in sc.targets] == [t.index for t in plural.targets]


def test_no_proposal_and_bad_options(tiny_segmenter) -> None:
    seg = tiny_segmenter
    empty = seg.encode_image(_image(), proposals=np.zeros((2, 48, 64), bool))
    p = seg.predict("the cups", state=empty, targets="many")
    assert not p.found and p.evidence.rule == "no_proposal" and p.evidence.mode == "many"
    validate(p.to_dict())
    with pytest.raises(ValueError, match="targets must be one of"):
        seg.predict("the cups", state=empty, targets="all")
    with pytest.raises(ThresholdsError):
        seg.predict("the cups", state=empty, targets="many", thresholds={"floor": "low"})


@pytest.mark.slow
def test_segment_cli_writes_every_target(tmp_path, shared_tiny_segmenters, monkeypatch) -> None:
    import contextlib
    import io

    from PIL import Image

    from hybridgl.cli.main import main
    from hybridgl.masks import rle_to_mask

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    Image.fromarray(_image()).save(tmp_path / "im.png")
    np.save(tmp_path / "p.npy", _columns())
    (tmp_path / "open.json").write_text(json.dumps({"rules": OPEN.to_dict()}))
    (tmp_path / "shut.json").write_text(json.dumps({"floor": 1.5}))

    def run(*extra: str) -> tuple[int, dict, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(
                ["segment", str(tmp_path / "im.png"), "both cups", "--proposals",
                 str(tmp_path / "p.npy"), "--device", "cpu", "--json",
                 str(tmp_path / "r.json"), *extra]
            )  # fmt: skip
        return rc, json.loads((tmp_path / "r.json").read_text()), out.getvalue()

    rc, doc, text = run("--targets", "auto", "--thresholds", str(tmp_path / "open.json"),
                        "--mask", str(tmp_path / "m.png"))  # fmt: skip
    assert rc == 0
    [rec] = doc["results"]
    assert len(rec["targets"]) >= 3 and f"targets={len(rec['targets'])}" in text
    union = np.zeros((48, 64), bool)
    for t, png in zip(rec["targets"], rec["target_mask_pngs"], strict=True):
        with Image.open(png) as im:
            m = np.asarray(im) > 0
        np.testing.assert_array_equal(m, rle_to_mask(t["mask"]))
        union |= m
    with Image.open(rec["mask_png"]) as im:
        np.testing.assert_array_equal(np.asarray(im) > 0, union)
    rc, doc, text = run("--targets", "many", "--thresholds", str(tmp_path / "shut.json"))
    assert rc == 0 and not doc["results"][0]["found"]
    assert "not found in this image (below_floor" in text
    assert run("--targets", "some")[0] == 2
    (tmp_path / "bad.json").write_text("{")
    assert run("--targets", "many", "--thresholds", str(tmp_path / "bad.json"))[0] == 3
