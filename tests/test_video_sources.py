"""Frame sources: files, folders, iterators; selection; corrupt and truncated input."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")

from video_support import coco_clip, write_clip  # noqa: E402

from hybridgl.errors import ImageTooLargeError, VideoError  # noqa: E402
from hybridgl.video.sources import (  # noqa: E402
    FrameFolderSource,
    IteratorSource,
    Selection,
    VideoFileSource,
    open_source,
)


@pytest.fixture(scope="module")
def clip(coco_val):
    return coco_clip(coco_val, 12, size=(72, 96), motion="leave")


def test_synthetic_clip_has_known_masks(clip):
    frames, masks = clip
    assert len(frames) == 12 and frames[0].shape == (72, 96, 3)
    areas = [int(m.sum()) for m in masks]
    assert areas[0] > 0 and areas[-1] == areas[0]  # back where it started
    assert min(areas) == 0  # the object left the view in the middle


def test_file_folder_and_stream_agree(clip, tmp_path):
    frames, _ = clip
    video = write_clip(frames, tmp_path / "clip.mp4")
    src = open_source(video)
    assert isinstance(src, VideoFileSource) and src.reopenable
    assert src.frame_count() == 12 and src.fps == pytest.approx(10.0)
    decoded = list(src.frames())
    assert [f.index for f in decoded] == list(range(12))
    assert decoded[3].time == pytest.approx(0.3)
    # lossy, but close to what was written
    assert np.abs(decoded[0].image.astype(int) - frames[0]).mean() < 8
    # the decoded frames fed as a stream give the same frames
    stream = open_source(iter([f.image for f in decoded]), fps=10.0)
    assert isinstance(stream, IteratorSource) and not stream.reopenable
    again = list(stream.frames())
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, decoded, strict=True))
    folder = write_clip(frames, tmp_path / "seq")
    fsrc = open_source(folder)
    assert isinstance(fsrc, FrameFolderSource) and fsrc.frame_count() == 12
    assert len(list(fsrc.frames())) == 12


def test_selection_stride_max_frames_time(clip, tmp_path):
    frames, _ = clip
    video = write_clip(frames, tmp_path / "clip.mp4")
    got = [f.index for f in open_source(video, stride=3).frames()]
    assert got == [0, 3, 6, 9]
    got = [f.index for f in open_source(video, stride=2, max_frames=2).frames()]
    assert got == [0, 2]
    got = [f.index for f in open_source(video, start=0.25, end=0.65).frames()]
    assert got == [3, 4, 5, 6]
    assert open_source(video, stride=5).frame_count() == 3
    with pytest.raises(VideoError, match="time range needs"):
        list(open_source(iter(frames), start=1.0).frames())
    with pytest.raises(ValueError, match="stride"):
        Selection(stride=0)


def test_pixel_cap_applies_before_decoding(clip, tmp_path):
    frames, _ = clip
    video = write_clip(frames, tmp_path / "clip.mp4")
    with pytest.raises(ImageTooLargeError, match="too large"):
        open_source(video, max_pixels=1000)
    with pytest.raises(VideoError, match="frame 0"):
        list(open_source(iter(frames), max_pixels=1000).frames())


def test_truncated_video_names_the_frame_and_keeps_earlier_frames(clip, tmp_path):
    frames, _ = clip
    video = write_clip(frames * 4, tmp_path / "clip.mkv")  # mkv: header first, then frames
    data = video.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    src = open_source(cut)
    seen = []
    with pytest.raises(VideoError) as e:
        for f in src.frames():
            seen.append(f.index)
    assert e.value.frame is not None and e.value.frame == len(seen) and 0 < len(seen) < 48
    assert f"frame {len(seen)}" in str(e.value)


def test_corrupt_frame_in_folder(clip, tmp_path):
    frames, _ = clip
    folder = write_clip(frames[:4], tmp_path / "seq")
    (folder / "00002.jpg").write_bytes(b"not a jpeg")
    seen = []
    with pytest.raises(VideoError, match=r"frame 2 \(00002.jpg\)"):
        for f in open_source(folder).frames():
            seen.append(f.index)
    assert seen == [0, 1]


def test_bad_sources(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="cannot open"):
        open_source(tmp_path / "junk.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="holds no frames"):
        open_source(tmp_path / "empty")
    with pytest.raises(VideoError, match="not a video"):
        open_source(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(VideoError, match="unsupported"):
        open_source(42)
