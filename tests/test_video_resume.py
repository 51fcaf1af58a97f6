"""A killed ``hybridgl track`` resumes exactly: from the checkpointed tracker session (or,
before the first checkpoint, by replaying from the first frame) every record and mask equals
the uninterrupted run's, no frame is written twice and none is lost."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("transformers")

from video_support import coco_clip, write_clip  # noqa: E402

from hybridgl.cli.main import main  # noqa: E402

N = 6
pytestmark = pytest.mark.slow  # tiny models through the real command: seconds per run
ARGS = ["--reground-every", "2", "--device", "cpu", "--no-progress", "--checkpoint-every", "2"]


@pytest.fixture
def tiny_env(monkeypatch, shared_tiny_segmenters):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")


@pytest.fixture(scope="module")
def clip_path(coco_val, tmp_path_factory):
    frames, _ = coco_clip(coco_val, N, size=(48, 64), motion="leave")
    return write_clip(frames, tmp_path_factory.mktemp("clip") / "clip")


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _stable(recs):
    return [{k: v for k, v in r.items() if k != "timings"} for r in recs]


def _run(clip_path, out, kill_at=None, monkeypatch=None):
    from hybridgl.video.hf_trackers import HFVideoTracker

    real = HFVideoTracker.step
    calls = {"n": 0}

    def step(self, image, seeds=None):
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real(self, image, seeds)

    monkeypatch.setattr(HFVideoTracker, "step", step)
    argv = ["track", str(clip_path), "the thing", "the other", "--out", str(out), *ARGS]
    code = main(argv)
    monkeypatch.setattr(HFVideoTracker, "step", real)
    return code, calls["n"]


_WHOLE: dict[str, list] = {}


@pytest.mark.parametrize(("kill_at", "steps_after"), [(5, N - 3), (2, N)])
def test_killed_run_resumes_exactly(tiny_env, clip_path, tmp_path, monkeypatch, kill_at,
                                    steps_after):  # fmt: skip
    """Killed on the tracker step of frame ``kill_at - 1``: frames before it are recorded.
    With kill_at=5 the checkpoint of frame 2 is used (frames 3.. computed again: N - 3
    steps); with kill_at=2 there is no checkpoint yet and the run replays from frame 0."""
    if "whole" not in _WHOLE:  # the uninterrupted run, once for both cases
        code, _ = _run(clip_path, tmp_path / "whole", monkeypatch=monkeypatch)
        assert code == 0
        assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed when complete
        _WHOLE["whole"] = _lines(tmp_path / "whole" / "frames.jsonl")
    whole = _WHOLE["whole"]

    out = tmp_path / "killed"
    assert _run(clip_path, out, kill_at=kill_at, monkeypatch=monkeypatch)[0] == 130
    first = _lines(out / "frames.jsonl")
    assert sorted({r["frame"] for r in first}) == list(range(kill_at - 1))
    assert (out / "checkpoint.pt").exists() == (kill_at > 3)
    code, steps = _run(clip_path, out, monkeypatch=monkeypatch)
    assert code == 0 and steps == steps_after
    recs = _lines(out / "frames.jsonl")
    assert recs[: len(first)] == first  # nothing recorded before was rewritten
    assert Counter((r["frame"], r["object_id"]) for r in recs) == Counter(
        (f, o) for f in range(N) for o in (1, 2)
    )  # each frame and object exactly once
    assert _stable(recs) == _stable(whole)  # masks, states, scores: all identical
    assert any(r["state"] == "regrounded" for r in whole)  # re-seeds happened in between


def test_tracker_state_round_trip_is_exact(tmp_path):
    """get_state -> torch.save -> torch.load(weights_only=True) -> set_state continues the
    session bit for bit (two objects, a re-seed in the saved memory)."""
    import torch

    from hybridgl.video.checkpoint import SessionState, load_checkpoint, save_checkpoint
    from hybridgl.video.hf_trackers import build_tracker

    tracker = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=3, device="cpu")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(7)]
    a = np.zeros((40, 56), bool)
    a[5:20, 5:30] = True
    b = np.zeros((40, 56), bool)
    b[20:35, 30:50] = True
    tracker.reset()
    tracker.step(frames[0], {1: a})
    tracker.step(frames[1], {2: b})
    tracker.step(frames[2])
    tracker.reseed({1: b})
    state = SessionState(2, 2, 0, [(1, True, False), (2, True, False)], tracker.get_state())
    save_checkpoint(tmp_path / "c.pt", state, 0, "run")
    expected = []
    for f in frames[3:]:
        tracker.step(f)
        expected.append(tracker.last_logits.clone())
    assert load_checkpoint(tmp_path / "c.pt", "another run") is None
    loaded, _ = load_checkpoint(tmp_path / "c.pt", "run")
    tracker.reset()
    tracker.set_state(loaded.tracker)
    for f, want in zip(frames[3:], expected, strict=True):
        tracker.step(f)
        assert torch.equal(tracker.last_logits, want)
