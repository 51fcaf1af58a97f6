"""``hybridgl evaluate`` on the referring video datasets, on fixtures built from coco-mini in
the published layouts (Ref-DAVIS17, Ref-YouTube-VOS valid without truth, MeViS valid_u)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridgl.jobs.video_eval import build_video_report, video_report_markdown

N = 3
ARGS = ["--reground-every", "2", "--device", "cpu", "--quiet", "--threads-per-worker", "1"]


def test_report_means_and_absence_rates_by_hand():
    recs = [
        {"id": "v/0", "J": 0.5, "F": 0.7, "J&F": 0.6, "frames": 4, "present_frames": 3,
         "absent_when_present": 1, "present_when_absent": 0},
        {"id": "v/1", "J": 1.0, "F": 0.9, "J&F": 0.95, "frames": 2, "present_frames": 0,
         "absent_when_present": 0, "present_when_absent": 1},
        {"id": "w/0", "error": "x", "error_kind": "bad_video"},
    ]  # fmt: skip
    rep = build_video_report(recs, {"dataset": "ref-davis17", "split": "valid"}, 4)
    m = rep["metrics"]
    assert (m["J"], m["F"], m["J&F"]) == pytest.approx((0.75, 0.8, 0.775))
    assert m["absent_when_present_rate"] == pytest.approx(1 / 3)  # 1 of 3 present frames
    assert m["present_when_absent_rate"] == pytest.approx(1 / 3)  # 1 of 1 + 2 absent frames
    assert rep["counts"] == {"selected": 4, "done": 2, "scored": 2, "submitted": 0,
                             "failed": 1, "pending": 1}  # fmt: skip
    text = video_report_markdown(rep)
    assert "| 75.0 | 80.0 | 77.5 | 33.3 | 33.3 | 6 |" in text
    assert "74.2" in text and "arXiv:2408.15876" in text  # the published figure, sourced


def _palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0] + [0] * (254 * 3))
    im.save(path)


def build_datasets(root: Path, frames, masks) -> Path:
    """The three layouts, one video ``v1`` with two expressions each."""
    names = [f"{5 * i:05d}" for i in range(len(frames))]
    exps = {"0": {"exp": "the thing", "obj_id": 1}, "1": {"exp": "the other one", "obj_id": 1}}
    for ds, split, truth in (("davis", "valid", True), ("ytvos", "valid", False)):
        base = root / ds
        (base / "meta_expressions" / split).mkdir(parents=True)
        meta = {"videos": {"v1": {"frames": names, "expressions": exps}}}
        (base / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps(meta))
        (base / split / "JPEGImages" / "v1").mkdir(parents=True)
        if truth:
            (base / split / "Annotations" / "v1").mkdir(parents=True)
        for n, f, m in zip(names, frames, masks, strict=True):
            Image.fromarray(f).save(base / split / "JPEGImages" / "v1" / f"{n}.jpg")
            if truth:
                _palette_png(m, base / split / "Annotations" / "v1" / f"{n}.png")
    from hybridgl.masks import mask_to_rle

    split = root / "mevis" / "valid_u"
    (split / "JPEGImages" / "v1").mkdir(parents=True)
    for n, f in zip(names, frames, strict=True):
        Image.fromarray(f).save(split / "JPEGImages" / "v1" / f"{n}.jpg")
    meta = {"videos": {"v1": {"frames": names, "expressions": {
        "0": {"exp": "the thing", "obj_id": [0], "anno_id": [7]}}}}}  # fmt: skip
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    rles = [mask_to_rle(m) if m.any() else None for m in masks]
    (split / "mask_dict.json").write_text(json.dumps({"7": rles}))
    return root


@pytest.fixture(scope="module")
def datasets(coco_val, tmp_path_factory):
    pytest.importorskip("transformers")
    from video_support import coco_clip

    frames, masks = coco_clip(coco_val, N, size=(48, 64), motion="leave")
    return build_datasets(tmp_path_factory.mktemp("vdata"), frames, masks)


@pytest.fixture
def tiny_env(monkeypatch, shared_tiny_segmenters):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines() if t.strip()]


def stable(path: Path) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k != "seconds"} for r in lines(path)}


@pytest.mark.slow
def test_ref_davis17_scores_every_expression_and_resumes(tiny_env, datasets, tmp_path):
    from hybridgl.cli.main import main
    from hybridgl.segmenter import Segmenter
    from hybridgl.spec import ModelSpec
    from hybridgl.video.datasets import evaluate_expression, load
    from hybridgl.video.hf_trackers import build_tracker
    from hybridgl.video.method import VideoSegmenter

    out = tmp_path / "e"
    argv = ["evaluate", "--dataset", "ref-davis17", "--data-root", str(datasets / "davis"),
            "--split", "valid", "--out", str(out), *ARGS]  # fmt: skip
    assert main(argv) == 0
    recs = stable(out / "predictions.jsonl")
    assert set(recs) == {"v1/0", "v1/1"}
    # the job's figures are those of the video method run directly on the same models
    video = VideoSegmenter(Segmenter.from_spec(ModelSpec()),
                           build_tracker("sam2.1_hiera_tiny", device="cpu"), reground_every=2)  # fmt: skip
    for sample in load("ref-davis17", datasets / "davis", "valid"):
        direct = evaluate_expression(video, sample)
        got = recs[f"v1/{sample.expression_id}"]
        assert {k: got[k] for k in direct} == direct
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["J&F"] == pytest.approx(np.mean([r["J&F"] for r in recs.values()]))
    assert "AL-Ref-SAM 2" in (out / "report.md").read_text()
    assert main(argv) == 0  # resumed: nothing to do, nothing written twice
    assert len(lines(out / "predictions.jsonl")) == 2
    other = [*argv, "--reground-every", "3"]
    assert main(other) == 3  # another run in the same folder


@pytest.mark.slow
def test_ytvos_valid_writes_the_submission_and_mevis_scores_unions(tiny_env, datasets, tmp_path):
    from hybridgl.cli.main import main

    out = tmp_path / "yt"
    assert main(["evaluate", "--dataset", "ref-ytvos", "--data-root", str(datasets / "ytvos"),
                 "--split", "valid", "--out", str(out), *ARGS]) == 0  # fmt: skip
    with zipfile.ZipFile(out / "submission.zip") as z:
        names = sorted(z.namelist())
    assert names == sorted(f"Annotations/v1/{e}/{5 * i:05d}.png" for e in "01" for i in range(N))
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["submitted"] == 2 and report["metrics"]["J&F"] is None
    assert "withheld" in (out / "report.md").read_text()
    out = tmp_path / "mv"
    assert main(["evaluate", "--dataset", "mevis", "--data-root", str(datasets / "mevis"),
                 "--split", "valid_u", "--out", str(out), *ARGS]) == 0  # fmt: skip
    [rec] = lines(out / "predictions.jsonl")
    assert rec["frames"] == N and 0.0 <= rec["J&F"] <= 1.0
    assert main(["evaluate", "--dataset", "mevis", "--data-root", str(tmp_path),
                 "--split", "valid_u", "--out", str(tmp_path / "z"), *ARGS]) == 3  # fmt: skip


def test_a_frames_answer_is_the_union_of_its_targets() -> None:
    """With many/auto a phrase can have several tracked objects (or none): the frame's
    prediction is their union, present when any is (MeViS's truth is a union too)."""
    from hybridgl.video.datasets import _union
    from hybridgl.video.results import FrameResult, ObjectResult

    a, b = np.zeros((3, 4), bool), np.zeros((3, 4), bool)
    a[0, :2], b[2, 3] = True, True
    objs = [ObjectResult(1, "x", "tracked", True, a), ObjectResult(2, "x", "absent", False, b)]
    mask, present = _union(FrameResult(0, 0, None, 3, 4, objs))
    assert mask.sum() == 3 and mask[0, :2].all() and mask[2, 3] and present
    mask, present = _union(FrameResult(0, 0, None, 3, 4, objs[1:]))
    assert mask.sum() == 1 and not present
    mask, present = _union(FrameResult(0, 0, None, 3, 4, []))  # the phrase named nothing
    assert mask.shape == (3, 4) and not mask.any() and not present


@pytest.mark.slow
def test_mevis_with_many_targets_scores_the_union_and_resumes_only_as_many(
    tiny_env, datasets, tmp_path
):
    from hybridgl.cli.main import main
    from hybridgl.segmenter import Segmenter
    from hybridgl.spec import ModelSpec
    from hybridgl.video.datasets import evaluate_expression, load
    from hybridgl.video.hf_trackers import build_tracker
    from hybridgl.video.method import VideoSegmenter

    root, out = datasets / "mevis", tmp_path / "mv"
    argv = ["evaluate", "--dataset", "mevis", "--data-root", str(root), "--split", "valid_u",
            "--out", str(out), "--targets", "many", *ARGS]  # fmt: skip
    assert main(argv) == 0
    [rec] = lines(out / "predictions.jsonl")
    video = VideoSegmenter(Segmenter.from_spec(ModelSpec()),
                           build_tracker("sam2.1_hiera_tiny", device="cpu"), reground_every=2,
                           targets="many")  # fmt: skip
    [sample] = load("mevis", root, "valid_u")
    direct = evaluate_expression(video, sample, json.loads(sample.mask_dict.read_text()))
    assert {k: rec[k] for k in direct} == direct
    assert main([*argv[: -len(ARGS) - 2], "--targets", "one", *ARGS]) == 3  # other targets
    bad = tmp_path / "bad.json"
    bad.write_text('{"floor": "low"}')
    assert main([*argv, "--thresholds", str(bad), "--out", str(tmp_path / "b")]) == 3


@pytest.mark.slow
def test_ray_engine_gives_the_same_records(ray_cluster, tiny_env, datasets, tmp_path):
    from hybridgl.cli.main import main

    argv = ["evaluate", "--dataset", "ref-davis17", "--data-root", str(datasets / "davis"),
            "--split", "valid", *ARGS]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--engine", "ray",
                 "--ray-address", ray_cluster, "--workers", "1"]) == 0  # fmt: skip
    assert stable(tmp_path / "ray" / "predictions.jsonl") == stable(
        tmp_path / "local" / "predictions.jsonl"
    )
