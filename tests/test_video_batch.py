"""Many videos as work units (``hybridgl track --list``): one video per unit, its own folder,
one summary record per video, resumable, the same results on the local and the Ray engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from video_support import coco_clip, write_clip  # noqa: E402

from hybridgl.cli.main import main  # noqa: E402

pytestmark = pytest.mark.slow  # tiny models through the real command: seconds per test

ARGS = ["--reground-every", "2", "--device", "cpu", "--no-progress"]
VOLATILE = ("timings", "seconds")


@pytest.fixture
def tiny_env(monkeypatch, shared_tiny_segmenters):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")


@pytest.fixture(scope="module")
def work_list(coco_val, tmp_path_factory):
    """Two frame-folder clips (3 and 4 frames), a missing video and a bad row, as JSONL."""
    root = tmp_path_factory.mktemp("videos")
    a, _ = coco_clip(coco_val, 3, size=(48, 64), motion="pan")
    b, _ = coco_clip(coco_val, 4, size=(48, 64), motion="leave")
    write_clip(a, root / "clip_a")
    write_clip(b, root / "clip_b")
    rows = [
        {"video": "clip_a", "expressions": ["the thing", "the other"], "id": "a"},
        {"video": "clip_b", "expression": "the thing"},
        {"video": "nowhere", "expression": "x", "id": "gone"},
        {"video": "clip_a", "expressions": "not a list", "id": "bad"},
    ]
    path = root / "videos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines() if t.strip()]


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in lines(path)}


def test_read_rows_groups_by_id_and_keeps_bad_rows(tmp_path):
    from hybridgl.errors import InputError
    from hybridgl.jobs.video_batch import read_video_rows

    csv_path = tmp_path / "v.csv"
    csv_path.write_text("video,expression,id\nv.mp4,the dog,\nv.mp4,the cat,\nw.mp4,,w\n"
                        "u.mp4,a,v.mp4\n")  # fmt: skip
    rows = read_video_rows(csv_path)
    assert [(r.id, r.video, r.expressions, bool(r.error)) for r in rows] == [
        ("v.mp4", "v.mp4", ["the dog", "the cat"], False),
        ("w", "w.mp4", [], True),  # no expression
        ("line:5", "u.mp4", ["a"], True),  # id names another video
    ]
    with pytest.raises(InputError, match="video column"):
        (tmp_path / "h.csv").write_text("image,expression\nx,y\n")
        read_video_rows(tmp_path / "h.csv")
    with pytest.raises(InputError, match="not found"):
        read_video_rows(tmp_path / "missing.jsonl")


def test_list_runs_each_video_into_its_folder_and_resumes(tiny_env, work_list, tmp_path):
    out = tmp_path / "run"
    argv = ["track", "--list", str(work_list), "--out", str(out), "--davis", *ARGS]
    assert main(argv) == 5  # some videos failed; the others are done
    recs = by_id(out / "results.jsonl")
    assert set(recs) == {"a", "clip_b", "gone", "bad"}
    assert recs["gone"]["error_kind"] == "missing_video"
    assert recs["bad"]["error_kind"] == "bad_record"
    a = recs["a"]
    assert (a["frames"], a["expressions"], a["out"]) == (3, ["the thing", "the other"], "videos/a")
    assert sum(a["states"].values()) == 3 * 2
    assert recs["clip_b"]["frames"] == 4
    # each video's folder holds exactly what `hybridgl track` writes for that video alone
    single = tmp_path / "single"
    assert main(["track", str(work_list.parent / "clip_a"), "the thing", "the other",
                 "--out", str(single), *ARGS]) == 0  # fmt: skip
    folder = out / a["out"]
    assert stable(lines(folder / "frames.jsonl")) == stable(lines(single / "frames.jsonl"))
    assert len(list((folder / "davis").iterdir())) == 3
    # a rerun does not redo a finished video (only the failed rows are tried again)
    before = (folder / "frames.jsonl").read_text()
    assert main(argv) == 5
    assert (folder / "frames.jsonl").read_text() == before
    ids = [r["id"] for r in lines(out / "results.jsonl")]
    assert ids.count("a") == 1 and ids.count("clip_b") == 1 and ids.count("gone") == 2
    # other tracker options in the same folder: refused, naming the option (exit 3)
    other = [*argv[:-5], "--reground-every", "3", *ARGS[2:]]
    assert main(other) == 3


def test_list_usage_errors(tiny_env, work_list, tmp_path):
    out = str(tmp_path / "x")
    assert main(["track", "--out", out, *ARGS]) == 2  # neither a video nor --list
    assert main(["track", "v.mp4", "x", "--list", str(work_list), "--out", out, *ARGS]) == 2
    assert main(["track", "v.mp4", "x", "--engine", "ray", "--out", out, *ARGS]) == 2
    assert main(["track", "--list", str(tmp_path / "none.jsonl"), "--out", out, *ARGS]) == 3


def test_ray_engine_gives_the_same_results(ray_cluster, tiny_env, work_list, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    argv = ["track", "--list", str(work_list), "--threads-per-worker", "1", *ARGS]
    assert main([*argv, "--out", str(local)]) == 5
    assert main([*argv, "--out", str(remote), "--engine", "ray", "--ray-address", ray_cluster,
                 "--workers", "1"]) == 5  # fmt: skip
    assert by_id(remote / "results.jsonl") == by_id(local / "results.jsonl")
    for vid in ("a", "clip_b"):
        out = by_id(local / "results.jsonl")[vid]["out"]
        there, here = (
            stable(lines(remote / out / "frames.jsonl")),
            stable(lines(local / out / "frames.jsonl")),
        )
        diff = [
            (i, k, x[k], y.get(k))
            for i, (x, y) in enumerate(zip(there, here, strict=True))
            for k in x
            if x[k] != y.get(k)
        ]
        assert not diff
