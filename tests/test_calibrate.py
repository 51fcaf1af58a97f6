"""``hybridgl calibrate`` (issue 19): the offline replay of the target rules equals
``predict`` with those thresholds, the pixel-signature counts are exact, and the fitted
thresholds written to thresholds.json give, loaded back by ``evaluate``, the metric value
the sweep reported (gRefCOCO fixture in the published layout, tiny random weights)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
from gres_fixture import COCO, build_grefcoco

from hybridgl.eval.calibrate import open_rules
from hybridgl.eval.metrics import intersection_union
from hybridgl.eval.sweep import Sample, _union_counts, grid, replay, sample_of, signature_histogram
from hybridgl.targets import TargetRules

needs_data = pytest.mark.skipif(not COCO.is_dir(), reason="needs ../shared/data/coco-mini")


def test_signature_counts_by_hand() -> None:
    a = np.array([[1, 1, 0], [0, 0, 0]], bool)
    b = np.array([[0, 1, 1], [0, 0, 0]], bool)
    gt = np.array([[0, 1, 1], [1, 0, 0]], bool)
    hist = dict(signature_histogram(np.stack([a, b]), gt))
    # bit 0: a, bit 1: b, bit 2: gt; (0,0) a only, (0,1) a b gt, (0,2) b gt, (1,0) gt
    assert hist == {0b001: 1, 0b111: 1, 0b110: 1, 0b100: 1}
    s = Sample(key="k", no_target=False, gt_area=3, rule="passed", pool=((0, 0, 0), (1, 0, 0)),
               hist=tuple(hist.items()))  # fmt: skip
    assert _union_counts(s, [0]) == (1, 4)  # a: I {(0,1)}, U a|gt = 4 pixels
    assert _union_counts(s, [1]) == (2, 3)
    assert _union_counts(s, [0, 1]) == (2, 4)
    assert _union_counts(s, []) == (0, 3)
    back = Sample.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s


def test_grid_spans_the_data() -> None:
    s = [Sample(key=str(k), no_target=False, gt_area=1, rule="passed", cosine=c, best=0,
                contrast=(("background", 0.1),)) for k, c in enumerate((0.1, 0.2, 0.3))]  # fmt: skip
    g = grid(s, "floor", 0.15, points=3)
    assert 0.15 in g and {0.1, 0.2, 0.3} <= set(g) and g[0] < 0.1 and g[-1] > 0.3
    assert grid(s, "margin", 0.25) == [0.25]  # no several-target sample: the base alone


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _columns(h: int = 48, w: int = 64, n: int = 4) -> np.ndarray:
    props = np.zeros((n + 2, h, w), bool)
    step = w // n
    for i in range(n):
        props[i, :, i * step : (i + 1) * step] = True
    props[n] = props[0]
    props[n + 1, : h // 2] = props[1, : h // 2]
    return props


@pytest.mark.parametrize("guidance", [True, False])
def test_replay_equals_predict(tiny_segmenter, guidance) -> None:
    seg = tiny_segmenter
    state = seg.encode_image(_image(), proposals=_columns())
    gt = np.zeros((48, 64), bool)
    gt[:, 16:48] = True
    gt[:5] = True
    base = TargetRules()
    checked = 0
    for phrase, mode in (("both cups", "auto"), ("the red cup", "auto"), ("a cup", "many")):
        opened = seg.predict(phrase, state=state, guidance=guidance, targets=mode,
                             thresholds=open_rules(base))  # fmt: skip
        sample = sample_of(opened, state, gt, "k", False)
        ev = opened.evidence
        lo = ev.cosine - max(ev.contrast.values())
        no_target = [(f, cm, 10.0, 2.0, 0.5, 0.8) for f, cm in itertools.product(
            (-1.0, ev.cosine - 1e-6, ev.cosine + 1e-6), (-2.0, lo + 1e-6))]  # fmt: skip
        several = [(-1.0, -2.0, *v) for v in itertools.product(
            (0.0, 0.02, 10.0), (0.0, 0.01, 2.0), (0.5, 1.0), (0.8, 0.3))]  # fmt: skip
        for floor, cm, margin, cmar, dedup, cont in no_target + several:
            rules = replace(base, floor=floor, contrast_margin=cm, margin=margin,
                            cosine_margin=cmar, dedup_iou=dedup, containment=cont)  # fmt: skip
            real = seg.predict(phrase, state=state, guidance=guidance, targets=mode,
                               thresholds=rules)  # fmt: skip
            i, u = intersection_union(np.asarray(real.mask, bool), gt)
            assert replay(sample, rules) == (False, not real.found, i, u), (phrase, rules)
            checked += 1
    assert checked == 3 * (6 + 36)


def _cli(*argv: str) -> tuple[int, str]:
    from hybridgl.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--device", "cpu", "--quiet"])
    return rc, out.getvalue() + err.getvalue()


@needs_data
@pytest.mark.slow
def test_calibrate_round_trip(tmp_path, shared_tiny_segmenters, monkeypatch) -> None:
    from PIL import Image

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    root = tmp_path / "data"
    build_grefcoco(root, count=5)
    data = ("--data-root", str(root), "--dataset", "grefcoco", "--split", "testA",
            "--proposals", "gt")  # fmt: skip
    out = tmp_path / "calib"
    rc, text = _cli("calibrate", *data, "--out", str(out), "--points", "9")
    assert rc == 0, text
    assert "| fitted |" in text and "thresholds:" in text
    doc = json.loads((out / "thresholds.json").read_text())
    cal = doc["calibration"]
    assert cal["objective"] == "gIoU" and cal["dataset"] == "grefcoco" and cal["expressions"] == 6
    assert cal["metrics"]["n_no_target"] == 2
    assert cal["value"] == cal["metrics"]["gIoU"] >= cal["default_metrics"]["gIoU"]
    tables = json.loads((out / "calibration.json").read_text())["tables"]
    assert set(tables) == {"floor", "contrast_margin", "margin", "cosine_margin"}
    for name, rows in tables.items():  # the fitted value is a row of each sweep, and the best
        fitted = [r for r in rows if r["value"] == doc["rules"][name]]
        assert fitted and fitted[0]["gIoU"] == cal["value"]
        assert max(r["gIoU"] for r in rows) == cal["value"]
    with Image.open(out / "calibration.png") as im:
        assert im.format == "PNG" and im.size[0] > 400
    # one pass: the records are there once; a second calibration sweeps without a model run
    n = len((out / "predictions.jsonl").read_text().splitlines())
    assert n == 6
    rc, text = _cli("calibrate", *data, "--out", str(out), "--objective", "balanced", "--no-plot")
    assert rc == 0, text
    assert len((out / "predictions.jsonl").read_text().splitlines()) == n
    assert (
        json.loads((out / "thresholds.json").read_text())["calibration"]["objective"] == "balanced"
    )
    # another start point with the same pool: the same pass, swept again
    (tmp_path / "start.json").write_text(json.dumps({"margin": 0.5, "dedup_iou": 0.7}))
    rc, text = _cli("calibrate", *data, "--out", str(out), "--thresholds",
                    str(tmp_path / "start.json"), "--no-plot")  # fmt: skip
    assert rc == 0, text
    assert len((out / "predictions.jsonl").read_text().splitlines()) == n
    assert json.loads((out / "thresholds.json").read_text())["rules"]["dedup_iou"] == 0.7
    # round trip: the gIoU-fitted thresholds, loaded back by evaluate, give the swept value
    (tmp_path / "th.json").write_text(json.dumps(doc))
    rc, text = _cli("evaluate", *data, "--thresholds", str(tmp_path / "th.json"),
                    "--out", str(tmp_path / "ev"))  # fmt: skip
    assert rc == 0, text
    gres = json.loads((tmp_path / "ev" / "report.json").read_text())["gres"]
    assert gres["gIoU"] == pytest.approx(cal["value"], abs=1e-9)
    assert gres["N-acc"] == pytest.approx(cal["metrics"]["N-acc"], abs=1e-9)
    assert gres["cIoU"] == pytest.approx(cal["metrics"]["cIoU"], abs=1e-9)


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch) -> None:
    import sys

    from hybridgl.errors import MissingExtraError
    from hybridgl.eval.calibrate_plot import write_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r'pip install "hybridgl\[plot\]"'):
        write_plot({}, TargetRules(), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


@needs_data
@pytest.mark.slow
def test_generic_data_with_several_and_no_targets(tmp_path, shared_tiny_segmenters,
                                                  monkeypatch) -> None:  # fmt: skip
    """The user's COCO-style data: list ann_ids (several), [] (none), bad rows; evaluate
    reports the GRES metrics and calibrate fits on it."""
    from gres_fixture import pick

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    images, anns, _ = pick(2)
    inst = COCO / "annotations" / "instances_val2017.json"
    rows = []
    for im in images:
        mine = [a["id"] for a in anns[im["id"]] if not a["iscrowd"]]
        rows += [
            {"image_id": im["id"], "ann_id": mine[:3], "expression": "all the things"},
            {"ann_id": [mine[0]], "expression": "the thing"},
            {"image_id": im["id"], "ann_id": [], "expression": "the unicorn"},
        ]
    other = images[1]["id"]
    rows += [
        {"image_id": images[0]["id"], "ann_id": [10**12], "expression": "x", "sent_id": "u"},
        {"ann_id": [], "no_target": True, "expression": "x", "sent_id": "n"},
        {"image_id": other, "ann_id": [anns[images[0]["id"]][0]["id"]], "expression": "x",
         "sent_id": "o"},
    ]  # fmt: skip
    exprs = tmp_path / "e.jsonl"
    exprs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ("--format", "generic", "--instances", str(inst), "--expressions", str(exprs),
            "--images", str(COCO / "val2017"), "--dataset", "mine", "--proposals", "gt")  # fmt: skip
    out = tmp_path / "ev"
    rc, text = _cli("evaluate", *data, "--targets", "auto", "--out", str(out))
    assert rc == 5, text  # the three bad rows
    recs = {
        str(r["sent_id"]): r
        for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())
    }
    assert recs["u"]["error_kind"] == "unknown_ann" and recs["n"]["error_kind"] == "bad_record"
    assert "belongs to image" in recs["o"]["error"]
    good = [r for r in recs.values() if not r["error"]]
    assert len(good) == 6 and sum(r["no_target"] for r in good) == 2
    assert all(len(r["ann_id"]) == 3 for r in good if r["sentence"] == "all the things")
    report = json.loads((out / "report.json").read_text())
    assert report["gres"]["n"] == 6 and report["gres"]["n_no_target"] == 2
    rc, text = _cli(
        "calibrate", *data, "--out", str(tmp_path / "cal"), "--points", "5", "--no-plot"
    )
    assert rc == 0, text
    cal = json.loads((tmp_path / "cal" / "thresholds.json").read_text())["calibration"]
    assert cal["expressions"] == 6 and cal["dataset"] == "mine"
