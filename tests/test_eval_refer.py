"""REFER reader, generic reader, ground-truth masks, selection and JSONL repair (no model)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_fixture import SKIP_REASON, build_refer_fixture, data_available

from hybridgl.errors import DataError
from hybridgl.eval.annotations import annotation_to_mask
from hybridgl.eval.generic import load_generic
from hybridgl.eval.pickles import load_refs_pickle
from hybridgl.eval.refer import Expression, check_dataset_split, load_refer
from hybridgl.eval.report import build_report
from hybridgl.eval.task import select_expressions

needs_data = pytest.mark.skipif(not data_available(), reason=SKIP_REASON)


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    if not data_available():
        pytest.skip(SKIP_REASON)
    root = tmp_path_factory.mktemp("refer")
    summary = build_refer_fixture(root, ("refcoco", "refcoco+", "refcocog"))
    return root, summary


# --------------------------------------------------------------------------- fixture


@needs_data
def test_fixture_has_real_refs_in_every_split(refer_root):
    root, summary = refer_root
    for ds, splits in (("refcoco", ("val", "testA", "testB")), ("refcocog", ("val", "test"))):
        for split in splits:
            n_refs, n_sents = summary[ds][split]
            assert n_refs >= 1 and n_sents >= n_refs, (ds, split)
            data = load_refer(root, ds, split)
            assert len(data.expressions) == n_sents
            assert not data.problems
            assert all(e.error is None for e in data.expressions)


@needs_data
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_refer_expressions_and_ground_truth(refer_root):
    from pycocotools.coco import COCO

    root, summary = refer_root
    data = load_refer(root, "refcoco", "val")
    assert data.format == "refer" and data.expected_count == 10834
    assert len({e.sent_id for e in data.expressions}) == len(data.expressions)
    coco = COCO(str(root / "refcoco" / "instances.json"))
    for e in data.expressions:
        assert e.split == "val" and e.sentence.strip()
        path = data.image_path(e.image_id)
        assert path.name == f"COCO_train2014_{e.image_id:012d}.jpg" and path.is_file()
        h, w = data.image_size(e.image_id)
        gt = data.ann_mask(e.ann_id, h, w)
        # the same mask as the COCO API's annToMask
        np.testing.assert_array_equal(gt, coco.annToMask(coco.anns[e.ann_id]).astype(bool))
        assert gt.any()
        assert e.ann_id in data.image_ann_ids(e.image_id)


@needs_data
def test_python2_style_pickle_loads(refer_root, tmp_path):
    # a protocol-0 pickle with Python 2 byte strings, as the original REFER files hold
    root, _ = refer_root
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    ref = next(r for r in refs if r["split"] == "val")

    def py2(v):
        if isinstance(v, str):
            return b"S" + repr(v.encode("utf-8"))[1:].encode("ascii") + b"\n"
        return b"I" + str(v).encode() + b"\n"

    body = b"(lp0\n(dp1\n"
    for key in ("ref_id", "ann_id", "image_id", "split", "category_id"):
        body += py2(key) + py2(ref[key]) + b"s"
    body += py2("sentences") + b"(lp2\n(dp3\n"
    body += py2("raw") + py2("caf\u00e9 on the left") + b"s"
    body += py2("sent_id") + py2(7) + b"sas"  # end sentence dict, append, set sentences
    body += b"a."
    d = tmp_path / "py2"
    (d / "refcoco").mkdir(parents=True)
    (d / "refcoco" / "refs(unc).p").write_bytes(body)
    (d / "refcoco" / "instances.json").write_bytes(
        (root / "refcoco" / "instances.json").read_bytes()
    )
    data = load_refer(d, "refcoco", "val")
    assert [(e.sent_id, e.sentence, e.ann_id) for e in data.expressions] == [
        (7, "caf\u00e9 on the left", ref["ann_id"])
    ]


@needs_data
def test_truncated_pickle_recovers_complete_refs(refer_root, tmp_path):
    root, _ = refer_root
    blob = (root / "refcoco" / "refs(unc).p").read_bytes()
    n_refs = len(pickle.loads(blob))
    path = tmp_path / "refs(unc).p"
    path.write_bytes(blob[: int(len(blob) * 0.6)])
    refs, problem = load_refs_pickle(path)
    assert 0 < len(refs) < n_refs
    assert "truncated or corrupt" in problem and str(path) in problem
    # the recovered refs are complete and equal to the originals
    assert refs == pickle.loads(blob)[: len(refs)]
    path.write_bytes(blob[:20])
    with pytest.raises(DataError, match="no ref could be read"):
        load_refs_pickle(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match=r"refs\(unc\)\.p"):
        load_refs_pickle(path)


@needs_data
def test_bad_refs_and_records_are_reported(refer_root, tmp_path):
    root, _ = refer_root
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    val = [r for r in refs if r["split"] == "val"]
    val[0]["ann_id"] = 987654321  # unknown annotation
    val[1]["image_id"] = val[1]["image_id"] + 1  # annotation of another image
    del val[2]["sentences"]  # malformed ref
    d = tmp_path / "bad"
    (d / "refcoco").mkdir(parents=True)
    (d / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (d / "refcoco" / "instances.json").write_bytes(
        (root / "refcoco" / "instances.json").read_bytes()
    )
    data = load_refer(d, "refcoco", "val")
    kinds = {e.error_kind for e in data.expressions if e.error}
    assert kinds == {"unknown_ann", "bad_record"}
    bad = [e for e in data.expressions if e.error_kind == "unknown_ann"]
    assert len(bad) == len(val[0]["sentences"]) and "987654321" in bad[0].error
    assert any("lacks sentences" in p for p in data.problems)


def test_invalid_dataset_split_combinations():
    assert check_dataset_split("refcoco", "testA") == "unc"
    assert check_dataset_split("refcoco+", "val") == "unc"
    assert check_dataset_split("refcocog", "test") == "umd"
    with pytest.raises(DataError, match="refcocog .*has no split 'testA'"):
        check_dataset_split("refcocog", "testA")
    with pytest.raises(DataError, match="refcoco .*has no split 'test'"):
        check_dataset_split("refcoco", "test")
    with pytest.raises(DataError, match="unknown dataset"):
        check_dataset_split("refclef", "val")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        load_refer(tmp_path / "nowhere", "refcoco", "val")
    with pytest.raises(DataError, match="dataset folder not found"):
        load_refer(tmp_path, "refcoco", "val")
    (tmp_path / "refcocog").mkdir()
    with pytest.raises(DataError, match=r"refs file not found: .*refs\(umd\)\.p"):
        load_refer(tmp_path, "refcocog", "val")
    (tmp_path / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps([], protocol=2))
    with pytest.raises(DataError, match="instances file not found"):
        load_refer(tmp_path, "refcocog", "val")
    (tmp_path / "refcocog" / "instances.json").write_text('{"images": [], "annotations": [')
    with pytest.raises(DataError, match=r"instances.json is not valid JSON"):
        load_refer(tmp_path, "refcocog", "val")


# --------------------------------------------------------------------------- masks


def test_several_polygons_form_one_mask():
    ann = {
        "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [6, 6, 10, 6, 10, 10, 6, 10], [1, 1]],
        "iscrowd": 0,
    }
    mask = annotation_to_mask(ann, 12, 12)
    assert mask.shape == (12, 12) and mask.dtype == bool
    assert mask[1, 1] and mask[8, 8] and not mask[5, 5] and not mask[11, 11]
    # two disjoint parts
    assert mask[:5, :5].sum() > 0 and mask[5:, 5:].sum() > 0


def test_uncompressed_and_compressed_rle():
    from pycocotools import mask as mask_utils

    truth = np.zeros((5, 4), dtype=bool)
    truth[1:3, 1:4] = True
    truth[4, 0] = True
    # uncompressed RLE: run lengths over the column-major flattening, starting with zeros
    flat = truth.flatten(order="F")
    counts, cur, run = [], False, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    crowd = {"segmentation": {"size": [5, 4], "counts": counts}, "iscrowd": 1}
    np.testing.assert_array_equal(annotation_to_mask(crowd, 5, 4), truth)
    rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
    for c in (rle["counts"], rle["counts"].decode("ascii")):
        ann = {"segmentation": {"size": [5, 4], "counts": c}}
        np.testing.assert_array_equal(annotation_to_mask(ann, 5, 4), truth)
    with pytest.raises(DataError, match="differs from the image size"):
        annotation_to_mask(crowd, 6, 4)


def test_unusable_segmentations():
    with pytest.raises(DataError, match="no segmentation"):
        annotation_to_mask({"id": 1}, 4, 4)
    with pytest.raises(DataError, match="at least 3 points"):
        annotation_to_mask({"segmentation": [[1, 2]]}, 4, 4)
    with pytest.raises(DataError, match="unsupported"):
        annotation_to_mask({"segmentation": "abc"}, 4, 4)


# --------------------------------------------------------------------------- generic


def _instances(tmp_path: Path) -> Path:
    inst = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "bbox": [0, 0, 4, 4],
                "category_id": 1,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
                "area": 16,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(inst))
    return path


def test_generic_reader(tmp_path):
    inst = _instances(tmp_path)
    expr = tmp_path / "expr.jsonl"
    expr.write_text(
        "\n".join(
            [
                json.dumps({"image_id": 1, "ann_id": 10, "expression": "the thing"}),
                json.dumps({"ann_id": 10, "expression": "top left", "sent_id": "s2"}),
                '{"image_id": 1, "ann_id": 10, "expr',
                json.dumps({"image_id": 1, "ann_id": 11, "expression": "ghost"}),
                json.dumps({"image_id": 1, "ann_id": 10, "expression": "x", "split": "train"}),
                json.dumps({"image_id": 1, "ann_id": 10}),
                json.dumps({"image_id": 1, "ann_id": [10], "expression": "list id"}),
            ]
        )
        + "\n"
    )
    data = load_generic(inst, expr, split="val")
    assert data.format == "generic" and data.split == "val" and data.images_dir == tmp_path
    got = [(e.sent_id, e.image_id, e.ann_id, e.error_kind) for e in data.expressions]
    assert got == [
        (1, 1, 10, None),
        ("s2", 1, 10, None),
        (3, None, None, "bad_record"),
        (4, 1, 11, "unknown_ann"),
        (6, 1, 10, "bad_record"),
        (7, 1, (10,), None),  # a list: the objects it names (several or none; issue 19)
    ]
    assert "line 3: bad JSON" in data.expressions[2].error
    assert data.image_path(1) == tmp_path / "a.png"
    assert data.ann_mask(10, 8, 8).sum() > 0
    with pytest.raises(DataError, match="expressions file not found"):
        load_generic(inst, tmp_path / "none.jsonl")


# --------------------------------------------------------------------------- selection


def _exprs(n: int) -> list[Expression]:
    return [Expression(sent_id=k, sentence=f"s{k}", image_id=k // 3, ann_id=k) for k in range(n)]


def test_limit_and_seeded_sample():
    ex = _exprs(50)
    assert [e.sent_id for e in select_expressions(ex, limit=4)] == [0, 1, 2, 3]
    a = select_expressions(ex, sample=10, seed=3)
    b = select_expressions(ex, sample=10, seed=3)
    c = select_expressions(ex, sample=10, seed=4)
    assert a == b and a != c and len(a) == 10
    assert [e.sent_id for e in a] == sorted(e.sent_id for e in a)  # data order kept
    assert select_expressions(ex, sample=10, seed=3, limit=2) == a[:2]
    assert select_expressions(ex, sample=99) == ex


def test_count_warning_only_for_full_splits(tmp_path):
    from hybridgl.eval.refer import EvalData

    data = EvalData("refcoco", "val", "refer", _exprs(5), {}, {}, tmp_path, expected_count=10834)
    r = build_report(data, data.expressions, [], {}, {"limit": None, "sample": None})
    assert "has 5 expressions; the published split has 10834" in r["count_warning"]
    assert r["counts"]["pending"] == 5
    r = build_report(data, data.expressions[:2], [], {}, {"limit": 2, "sample": None})
    assert r["count_warning"] is None


def test_import_hybridgl_does_not_import_eval():
    code = "import sys, hybridgl; assert 'hybridgl.eval' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
