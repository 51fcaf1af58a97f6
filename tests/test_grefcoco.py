"""gRefCOCO and PhraseCut: the GRES metrics on hand-computed cases, the loaders on fixtures in
the published layouts (built at test time from coco-mini) and ``evaluate`` end to end with
the tiny random models (the choices mean nothing, the plumbing is real)."""

from __future__ import annotations

import contextlib
import io
import json
import pickle

import pytest
from gres_fixture import COCO, build_grefcoco, build_phrasecut

from hybridgl.errors import DataError
from hybridgl.eval.datasets import load_dataset
from hybridgl.eval.grefcoco import check_size, load_grefcoco
from hybridgl.eval.metrics import gres_from_records, gres_metrics
from hybridgl.eval.phrasecut import load_phrasecut
from hybridgl.eval.pickles import UnsafePickleError
from hybridgl.eval.refer import load_refer

needs_data = pytest.mark.skipif(
    not (COCO / "annotations").is_dir(), reason=f"coco-mini not found at {COCO}"
)

# --------------------------------------------------------------------------- metrics


def test_gres_metrics_every_branch() -> None:
    samples = [
        (True, True, 0, 0),  # no target, answered none: TP, IoU 1, adds nothing
        (True, False, 0, 50),  # no target, answered a 50-px mask: FN, IoU 0, U += 50
        (False, True, 5, 40),  # target, answered none: FP, I forced to 0, U += 40
        (False, False, 30, 40),  # target: IoU 0.75
        (False, False, 36, 40),  # target: IoU 0.9
        (False, False, 0, 0),  # target with an empty union: IoU 0
    ]
    m = gres_metrics(samples)
    assert (m["n"], m["n_target"], m["n_no_target"]) == (6, 4, 2)
    assert m["gIoU"] == pytest.approx(100 * (1 + 0 + 0 + 0.75 + 0.9 + 0) / 6)
    assert m["cIoU"] == pytest.approx(100 * (30 + 36) / (50 + 40 + 40 + 40))
    assert m["N-acc"] == 50.0 and m["T-acc"] == 75.0
    assert (m["Pr@0.7"], m["Pr@0.8"], m["Pr@0.9"]) == (50.0, 25.0, 25.0)
    # the released code's smoothed fractions: TP / (TP + FN + 1), TP / (TP + FP + 1)
    assert m["code_N_acc"] == pytest.approx(1 / 3) and m["code_T_acc"] == pytest.approx(1 / 3)
    empty = gres_metrics([])
    assert empty["n"] == 0 and empty["gIoU"] is None and empty["cIoU"] is None
    only_nt = gres_metrics([(True, True, 0, 0)])
    assert only_nt["gIoU"] == 100.0 and only_nt["cIoU"] is None and only_nt["T-acc"] is None
    recs = [
        {"error": None, "no_target": True, "found": False, "guided_i": 0, "guided_u": 0},
        {"error": None, "no_target": False, "found": True, "guided_i": 3, "guided_u": 4},
        {"error": "x", "no_target": False, "found": True, "guided_i": 0, "guided_u": 9},
    ]
    r = gres_from_records(recs)
    assert r["n"] == 2 and r["gIoU"] == pytest.approx(100 * (1 + 0.75) / 2)
    assert r["cIoU"] == pytest.approx(75.0)


# --------------------------------------------------------------------------- loaders


@needs_data
def test_grefcoco_loader(tmp_path) -> None:
    built = build_grefcoco(tmp_path)
    val = load_dataset(tmp_path, "grefcoco", "val")
    with pytest.raises(DataError, match="not in the REFER layout"):
        load_refer(tmp_path, "grefcoco", "val")
    assert val.format == "grefcoco" and not val.problems
    assert [e.sentence for e in val.expressions] == [
        r["sentences"][0]["raw"] for r in built["refs"] if r["split"] == "val"
    ]
    several, one, none = val.expressions
    assert len(several.ann_id) >= 2 and one.ann_id == several.ann_id[:1] and none.ann_id == ()
    assert all(e.error is None for e in val.expressions)
    assert val.image_path(several.image_id).is_file()
    assert val.image_path(several.image_id).parent == tmp_path / "images" / "train2014"
    assert [e.sentence for e in load_grefcoco(tmp_path, "train").expressions] == ["train only"]
    # the pickle form is read instead when present, by the restricted unpickler
    refs = json.loads((tmp_path / "grefcoco" / "grefs(unc).json").read_text())
    refs[0]["no_target"] = True  # the flag alone makes a ref no-target
    (tmp_path / "grefcoco" / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    assert load_grefcoco(tmp_path, "val").expressions[0].ann_id == ()


@needs_data
def test_grefcoco_loader_defences(tmp_path) -> None:
    build_grefcoco(tmp_path)
    ds = tmp_path / "grefcoco"
    with pytest.raises(DataError, match="no split 'test'"):
        load_grefcoco(tmp_path, "test")
    with pytest.raises(DataError, match=r"more than the limit"):
        load_grefcoco(tmp_path, "val", max_bytes=100)
    with pytest.raises(DataError, match="not found"):
        check_size(ds / "nothing.json", "refs file")
    refs = json.loads((ds / "grefs(unc).json").read_text())
    bad = [dict(refs[0], ann_id=[999999999]), dict(refs[1], ann_id="x"), 7]
    bad[1]["ann_id"] = None
    (ds / "grefs(unc).json").write_text(json.dumps(bad))
    data = load_grefcoco(tmp_path, "val")
    assert data.expressions[0].error_kind == "unknown_ann"
    assert len(data.problems) == 2 and "grefs(unc).json" in data.problems[0]
    (ds / "grefs(unc).json").write_text("{}")
    with pytest.raises(DataError, match=r"grefs\(unc\)\.json holds a dict"):
        load_grefcoco(tmp_path, "val")
    (ds / "grefs(unc).json").write_text("[")
    with pytest.raises(DataError, match="not valid JSON"):
        load_grefcoco(tmp_path, "val")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (ds / "grefs(unc).p").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(UnsafePickleError, match="could run code"):
        load_grefcoco(tmp_path, "val")


@needs_data
def test_phrasecut_loader(tmp_path) -> None:
    built = build_phrasecut(tmp_path)
    data = load_dataset(tmp_path, "phrasecut", "test")
    assert [e.sentence for e in data.expressions] == [t["phrase"] for t in built["tasks"]]
    first = data.expressions[0]
    assert len(first.ann_id) == len(built["tasks"][0]["Polygons"]) >= 2
    # each instance mask equals the COCO annotation it came from
    im = built["images"][0]
    h, w = im["height"], im["width"]
    coco_ids = built["tasks"][0]["ann_ids"]
    by_id = {a["id"]: a for a in built["anns"][im["id"]]}
    from hybridgl.eval.annotations import annotation_to_mask

    for aid, cid in zip(first.ann_id, coco_ids, strict=True):
        assert (data.ann_mask(aid, h, w) == annotation_to_mask(by_id[cid], h, w)).all()
    assert data.image_path(first.image_id) == tmp_path / "phrasecut" / "images" / f"{im['id']}.jpg"
    with pytest.raises(DataError, match="no split"):
        load_phrasecut(tmp_path / "phrasecut", "testA")
    tasks = built["tasks"]
    tasks[0]["Polygons"] = [[["a", "b"]]]
    tasks[1]["image_id"] = -5
    (tmp_path / "phrasecut" / "refer_test.json").write_text(json.dumps(tasks))
    data = load_phrasecut(tmp_path / "phrasecut", "test")
    assert data.expressions[0].error_kind == "bad_annotation"
    assert data.expressions[1].error_kind == "unknown_image"


# --------------------------------------------------------------------------- evaluate


def _evaluate(*argv: str) -> tuple[int, str]:
    from hybridgl.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["evaluate", *argv, "--device", "cpu", "--quiet"])
    return rc, out.getvalue()


@needs_data
@pytest.mark.slow
def test_evaluate_grefcoco_and_phrasecut(tmp_path, shared_tiny_segmenters, monkeypatch) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    root = tmp_path / "data"
    build_grefcoco(root)
    build_phrasecut(root)
    keep_all = {
        "floor": -1.0, "contrast_margin": -2.0, "margin": 100.0, "cosine_margin": 2.0,
        "pool": 100, "dedup_iou": 1.0, "containment": 1.0,
    }  # fmt: skip
    th = tmp_path / "th.json"
    th.write_text(json.dumps({"rules": keep_all}))
    out = tmp_path / "g"
    rc, text = _evaluate(
        "--data-root", str(root), "--dataset", "grefcoco", "--split", "val",
        "--proposals", "gt", "--thresholds", str(th), "--out", str(out),
    )  # fmt: skip
    assert rc == 0, text
    recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["no_target"] for r in recs] == [False, False, True]
    several = recs[0]
    # every proposal (all annotations of the image) is a target: the union covers the truth
    assert several["num_targets"] >= 3 and several["guided_i"] == several["gt_area"]
    assert recs[1]["num_targets"] == 1  # auto: "the bottle" is one object
    assert recs[2]["found"] is True  # floor -1: the no-target test never fires here
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == "auto" and report["thresholds"]["floor"] == -1.0
    assert report["gres"] == gres_from_records(recs)
    assert report["gres"]["N-acc"] == 0.0 and report["gres"]["T-acc"] == 100.0
    assert "## gRefCOCO metrics" in text and "trained" in text
    # resumable: a second run evaluates nothing new
    rc, _ = _evaluate(
        "--data-root", str(root), "--dataset", "grefcoco", "--split", "val",
        "--proposals", "gt", "--thresholds", str(th), "--out", str(out),
    )  # fmt: skip
    assert rc == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    # other settings in the same folder: refused (exit 3)
    rc, _ = _evaluate(
        "--data-root", str(root), "--dataset", "grefcoco", "--split", "val",
        "--proposals", "gt", "--targets", "one", "--out", str(out),
    )  # fmt: skip
    assert rc == 3
    # a floor above any cosine: every answer is "no target"
    th.write_text(json.dumps({"floor": 1.5}))
    rc, _ = _evaluate(
        "--data-root", str(root), "--dataset", "grefcoco", "--split", "val",
        "--proposals", "gt", "--thresholds", str(th), "--out", str(tmp_path / "g2"),
    )  # fmt: skip
    g = json.loads((tmp_path / "g2" / "report.json").read_text())["gres"]
    assert (g["N-acc"], g["T-acc"], g["gIoU"]) == (100.0, 0.0, 100 / 3)
    # PhraseCut: union of instances as target, the RefCOCO metrics
    out = tmp_path / "p"
    rc, text = _evaluate(
        "--data-root", str(root), "--dataset", "phrasecut", "--split", "test",
        "--proposals", "gt", "--targets", "many", "--out", str(out),
    )  # fmt: skip
    assert rc == 0, text
    recs = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["error"] is None for r in recs)
    assert all(r["upper_i"] <= r["gt_area"] for r in recs)
