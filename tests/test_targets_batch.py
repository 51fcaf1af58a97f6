"""``hybridgl batch --targets`` (issue 19): every target written, per-row modes, no-target
rows, COCO entries per target, the resume check, and the same records on the Ray engine.

Tiny random weights and hand-made column proposals (tests/test_targets.py's layout), so
the choices mean nothing; what is checked is the plumbing."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridgl.cli.main import main
from hybridgl.masks import rle_to_mask
from hybridgl.schemas import validate
from hybridgl.targets import TargetRules

OPEN = TargetRules(floor=-1.0, contrast_margin=-2.0, margin=10.0, cosine_margin=2.0, pool=10)
VOLATILE = ("timings",)


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _columns(h: int = 48, w: int = 64, n: int = 4) -> np.ndarray:
    """``n`` disjoint column proposals, a duplicate of the first and a part of the second."""
    props = np.zeros((n + 2, h, w), bool)
    step = w // n
    for i in range(n):
        props[i, :, i * step : (i + 1) * step] = True
    props[n] = props[0]
    props[n + 1, : h // 2] = props[1, : h // 2]
    return props


@pytest.fixture
def work(tmp_path: Path) -> Path:
    Image.fromarray(_image()).save(tmp_path / "im.png")
    Image.fromarray(_image()[::-1].copy()).save(tmp_path / "im2.png")
    np.save(tmp_path / "p.npy", _columns())
    (tmp_path / "open.json").write_text(json.dumps({"rules": OPEN.to_dict()}))
    (tmp_path / "shut.json").write_text(json.dumps({"floor": 1.5}))
    rows = [
        {"id": "both", "image": "im.png", "expression": "both cups", "proposals": "p.npy"},
        {"id": "one", "image": "im.png", "expression": "the red cup", "proposals": "p.npy",
         "targets": "one"},
        {"id": "auto", "image": "im2.png", "expression": "the cups", "proposals": "p.npy",
         "targets": "auto", "image_id": 9},
        {"id": "bad", "image": "im.png", "expression": "a cup", "targets": "all"},
    ]  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--device", "cpu"])
    return rc, out.getvalue(), err.getvalue()


def records(folder: Path) -> dict[str, dict]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    out = {}
    for line in lines:
        r = json.loads(line)
        out[r["id"]] = r
    return out


def stable(recs: dict[str, dict]) -> dict[str, dict]:
    """Records without the timings (the only fields allowed to differ between runs)."""
    return {i: {k: v for k, v in r.items() if k not in VOLATILE} for i, r in recs.items()}


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im) > 0


@pytest.mark.slow
def test_batch_many_writes_every_target(work, shared_tiny_segmenters, monkeypatch) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    out = work / "out"
    rc, text, err = run_cli(
        "batch", str(work / "rows.jsonl"), "--out", str(out), "--no-progress",
        "--targets", "many", "--thresholds", str(work / "open.json"), "--format", "coco",
    )  # fmt: skip
    assert rc == 5, err  # the bad row only
    assert "done 3, skipped 0, failed 1" in text
    recs = records(out)
    assert (
        recs["bad"]["error_kind"] == "bad_record"
        and "targets must be one of" in (recs["bad"]["error"])
    )
    both, one, auto = recs["both"], recs["one"], recs["auto"]
    for r in (both, one, auto):
        validate(r)
    # the run's mode: several targets, each written beside the union
    assert both["evidence"]["mode"] == "many" and len(both["targets"]) >= 3
    assert len(both["target_mask_pngs"]) == len(both["targets"])
    union = np.zeros((48, 64), bool)
    for t, rel in zip(both["targets"], both["target_mask_pngs"], strict=True):
        m = png(out / rel)
        np.testing.assert_array_equal(m, rle_to_mask(t["mask"]))
        union |= m
    np.testing.assert_array_equal(png(out / both["mask_png"]), union)
    # a row's own mode wins: "one" is the record of a run without the option, bit for bit
    assert one["evidence"]["mode"] == "one" and "target_mask_pngs" not in one
    assert auto["evidence"]["mode"] == "auto" and auto["evidence"]["several"] is True
    plain = work / "plain"
    (work / "one.jsonl").write_text(  # the same row, on the same line, without "targets"
        "\n" + json.dumps({k: v for k, v in json.loads(
            (work / "rows.jsonl").read_text().splitlines()[1]).items() if k != "targets"}) + "\n"
    )  # fmt: skip
    rc, _, err = run_cli("batch", str(work / "one.jsonl"), "--out", str(plain), "--no-progress")
    assert rc == 0, err
    assert stable(records(plain))["one"] == stable({"one": one})["one"]
    assert (plain / one["mask_png"]).read_bytes() == (out / one["mask_png"]).read_bytes()
    # COCO: one entry per target of the many/auto rows, one for the "one" row
    coco = json.loads((out / "results.coco.json").read_text())
    assert len(coco) == len(both["targets"]) + 1 + len(auto["targets"])
    assert [e["image_id"] for e in coco].count(9) == len(auto["targets"])
    assert sorted(e["score"] for e in coco if e["image_id"] == 9) == sorted(
        t["score"] for t in auto["targets"]
    )
    # the mode is part of the run: a resume with another value is refused, the same resumes
    rc, _, err = run_cli("batch", str(work / "rows.jsonl"), "--out", str(out), "--no-progress")
    assert rc == 3 and "targets: 'many' -> None" in err, err
    rc, _, err = run_cli(
        "batch", str(work / "rows.jsonl"), "--out", str(out), "--no-progress",
        "--targets", "many", "--thresholds", str(work / "shut.json"),
    )  # fmt: skip
    assert rc == 3 and "thresholds:" in err, err
    rc, text, err = run_cli(
        "batch", str(work / "rows.jsonl"), "--out", str(out), "--no-progress",
        "--targets", "many", "--thresholds", str(work / "open.json"),
    )  # fmt: skip
    assert rc == 5 and "done 0, skipped 3, failed 1" in text, err


def test_batch_no_target_rows_are_not_errors(work, shared_tiny_segmenters, monkeypatch) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    good = work / "good.jsonl"
    good.write_text(
        "".join(line + "\n" for line in (work / "rows.jsonl").read_text().splitlines()[:3])
    )
    out = work / "out"
    rc, text, err = run_cli(
        "batch", str(good), "--out", str(out), "--no-progress", "--overlays",
        "--targets", "auto", "--thresholds", str(work / "shut.json"), "--format", "coco",
    )  # fmt: skip
    assert rc == 0, err
    assert "done 3, skipped 0, failed 0" in text
    recs = records(out)
    for rid in ("both", "auto"):
        r = recs[rid]
        validate(r)
        assert r["found"] is False and r["evidence"]["rule"] == "below_floor"
        assert r["mask_png"] is None and r["target_mask_pngs"] == [] and "error" not in r
        assert (out / r["overlay"]).is_file()
    assert recs["one"]["found"] is True  # "one" has no no-target test
    pngs = sorted(p.name for p in (out / "masks").iterdir())
    assert pngs == [Path(recs["one"]["mask_png"]).name]
    coco = json.loads((out / "results.coco.json").read_text())
    assert len(coco) == 1 and coco[0]["image_id"] == "im.png"


def test_batch_bad_options(work, shared_tiny_segmenters, monkeypatch) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    rc, _, err = run_cli("batch", str(work / "rows.jsonl"), "--out", str(work / "o"),
                         "--targets", "all")  # fmt: skip
    assert rc == 2 and "invalid choice" in err
    (work / "bad.json").write_text('{"floor": "low"}')
    rc, _, err = run_cli("batch", str(work / "rows.jsonl"), "--out", str(work / "o"),
                         "--targets", "many", "--thresholds", str(work / "bad.json"))  # fmt: skip
    assert rc == 3 and "bad.json" in err and "floor must be a finite number" in err, err
    assert "Traceback" not in err and not (work / "o").exists()


@pytest.mark.slow
def test_batch_targets_on_ray_equals_local(ray_cluster, work, shared_tiny_segmenters) -> None:
    common = ("--no-progress", "--targets", "many", "--thresholds", str(work / "open.json"),
              "--format", "coco", "--threads-per-worker", "1")  # fmt: skip
    local, on_ray = work / "local", work / "ray"
    rc, _, err = run_cli("batch", str(work / "rows.jsonl"), "--out", str(local), *common)
    assert rc == 5, err
    rc, text, err = run_cli(
        "batch", str(work / "rows.jsonl"), "--out", str(on_ray), *common,
        "--engine", "ray", "--workers", "1",
    )  # fmt: skip
    assert rc == 5 and "done 3, skipped 0, failed 1" in text, err
    a, b = records(local), records(on_ray)
    assert stable(a) == stable(b)
    assert len(b["both"]["targets"]) >= 3
    for r in b.values():
        for rel in [r.get("mask_png"), *r.get("target_mask_pngs", [])]:
            if rel:
                assert (on_ray / rel).read_bytes() == (local / rel).read_bytes()
    assert (on_ray / "results.coco.json").read_text() == (local / "results.coco.json").read_text()


def test_rows_read_the_targets_field_from_jsonl_and_csv(tmp_path) -> None:
    from hybridgl.jobs.batch_rows import read_rows

    (tmp_path / "r.csv").write_text(
        "image,expression,id,targets\na.png,the cups,1,many\nb.png,a cup,2,\nc.png,x,3,lots\n"
    )
    rows, bad, _ = read_rows(tmp_path / "r.csv", [])
    assert [(r.id, r.targets) for r in rows] == [("1", "many"), ("2", None)]
    assert [b.id for b in bad] == ["3"] and "targets must be one of" in bad[0].error
    (tmp_path / "r.jsonl").write_text(
        json.dumps({"image": "a.png", "expression": "e", "targets": "auto"}) + "\n"
        + json.dumps({"image": "a.png", "expression": "f", "targets": 3}) + "\n"
    )  # fmt: skip
    rows, bad, _ = read_rows(tmp_path / "r.jsonl", [])
    assert [r.targets for r in rows] == ["auto"] and "got 3" in bad[0].error
