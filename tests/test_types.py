"""Result types: Prediction.to_dict (the one JSON record), COCO results, supervision."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hybridgl.masks import mask_to_box, polygons_to_mask, rle_to_mask
from hybridgl.schemas import load_schema, validate
from hybridgl.types import DIRECTIONS, RELATIONS, Candidate, Parse, Prediction


def _mask() -> np.ndarray:
    m = np.zeros((12, 20), dtype=bool)
    m[2:6, 3:9] = True  # 4 x 6 rectangle: box (3, 2, 5, 3), area 24
    m[8:10, 14:17] = True  # 2 x 3: area 6
    return m


def _prediction(mask: np.ndarray | None = None, found: bool = True, **kw: object) -> Prediction:
    mask = _mask() if mask is None else mask
    parse = Parse(
        expression="The red cup",
        sentence="the red cup",
        noun_phrase="the red cup",
        context_nouns=("the table",),
        context_roots=("table",),
        relation="left",
        direction="left",
    )
    cands = [
        Candidate(index=2, clip_score=3.5, probability=0.7, relation_score=0.6,
                  coherence_score=0.5, final_score=0.9),
        Candidate(index=0, clip_score=1.25, probability=0.2),
    ]  # fmt: skip
    fields: dict = {
        "mask": mask,
        "box": mask_to_box(mask),
        "score": 0.9,
        "found": found,
        "candidates": cands if found else [],
        "pure_index": 2 if found else None,
        "index": 2 if found else None,
        "parse": parse,
        "num_proposals": 5 if found else 0,
        "timings": {"text": 0.25, "predict": 0.5},
    }
    fields.update(kw)
    return Prediction(**fields)


def test_to_dict_values() -> None:
    d = _prediction().to_dict()
    validate(d)
    assert d["expression"] == "The red cup"
    assert d["found"] is True and d["score"] == 0.9
    assert d["box"] == [3.0, 2.0, 13.0, 7.0]  # min col 3, min row 2, max col 16, max row 9
    assert (d["area"], d["height"], d["width"]) == (30, 12, 20)
    assert d["mask"]["size"] == [12, 20] and isinstance(d["mask"]["counts"], str)
    np.testing.assert_array_equal(rle_to_mask(d["mask"]), _mask())
    assert (d["index"], d["pure_index"], d["num_proposals"]) == (2, 2, 5)
    assert d["candidates"] == [
        {"index": 2, "clip_score": 3.5, "probability": 0.7, "relation_score": 0.6,
         "coherence_score": 0.5, "final_score": 0.9},
        {"index": 0, "clip_score": 1.25, "probability": 0.2, "relation_score": None,
         "coherence_score": None, "final_score": None},
    ]  # fmt: skip
    assert d["parse"] == {
        "expression": "The red cup",
        "sentence": "the red cup",
        "noun_phrase": "the red cup",
        "context_nouns": ["the table"],
        "context_roots": ["table"],
        "relation": "left",
        "direction": "left",
        "number_cues": [],
    }
    assert d["timings"] == {"text": 0.25, "predict": 0.5}
    assert "polygons" not in d
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_to_dict_options() -> None:
    pred = _prediction()
    d = pred.to_dict(polygons=True, candidates=False)
    validate(d)
    assert "candidates" not in d
    assert len(d["polygons"]) == 2
    # the larger component first, then the smaller; rasterised back exactly
    assert d["polygons"][0] == [3.0, 2.0, 3.0, 6.0, 9.0, 6.0, 9.0, 2.0]
    np.testing.assert_array_equal(polygons_to_mask(d["polygons"], 12, 20), _mask())


def test_to_dict_not_found() -> None:
    empty = np.zeros((4, 5), dtype=bool)
    d = _prediction(empty, found=False, score=0.0).to_dict(polygons=True)
    validate(d)
    assert d["found"] is False and d["box"] == [0.0, 0.0, 0.0, 0.0] and d["area"] == 0
    assert d["index"] is None and d["pure_index"] is None and d["candidates"] == []
    assert d["polygons"] == []
    assert not rle_to_mask(d["mask"]).any() and d["mask"]["size"] == [4, 5]


def test_to_dict_is_strict_json_with_numpy_scalars_and_non_finite_numbers() -> None:
    # numpy scalars become Python numbers; NaN and inf become null (documented), so the
    # record always passes json.dumps(allow_nan=False), which the old shapes did not
    cands = [Candidate(index=np.int64(1), clip_score=np.float32(2.0), probability=float("nan"))]
    pred = _prediction(
        score=np.float64("inf"),
        candidates=cands,
        index=np.int64(1),
        pure_index=np.int32(1),
        timings={"predict": np.float32(0.5), "text": float("nan")},
    )
    d = pred.to_dict()
    validate(d)
    assert d["score"] is None
    assert d["candidates"][0]["probability"] is None
    assert (
        d["candidates"][0]["clip_score"] == 2.0 and type(d["candidates"][0]["clip_score"]) is float
    )
    assert type(d["index"]) is int and type(d["pure_index"]) is int
    assert d["timings"] == {"predict": 0.5, "text": None}


def test_schema_rejects_what_is_not_a_record() -> None:
    import jsonschema

    good = _prediction().to_dict()
    for broken in (
        {k: v for k, v in good.items() if k != "mask"},
        {**good, "box": [1, 2, 3]},
        {**good, "mask": {"size": [12, 20], "counts": [1, 2]}},
        {**good, "parse": {**good["parse"], "relation": "sideways"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)
    with pytest.raises(ValueError):
        validate({**good, "score": math.nan})


def test_schema_vocabularies_are_the_types_ones() -> None:
    parse = load_schema()["$defs"]["parse"]["properties"]
    assert tuple(parse["relation"]["enum"]) == RELATIONS
    assert tuple(parse["direction"]["enum"]) == DIRECTIONS


def test_schema_is_package_data() -> None:
    from importlib import resources

    assert resources.files("hybridgl.schemas").joinpath("prediction.schema.json").is_file()


# ---------------------------------------------------------------- COCO results


def test_to_coco_result_loads_and_evaluates_with_pycocotools() -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    m = _mask()
    rec = _prediction().to_coco_result(image_id=7, category_id=3)
    assert set(rec) == {"image_id", "category_id", "segmentation", "bbox", "score"}
    assert rec["image_id"] == 7 and rec["category_id"] == 3 and rec["score"] == 0.9
    # COCO's bbox convention: one more than the SAM-style box in w and h
    assert rec["bbox"] == [3.0, 2.0, 14.0, 8.0]
    np.testing.assert_array_equal(rle_to_mask(rec["segmentation"]), m)
    json.dumps(rec, allow_nan=False)

    # the record is a valid results entry: a ground truth equal to the mask scores AP 1
    gt_rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    gt = {
        "images": [{"id": 7, "height": 12, "width": 20}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0, "area": 30.0,
             "bbox": rec["bbox"], "segmentation": {"size": [12, 20],
                                                   "counts": gt_rle["counts"].decode()}}
        ],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dt = coco.loadRes([rec])
        ev = COCOeval(coco, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert dt.loadAnns(dt.getAnnIds())[0]["bbox"] == rec["bbox"]
    assert ev.stats[0] == pytest.approx(1.0)


def test_to_coco_result_not_found_and_nan_score() -> None:
    empty = np.zeros((4, 5), dtype=bool)
    rec = _prediction(empty, found=False, score=float("nan")).to_coco_result("img-1")
    assert rec["bbox"] == [0.0, 0.0, 0.0, 0.0] and rec["score"] == 0.0
    assert rec["image_id"] == "img-1" and rec["category_id"] == 1
    assert not rle_to_mask(rec["segmentation"]).any()


# ---------------------------------------------------------------- supervision


def test_to_supervision_detections() -> None:
    import supervision as sv

    det = _prediction().to_supervision()
    assert isinstance(det, sv.Detections) and len(det) == 1
    np.testing.assert_array_equal(det.xyxy, [[3.0, 2.0, 16.0, 9.0]])
    np.testing.assert_array_equal(det.xyxy, sv.mask_to_xyxy(det.mask))
    assert det.mask.shape == (1, 12, 20) and det.mask.dtype == bool
    np.testing.assert_array_equal(det.mask[0], _mask())
    assert det.confidence is not None
    np.testing.assert_allclose(det.confidence, [0.9])
    assert list(det.data["expression"]) == ["The red cup"]
    assert list(det.data["index"]) == [2]


def test_to_supervision_empty_when_not_found() -> None:
    import supervision as sv

    det = _prediction(np.zeros((4, 5), dtype=bool), found=False).to_supervision()
    assert isinstance(det, sv.Detections) and len(det) == 0


def test_supervision_mask_annotator_draws_our_mask() -> None:
    import supervision as sv

    m = _mask()
    scene = np.full((12, 20, 3), 40, dtype=np.uint8)
    drawn = sv.MaskAnnotator(opacity=0.5).annotate(scene.copy(), _prediction().to_supervision())
    changed = np.any(drawn != scene, axis=2)
    np.testing.assert_array_equal(changed, m)  # every mask pixel changes, nothing else


def test_to_supervision_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "supervision", None)  # import now raises ImportError
    with pytest.raises(ImportError) as info:
        _prediction().to_supervision()
    assert 'pip install "hybridgl[supervision]"' in str(info.value)
    assert "\n" not in str(info.value)
