"""``hybridgl track``: outputs, exit codes, and resuming an interrupted run exactly."""

from __future__ import annotations

import json
from collections import Counter

import pytest

pytest.importorskip("av")
pytest.importorskip("transformers")

from video_support import coco_clip, write_clip  # noqa: E402

from hybridgl.cli.main import main  # noqa: E402

N = 4
pytestmark = pytest.mark.slow  # tiny models through the real command: seconds per test


@pytest.fixture
def tiny_env(monkeypatch, shared_tiny_segmenters):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")


@pytest.fixture(scope="module")
def clip_path(coco_val, tmp_path_factory):
    frames, _ = coco_clip(coco_val, N, size=(72, 96), motion="leave")
    return write_clip(frames, tmp_path_factory.mktemp("clip") / "clip.mp4")


ARGS = ["--reground-every", "2", "--device", "cpu", "--no-progress"]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_track_writes_every_output(tiny_env, clip_path, tmp_path, capsys):
    from hybridgl.video.sources import open_source

    out = tmp_path / "run"
    code = main(["track", str(clip_path), "the thing", "the other", "--out", str(out),
                 "--davis", "--vis", "--overlay", str(tmp_path / "o.mp4"), *ARGS])  # fmt: skip
    assert code == 0
    recs = _lines(out / "frames.jsonl")
    assert sorted((r["frame"], r["object_id"]) for r in recs) == [
        (f, o) for f in range(N) for o in (1, 2)
    ]
    assert len(list((out / "davis").iterdir())) == N
    vis = json.loads((out / "results_vis.json").read_text())
    assert [len(v["segmentations"]) for v in vis] == [N, N]
    assert len(list(open_source(tmp_path / "o.mp4").frames())) == N
    assert json.loads((out / "run.json").read_text())["complete"] is True
    assert f"{N} frames, 2 phrase(s)" in capsys.readouterr().out


def test_interrupted_run_resumes_without_doing_a_frame_twice(
    tiny_env, clip_path, tmp_path, monkeypatch
):
    from hybridgl.video.hf_trackers import HFVideoTracker

    out = tmp_path / "run"
    real_step = HFVideoTracker.step
    calls = {"n": 0}

    def dying_step(self, image, seeds=None):
        calls["n"] += 1
        if calls["n"] == 4:  # frames 0, 1, 2 done; killed on frame 3
            raise KeyboardInterrupt
        return real_step(self, image, seeds)

    monkeypatch.setattr(HFVideoTracker, "step", dying_step)
    argv = ["track", str(clip_path), "the thing", "--out", str(out), *ARGS]
    assert main(argv) == 130
    first = _lines(out / "frames.jsonl")
    assert [r["frame"] for r in first] == [0, 1, 2]
    monkeypatch.setattr(HFVideoTracker, "step", real_step)
    assert main(argv) == 0
    recs = _lines(out / "frames.jsonl")
    assert Counter(r["frame"] for r in recs) == Counter(range(N))  # each frame exactly once
    assert recs[:3] == first  # nothing before the interruption was rewritten
    assert recs[0]["keyframe"] and not any(r["keyframe"] for r in recs[1:])
    assert main(argv) == 0  # a finished run: nothing to do
    assert len(_lines(out / "frames.jsonl")) == N


def test_exit_codes(tiny_env, clip_path, tmp_path):
    out = str(tmp_path / "run")
    assert main(["track", str(tmp_path / "missing.mp4"), "x", "--out", out, *ARGS]) == 3
    assert main(["track", str(clip_path), " ", "--out", out, *ARGS]) == 3
    assert main(["track", str(clip_path), "x", "--out", out, "--keyframe", "soon"]) == 2
    assert main(["track", str(clip_path), "x", "--out", out, "--tracker", "nope"]) == 2
    assert main(["track", str(clip_path), "x", "--out", out, "--overlay", "o.gif"]) == 2
    assert main(["track", str(clip_path), "x", "--out", out, "--start", "2", "--end", "1"]) == 2
    assert main(["track", str(clip_path), "x", "--out", out, "--max-frames", "2", *ARGS]) == 0
    # the same folder with other phrases is another run
    assert main(["track", str(clip_path), "y", "--out", out, "--max-frames", "2", *ARGS]) == 2
