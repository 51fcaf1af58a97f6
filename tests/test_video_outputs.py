"""The video method end to end on tiny random models (mechanics, not accuracy): records in
the one record shape, stream input equals file input, and every output decodes to the right
number and size of frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("transformers")

from video_support import coco_clip, write_clip  # noqa: E402

from hybridgl.schemas import validate  # noqa: E402
from hybridgl.video.method import STATES, VideoSegmenter  # noqa: E402
from hybridgl.video.outputs import (  # noqa: E402
    write_davis_pngs,
    write_overlay,
    write_youtube_vis,
)
from hybridgl.video.sources import open_source  # noqa: E402

N, SIZE = 5, (72, 96)
PHRASES = ["the biggest thing", "the left one"]

# tiny models, but SAM, CLIP and the tracker on every re-grounded frame: seconds per test
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video_run(coco_val, tiny_segmenter, tmp_path_factory):
    from hybridgl.video.hf_trackers import build_tracker

    frames, _ = coco_clip(coco_val, N, size=SIZE, motion="pan")
    path = write_clip(frames, tmp_path_factory.mktemp("v") / "clip.mp4")
    tracker = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=1, device="cpu")
    vs = VideoSegmenter(tiny_segmenter, tracker, reground_every=3)
    results = list(vs.track(path, PHRASES))
    return vs, path, results


def _strip(records):
    return [{k: v for k, v in r.items() if k != "timings"} for r in records]


def test_results_and_records(video_run):
    _, _, results = video_run
    assert [r.frame for r in results] == list(range(N))
    for r in results:
        assert (r.height, r.width) == SIZE and len(r.objects) == 2
        for o in r.objects:
            assert o.state in STATES and o.mask.shape == SIZE
            assert o.present == (o.state != "absent")
            assert o.present or not o.mask.any()
        for rec in r.to_records():
            validate(rec)  # the one record shape, video keys added
            assert rec["frame"] == r.frame and rec["object_id"] in (1, 2)
            assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    first = {o.state for o in results[0].objects}
    assert first <= {"keyframe", "absent"}
    # frame 3 was re-grounded: never plain-tracked without a check
    for r in (results[3],):
        assert all(o.state != "tracked" or o.checked for o in r.objects)


def test_stream_input_equals_file_input(video_run):
    vs, path, results = video_run
    decoded = [f.image for f in open_source(path).frames()]
    again = list(vs.track(iter(decoded), PHRASES))
    a = [rec for r in results for rec in r.to_records()]
    b = [rec for r in again for rec in r.to_records()]
    assert _strip(a) == _strip([{**rec, "time": x["time"]} for rec, x in zip(b, a, strict=True)])


def test_outputs_decode_to_the_right_frames(video_run, tmp_path):
    from PIL import Image

    _, path, results = video_run
    records = [rec for r in results for rec in r.to_records()]
    davis = write_davis_pngs(records, tmp_path / "davis")
    pngs = sorted(davis.iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(N)]
    for p, r in zip(pngs, results, strict=True):
        img = Image.open(p)
        assert img.mode == "P" and img.size == (SIZE[1], SIZE[0])
        labels = np.asarray(img)
        for o in r.objects:  # every object's pixels carry its id unless a later one covers them
            later = np.zeros(SIZE, bool)
            for q in r.objects:
                if q.object_id > o.object_id:
                    later |= q.mask
            assert np.all(labels[o.mask & ~later] == o.object_id)
    vis = json.loads(write_youtube_vis(records, tmp_path / "vis.json").read_text())
    assert [v["object_id"] for v in vis] == [1, 2]
    assert all(len(v["segmentations"]) == N for v in vis)
    overlay = write_overlay(path, records, tmp_path / "overlay.mp4")
    frames = list(open_source(overlay).frames())
    assert len(frames) == N and frames[0].image.shape == (*SIZE, 3)


def test_to_supervision_has_tracker_ids(video_run):
    pytest.importorskip("supervision")
    _, _, results = video_run
    for r in results:
        det = r.to_supervision()
        present = [o.object_id for o in r.objects if o.present and o.mask.any()]
        assert list(det.tracker_id if len(det) else []) == present
        if len(det):
            assert det.mask.shape == (len(present), *SIZE)


def test_segmenter_track_is_the_video_segmenter(video_run, tiny_segmenter):
    vs, path, results = video_run
    again = list(tiny_segmenter.track(path, PHRASES, tracker=vs.tracker, reground_every=3))
    a = [rec for r in results for rec in r.to_records()]
    b = [rec for r in again for rec in r.to_records()]
    assert _strip(a) == _strip(b)
