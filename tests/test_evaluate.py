"""``hybridgl evaluate`` end to end on a REFER fixture built from real data.

The models are tiny and random (``HYBRIDGL_RANDOM_WEIGHTS=tiny``): the scores mean
nothing, the plumbing is real. Most runs use ``--proposals gt`` (every COCO mask of the
image as a proposal), which is fast and gives a known upper bound of 100 %.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
from eval_fixture import SKIP_REASON, build_refer_fixture, data_available

from hybridgl.cli.main import main

pytestmark = pytest.mark.skipif(not data_available(), reason=SKIP_REASON)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
TIMING = ("time_s", "image_time_s")


class Built:
    """Remembers the segmenters the runs build (to read their ``stats``): every build goes
    through ``Segmenter.from_spec``."""

    def __init__(self) -> None:
        from hybridgl.segmenter import Segmenter

        self.segmenters: list = []
        self._build = Segmenter.from_spec.__func__  # type: ignore[attr-defined]

    def __call__(self, cls, spec):
        seg = self._build(cls, spec)
        self.segmenters.append(seg)
        return seg


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
        built = Built()
        from hybridgl.segmenter import Segmenter

        mp.setattr(Segmenter, "from_spec", classmethod(built))
        root = tmp_path_factory.mktemp("refer")
        summary = build_refer_fixture(root, ("refcoco", "refcoco+", "refcocog"))
        yield {"root": root, "summary": summary, "built": built, "tmp": tmp_path_factory}


def evaluate(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["evaluate", *argv, "--device", "cpu"])
    return rc, out.getvalue(), err.getvalue()


def records_of(out_dir: Path) -> list[dict]:
    lines = (out_dir / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def recompute(records: list[dict]) -> dict:
    """The report's metrics, recomputed here from the records alone."""
    ok = [r for r in records if not r["error"]]
    out = {}
    for kind in ("pure", "guided", "upper"):
        ious = [r[f"{kind}_i"] / r[f"{kind}_u"] if r[f"{kind}_u"] else 0.0 for r in ok]
        total_i = sum(r[f"{kind}_i"] for r in ok)
        total_u = sum(r[f"{kind}_u"] for r in ok)
        out[kind] = {
            "n": len(ok),
            "mIoU": 100 * sum(ious) / len(ious),
            "oIoU": 100 * total_i / total_u,
            **{f"P@{t}": 100 * sum(v >= t for v in ious) / len(ious) for t in THRESHOLDS},
        }
    return out


def same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for kind in a:
        assert a[kind].keys() == b[kind].keys()
        for key, v in a[kind].items():
            assert v == pytest.approx(b[kind][key], rel=1e-12, abs=1e-12), (kind, key)


def strip_timing(records: list[dict]) -> dict:
    return {r["sent_id"]: {k: v for k, v in r.items() if k not in TIMING} for r in records}


def refer_args(env, dataset: str, split: str, out: Path, *extra: str) -> list[str]:
    return ["--data-root", str(env["root"]), "--dataset", dataset, "--split", split,
            "--proposals", "gt", "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(env):
    """RefCOCOg val(umd) of the fixture: two images, several refs each."""
    out = env["tmp"].mktemp("full")
    rc, stdout, stderr = evaluate(*refer_args(env, "refcocog", "val", out))
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "out": out,
            "segmenter": env["built"].segmenters[-1]}  # fmt: skip


@pytest.fixture(scope="module")
def single_run(env):
    """RefCOCO testA of the fixture in one uninterrupted run (the resume tests' baseline)."""
    out = env["tmp"].mktemp("single")
    rc, stdout, stderr = evaluate(*refer_args(env, "refcoco", "testA", out))
    assert rc == 0, stderr
    return out


@pytest.mark.slow
def test_full_run_report_matches_its_records(env, full_run):
    out = full_run["out"]
    assert full_run["rc"] == 0, full_run["stderr"]
    n_refs, n_sents = env["summary"]["refcocog"]["val"]
    report = json.loads((out / "report.json").read_text())
    records = records_of(out)
    assert len(records) == n_sents == report["counts"]["done"] == report["counts"]["selected"]
    assert report["counts"]["failed"] == 0 and report["counts"]["pending"] == 0
    assert len({r["sent_id"] for r in records}) == n_sents
    assert len({r["ref_id"] for r in records}) == n_refs
    # the report is an independent recomputation from the JSONL
    same_metrics(report["metrics"], recompute(records))
    for r in records:
        for kind in ("pure", "guided", "upper"):
            i, u = r[f"{kind}_i"], r[f"{kind}_u"]
            assert 0 <= i <= r["gt_area"] <= u
            assert r[f"{kind}_iou"] == (i / u if u else 0.0)
        assert r["error"] is None and r["dataset"] == "refcocog" and r["split"] == "val"
        assert r["sentence"] and r["parse"]["noun_phrase"]
        # with ground-truth proposals the referred mask is one of them
        assert r["upper_i"] == r["upper_u"] == r["gt_area"]
        assert r["num_proposals"] >= 1
    assert report["metrics"]["upper"]["mIoU"] == 100.0
    assert report["metrics"]["upper"]["P@0.9"] == 100.0
    # the full split differs from the published count: warned, not fatal
    assert "the published split has 4896" in report["count_warning"]
    assert "published split has 4896" in full_run["stderr"]
    # report.md and stdout carry the table
    md = (out / "report.md").read_text()
    assert "| guided (HybridGL) |" in md and "| upper bound (best proposal) |" in md
    assert "| pure (CLIP only) |" in full_run["stdout"]
    assert json.loads((out / "run.json").read_text())["proposals"] == "gt"


def test_each_image_is_encoded_once(env, full_run):
    seg = full_run["segmenter"]
    records = records_of(full_run["out"])
    n_images = len({r["image_id"] for r in records})
    assert n_images >= 2 and len(records) > n_images
    assert seg.stats["feature_passes"] == n_images
    assert seg.stats["gem_passes"] == n_images
    assert seg.stats["sam_runs"] == 0  # --proposals gt


@pytest.mark.slow
def test_limit_then_resume_equals_one_run(env, single_run):
    out = env["tmp"].mktemp("resume")
    args = refer_args(env, "refcoco", "testA", out)
    rc, stdout, stderr = evaluate(*args, "--limit", "5")
    assert rc == 0, stderr
    part = json.loads((out / "report.json").read_text())
    assert part["counts"]["selected"] == part["counts"]["done"] == 5
    assert part["count_warning"] is None  # no count check on a subset
    assert len(records_of(out)) == 5
    rc, stdout, stderr = evaluate(*args)
    assert rc == 0, stderr
    resumed = json.loads((out / "report.json").read_text())
    single = json.loads((single_run / "report.json").read_text())
    assert resumed["counts"] == single["counts"]
    assert resumed["metrics"] == single["metrics"]
    assert resumed["this_run"]["expressions"] == single["counts"]["done"] - 5
    assert strip_timing(records_of(out)) == strip_timing(records_of(single_run))


@pytest.mark.slow
def test_interrupted_write_resumes(env, single_run):
    out = env["tmp"].mktemp("interrupted")
    shutil.copy(single_run / "run.json", out / "run.json")
    text = (single_run / "predictions.jsonl").read_text()
    # a write cut in the middle of the last record
    (out / "predictions.jsonl").write_text(text[: len(text) - 40])
    args = refer_args(env, "refcoco", "testA", out)
    rc, stdout, stderr = evaluate(*args)
    assert rc == 0, stderr
    assert "dropped 1 incomplete" in stderr
    report = json.loads((out / "report.json").read_text())
    single = json.loads((single_run / "report.json").read_text())
    assert report["this_run"]["expressions"] == 1
    assert report["metrics"] == single["metrics"] and report["counts"] == single["counts"]
    assert strip_timing(records_of(out)) == strip_timing(records_of(single_run))
    # a second rerun has nothing left to do
    rc, _, _ = evaluate(*args)
    assert rc == 0
    assert json.loads((out / "report.json").read_text())["this_run"]["expressions"] == 0


def test_other_settings_in_the_same_folder_are_refused(env, full_run):
    rc, stdout, stderr = evaluate(
        *refer_args(env, "refcocog", "val", full_run["out"]), "--no-guidance"
    )
    assert rc == 3
    assert "holds a run with other settings (guidance" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_bad_data_is_counted_and_the_run_continues(env):
    root = env["tmp"].mktemp("bad")
    build_refer_fixture(root, ("refcocog",))
    refs = pickle.loads((root / "refcocog" / "refs(umd).p").read_bytes())
    val = [r for r in refs if r["split"] == "val"]
    per_image: dict[int, int] = {}
    for r in val:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    kept = max(per_image, key=lambda k: per_image[k])  # the image with the most refs
    missing = next(k for k in per_image if k != kept)
    (root / "images/mscoco/images/train2014" / f"COCO_train2014_{missing:012d}.jpg").unlink()
    on_kept = [r for r in val if r["image_id"] == kept]
    assert len(on_kept) >= 3
    on_kept[0]["ann_id"] = 999_999_999  # unknown annotation
    lost = on_kept[-1]  # the last ref of the file, cut off by the truncation
    ordered = [r for r in refs if r is not lost] + [lost]
    blob = pickle.dumps(ordered, protocol=2)
    (root / "refcocog" / "refs(umd).p").write_bytes(blob[: len(blob) - 30])

    out = env["tmp"].mktemp("bad-out")
    rc, stdout, stderr = evaluate(
        "--data-root", str(root), "--dataset", "refcocog", "--split", "val",
        "--proposals", "gt", "--out", str(out),
    )  # fmt: skip
    assert rc == 5, stderr
    assert "Traceback" not in stderr
    report = json.loads((out / "report.json").read_text())
    n_missing = sum(len(r["sentences"]) for r in val if r["image_id"] == missing)
    n_unknown = len(on_kept[0]["sentences"])
    n_total = sum(len(r["sentences"]) for r in val) - len(lost["sentences"])
    c = report["counts"]
    assert c["selected"] == n_total
    assert report["errors_by_kind"] == {"missing_image": n_missing, "unknown_ann": n_unknown}
    assert c["failed"] == n_missing + n_unknown
    assert c["done"] == n_total - n_missing - n_unknown > 0
    assert any("truncated or corrupt" in p for p in report["data_problems"])
    records = records_of(out)
    assert len(records) == n_total
    failed = [r for r in records if r["error"]]
    assert {r["error_kind"] for r in failed} == {"missing_image", "unknown_ann"}
    assert all("missing image" in r["error"] for r in failed if r["error_kind"] == "missing_image")
    assert all("999999999" in r["error"] for r in failed if r["error_kind"] == "unknown_ann")
    same_metrics(report["metrics"], recompute(records))
    md = (out / "report.md").read_text()
    assert "## Failed expressions" in md and "## Data problems" in md


@pytest.mark.slow
def test_sam_proposals_run_with_limit(env):
    out = env["tmp"].mktemp("sam")
    rc, stdout, stderr = evaluate(
        "--data-root", str(env["root"]), "--dataset", "refcoco", "--split", "testB",
        "--proposals", "sam", "--sam", "vit_b", "--limit", "2", "--out", str(out),
    )  # fmt: skip
    assert rc == 0, stderr
    report = json.loads((out / "report.json").read_text())
    records = records_of(out)
    assert report["counts"]["done"] == len(records) == 2
    assert report["model"]["sam"] == "vit_b"
    assert env["built"].segmenters[-1].stats["sam_runs"] == 1  # both on one image
    for r in records:
        for kind in ("pure", "guided", "upper"):
            assert r[f"{kind}_u"] >= r["gt_area"] > 0
            assert r[f"{kind}_iou"] == (r[f"{kind}_i"] / r[f"{kind}_u"])
        if r["num_proposals"] == 0:  # random SAM may find nothing: an empty prediction
            assert r["guided_i"] == 0 and r["upper_index"] is None and r["found"] is False
    same_metrics(report["metrics"], recompute(records))


@pytest.mark.slow
def test_generic_format(env):
    src = env["root"] / "refcoco" / "instances.json"
    inst = json.loads(src.read_text())
    image = inst["images"][0]
    anns = [a for a in inst["annotations"] if a["image_id"] == image["id"]][:2]
    d = env["tmp"].mktemp("generic")
    (d / "instances.json").write_text(json.dumps(inst))
    rows = [
        {"image_id": image["id"], "ann_id": anns[0]["id"], "expression": "the left one"},
        {"image_id": image["id"], "ann_id": anns[1]["id"], "expression": "the big thing"},
        {"image_id": image["id"], "ann_id": 424242, "expression": "ghost"},
    ]
    lines = [json.dumps(r) for r in rows] + ['{"image_id": 1, "ann']
    (d / "expr.jsonl").write_text("\n".join(lines) + "\n")
    out = d / "out"
    rc, stdout, stderr = evaluate(
        "--format", "generic", "--instances", str(d / "instances.json"),
        "--expressions", str(d / "expr.jsonl"),
        "--images", str(env["root"] / "images/mscoco/images/train2014"),
        "--proposals", "gt", "--out", str(out), "--dataset", "mine",
    )  # fmt: skip
    assert rc == 5, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "generic" and report["dataset"] == "mine"
    assert report["counts"]["done"] == 2 and report["counts"]["failed"] == 2
    assert report["errors_by_kind"] == {"bad_record": 1, "unknown_ann": 1}
    records = records_of(out)
    assert [r["sent_id"] for r in records] == [3, 4, 1, 2]  # failed rows are written first
    assert all(r["upper_iou"] == 1.0 for r in records if not r["error"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "refcocog", "--split", "testA"], "refcocog (umd) has no split 'testA'"),
        (["--dataset", "refcoco", "--split", "test"], "refcoco (unc) has no split 'test'"),
        (["--dataset", "refclef", "--split", "val"], "unknown dataset 'refclef'"),
    ],
)
def test_invalid_dataset_split_exit_3(env, argv, message):
    rc, stdout, stderr = evaluate("--data-root", str(env["root"]), *argv)
    assert rc == 3
    assert message in stderr and "Traceback" not in stderr


def test_missing_data_exit_3(env, tmp_path):
    rc, _, stderr = evaluate(
        "--data-root", str(tmp_path / "none"), "--dataset", "refcoco", "--split", "val"
    )
    assert rc == 3 and "data root not found" in stderr
    (tmp_path / "refcoco").mkdir()
    rc, _, stderr = evaluate("--data-root", str(tmp_path), "--dataset", "refcoco", "--split", "val")
    assert rc == 3 and "refs file not found" in stderr and "refs(unc).p" in stderr
    rc, _, stderr = evaluate("--format", "generic", "--instances", str(tmp_path / "x.json"))
    assert rc == 2 and "needs --instances and --expressions" in stderr  # a missing option
    assert "Traceback" not in stderr


def test_recompute_helper_is_sound():
    recs = [dict(error=None, pure_i=1, pure_u=4, guided_i=3, guided_u=3, upper_i=3, upper_u=3)]
    got = recompute(recs)
    assert got["pure"]["mIoU"] == 25.0 and math.isclose(got["guided"]["oIoU"], 100.0)


class _Payload:
    """Unpickling this runs ``os.system(touch TARGET)``: a crafted refs file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("truncate", [False, True])
def test_a_refs_pickle_that_would_run_code_is_refused(env, tmp_path, truncate):
    root = tmp_path / "evil"
    (root / "refcoco").mkdir(parents=True)
    shutil.copy(env["root"] / "refcoco" / "instances.json", root / "refcoco" / "instances.json")
    target = tmp_path / "pwned"
    refs = pickle.loads((env["root"] / "refcoco" / "refs(unc).p").read_bytes())
    blob = pickle.dumps([_Payload(target), *refs], protocol=2)
    if truncate:  # the salvage path must not unpickle the bytes a second time
        blob = blob[: len(blob) - 30]
    path = root / "refcoco" / "refs(unc).p"
    path.write_bytes(blob)
    n_built = len(env["built"].segmenters)
    rc, stdout, stderr = evaluate(
        "--data-root", str(root), "--dataset", "refcoco", "--split", "val", "--proposals", "gt",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert rc == 3, stderr
    assert not target.exists()
    assert str(path) in stderr and "system" in stderr and "could run code" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert len(env["built"].segmenters) == n_built  # refused before any model loads


def test_a_refs_file_without_usable_refs_fails_before_loading_models(env, tmp_path):
    root = tmp_path / "empty"
    (root / "refcoco").mkdir(parents=True)
    shutil.copy(env["root"] / "refcoco" / "instances.json", root / "refcoco" / "instances.json")
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1}], protocol=2))
    n_built = len(env["built"].segmenters)
    rc, _, stderr = evaluate(
        "--data-root", str(root), "--dataset", "refcoco", "--split", "val", "--proposals", "gt",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert rc == 3, stderr
    assert "no usable referring expression" in stderr and "refs(unc).p" in stderr
    assert len(env["built"].segmenters) == n_built


@pytest.mark.slow
def test_a_suite_encodes_each_shared_image_once(env):
    """RefCOCO and RefCOCO+ val in one run: the segmenter's own counters show one
    encoding per distinct image, fewer than the splits' images added up."""
    out = env["tmp"].mktemp("suite")
    rc, stdout, stderr = evaluate(
        "--data-root", str(env["root"]), "--dataset", "refcoco,refcoco+", "--split", "val",
        "--proposals", "gt", "--out", str(out),
    )  # fmt: skip
    assert rc == 0, stderr
    report = json.loads((out / "report.json").read_text())
    seg = env["built"].segmenters[-1]
    per_split = sum(r["counts"]["images"] for r in report["splits"].values())
    encoded = report["this_run"]["images_encoded"]
    assert seg.stats["feature_passes"] == seg.stats["gem_passes"] == encoded
    assert encoded == report["counts"]["images"] < per_split
    for name, rep in report["splits"].items():
        ds, split = name.split("/")
        mine = [r for r in records_of(out) if r["dataset"] == ds]
        assert rep["counts"]["done"] == len(mine) > 0 and rep["split"] == split
        same_metrics(rep["metrics"], recompute(mine))
    assert "| refcoco/val | refcoco+/val |" in stdout
    assert "published" in (out / "report.md").read_text()


def test_suite_and_split_options():
    from hybridgl.cli.evaluate import _pairs

    pairs = _pairs("refcoco,refcoco+,refcocog", "all")
    assert len(pairs) == 8 and pairs[0] == ("refcoco", "val") and pairs[-1] == ("refcocog", "test")
    assert _pairs("refcocog", "val,test") == [("refcocog", "val"), ("refcocog", "test")]
    rc, _, stderr = evaluate("--suite", "paper", "--dataset", "refcoco")
    assert rc == 2 and "--suite replaces" in stderr


def test_oracle_proposals_are_compared_at_the_input_resolution(tmp_path):
    """A segmenter whose working resolution (max_side=64) is below the image's gives
    records, not "proposals have shape" failures: proposals are brought back to the
    input size, where the ground truth is."""
    import numpy as np
    from PIL import Image

    from hybridgl import Segmenter
    from hybridgl.eval.task import evaluate_unit
    from hybridgl.jobs.units import UnitWorker, WorkUnit

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
        seg = Segmenter.from_pretrained(sam=None, device="cpu", max_side=64)
    path = tmp_path / "img.png"
    pixels = np.random.default_rng(1).integers(0, 255, size=(96, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    left = {"segmentation": [[0, 0, 80, 0, 80, 96, 0, 96]], "area": 7680.0}
    right = {"segmentation": [[80, 0, 160, 0, 160, 96, 80, 96]], "area": 7680.0}
    row = {"dataset": "t", "split": "val", "image_id": 1, "ref_id": 1, "ann_id": 11,
           "sent_id": 1, "sentence": "the left half"}  # fmt: skip
    unit = WorkUnit(
        key=str(path),
        rows=[row],
        data={
            "image_path": str(path),
            "size": [96, 160],
            "image_ann_ids": [11, 12],
            "anns": [[11, left], [12, right]],
        },  # fmt: skip
    )
    (rec,) = evaluate_unit(UnitWorker(None, lambda: seg), unit, proposals="gt")
    assert rec["error"] is None, rec["error"]
    # the oracle picks the ground truth itself: IoU 1 at the input resolution
    assert rec["upper_i"] == rec["upper_u"] == 80 * 96
