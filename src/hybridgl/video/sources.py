"""Frame sources: video files, frame folders, Python iterators and cameras, as one stream.

Every source yields :class:`Frame` objects one at a time (never the whole video): the frame's
index in the source, its time in seconds when known, and the picture as ``(H, W, 3)`` uint8
RGB by the rules of :func:`hybridgl.images.load_image` (the pixel cap ``max_pixels`` of the
image path applies to every frame, checked from the container header before decoding where
there is one).

- **Video files** (mp4, webm, mkv, avi, mov, ...) through PyAV (``hybridgl[video]``).
- **Frame folders**: the DAVIS / YouTube-VOS layout, one sequence = one folder of
  ``00000.jpg``, ``00001.jpg``, ... (any ``.jpg``/``.jpeg``/``.png``/``.webp``/``.bmp``,
  sorted by name; other files are ignored).
- **Iterators**: any iterable of arrays, PIL images, image paths or bytes (the robotics case:
  frames arrive one by one; each answer comes back before the next frame is read).
- **Cameras**: ``camera:N`` (or a device path such as ``/dev/video0``) through PyAV's
  capture formats (``v4l2`` on Linux, ``avfoundation`` on macOS, ``dshow`` on Windows).

Selection (:class:`Selection`): a time range ``[start, end)`` in seconds, then every
``stride``-th frame of it, then at most ``max_frames`` frames. Frame indices always count the
source's frames (before the stride), so results of a strided run name the real frames.

A frame that cannot be decoded, a file that ends before the frame count its header declares,
or an unreadable image in a folder raises :class:`~hybridgl.errors.VideoError` naming the frame;
the frames before it have already been yielded (and used by the caller).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError, VideoError
from hybridgl.images import DEFAULT_MAX_PIXELS, check_pixels, load_image

__all__ = [
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "CameraSource",
    "Frame",
    "FrameFolderSource",
    "IteratorSource",
    "Selection",
    "VideoFileSource",
    "VideoSource",
    "open_source",
    "require_av",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def require_av() -> Any:
    """Import PyAV or raise :class:`~hybridgl.errors.MissingExtraError` (an ImportError)
    with the one-line install hint."""
    try:
        import av
    except ImportError:
        from hybridgl.errors import MissingExtraError

        raise MissingExtraError("video files and cameras (PyAV)", "video") from None
    return av


@dataclass(frozen=True)
class Frame:
    """One frame: ``index`` in the source, ``time`` in seconds (None if unknown), ``image``
    ``(H, W, 3)`` uint8 RGB."""

    index: int
    time: float | None
    image: np.ndarray

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class Selection:
    """Which frames of a source are used: ``[start, end)`` seconds, every ``stride``-th,
    at most ``max_frames``. Sources without times (folders and iterators without ``fps``)
    accept no time range."""

    stride: int = 1
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames!r}")
        for name in ("start", "end"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {v!r}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"the time range is empty: end {self.end} <= start {self.start}")

    @property
    def timed(self) -> bool:
        return self.start is not None or self.end is not None

    def apply(self, frames: Iterable[tuple[int, float | None, Any]]) -> Iterator[Any]:
        """Filter ``(index, time, payload)`` triples; stops reading past ``end``/``max_frames``."""
        taken = 0
        first: int | None = None
        for index, time, payload in frames:
            if self.timed:
                if time is None:
                    raise VideoError("a time range needs a source with frame times (fps)", index)
                if self.end is not None and time >= self.end:
                    return
                if self.start is not None and time < self.start:
                    continue
            if first is None:
                first = index
            if (index - first) % self.stride:
                continue
            yield index, time, payload
            taken += 1
            if self.max_frames is not None and taken >= self.max_frames:
                return


class VideoSource:
    """A source of frames. :meth:`frames` streams them; a ``reopenable`` source (a file or
    folder) can be read again from the start (keyframe search, backward pass, overlays)."""

    name: str = "<source>"
    reopenable: bool = False
    fps: float | None = None

    def __init__(self, selection: Selection | None = None, max_pixels: int | None = None) -> None:
        self.selection = selection or Selection()
        self.max_pixels = max_pixels

    def _raw(self) -> Iterator[tuple[int, float | None, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, index: int, payload: Any) -> np.ndarray:
        """The payload of a selected frame as ``(H, W, 3)`` uint8 (decoded only if selected)."""
        try:
            return load_image(payload, max_pixels=self.max_pixels)
        except ImageError as e:
            raise VideoError(f"{self.name}: frame {index}: {e}", index) from None

    def frames(self) -> Generator[Frame, None, None]:
        """The selected frames, one at a time (flat memory)."""
        for index, time, payload in self.selection.apply(self._raw()):
            yield Frame(index, time, self._decode(index, payload))

    def frame_count(self) -> int | None:
        """How many frames :meth:`frames` yields, when known without decoding them."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "fps": self.fps, "frames": self.frame_count()}


class FrameFolderSource(VideoSource):
    """A folder of frames (DAVIS / YouTube-VOS ``JPEGImages/<sequence>/00000.jpg`` layout)."""

    reopenable = True

    def __init__(
        self,
        folder: str | os.PathLike,
        selection: Selection | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        fps: float | None = None,
    ) -> None:
        super().__init__(selection, max_pixels)
        self.folder = Path(folder)
        self.name = str(self.folder)
        self.fps = fps
        if not self.folder.is_dir():
            raise VideoError(f"frame folder not found: {self.folder}")
        self.files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()
        )
        if not self.files:
            raise VideoError(f"{self.folder} holds no frames ({', '.join(FRAME_EXTENSIONS)} files)")

    def _raw(self) -> Iterator[tuple[int, float | None, Any]]:
        for i, p in enumerate(self.files):
            yield i, (i / self.fps if self.fps else None), p

    def _decode(self, index: int, payload: Any) -> np.ndarray:
        try:
            return load_image(payload, max_pixels=self.max_pixels)
        except ImageError as e:
            raise VideoError(
                f"{self.name}: frame {index} ({Path(payload).name}): {e}", index
            ) from None

    def frame_count(self) -> int | None:
        if self.selection.timed:
            return None
        n = len(range(0, len(self.files), self.selection.stride))
        return min(n, self.selection.max_frames or n)


class IteratorSource(VideoSource):
    """Any iterable of frames (arrays, PIL images, paths, bytes); read once, in order."""

    def __init__(
        self,
        frames: Iterable[Any],
        selection: Selection | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        fps: float | None = None,
        name: str = "<stream>",
    ) -> None:
        super().__init__(selection, max_pixels)
        self._frames = iter(frames)
        self.fps = fps
        self.name = name

    def _raw(self) -> Iterator[tuple[int, float | None, Any]]:
        for i, f in enumerate(self._frames):
            yield i, (i / self.fps if self.fps else None), f


class VideoFileSource(VideoSource):
    """A video file (or any URL/device PyAV opens), decoded frame by frame with PyAV."""

    reopenable = True

    def __init__(
        self,
        path: str | os.PathLike,
        selection: Selection | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        av_format: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(selection, max_pixels)
        self.path = str(path)
        self.name = self.path
        self.av_format = av_format
        self.options = dict(options or {})
        if av_format is None and not Path(self.path).is_file():
            raise VideoError(f"video not found: {self.path}")
        with self._open() as container:  # read the header once: size, fps, frame count
            stream = self._stream(container)
            self.declared_frames = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            self.size = (int(stream.codec_context.height), int(stream.codec_context.width))
            # seconds the container says it lasts (None when unknown)
            self.duration = container.duration / 1e6 if container.duration else None
        check_pixels(*self.size, self.max_pixels, name=f"video {self.name}")

    def _open(self) -> Any:
        av = require_av()
        try:
            return av.open(self.path, format=self.av_format, options=self.options or None)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"cannot open video {self.path}: {e}") from None

    def _stream(self, container: Any) -> Any:
        if not container.streams.video:
            raise VideoError(f"{self.path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return stream

    def _raw(self) -> Iterator[tuple[int, float | None, Any]]:
        av = require_av()
        with self._open() as container:
            stream = self._stream(container)
            index = -1
            last_time: float | None = None
            decoder = container.decode(stream)
            while True:
                try:
                    frame = next(decoder)
                except StopIteration:
                    break
                except (av.FFmpegError, OSError, ValueError) as e:
                    raise VideoError(
                        f"{self.path}: cannot decode frame {index + 1}: {e}", index + 1
                    ) from None
                index += 1
                t = float(frame.time) if frame.time is not None else None
                last_time = t if t is not None else last_time
                yield index, t, frame
            self._check_complete(index + 1, last_time)

    def _check_complete(self, decoded: int, last_time: float | None) -> None:
        """Raise when the stream ended before the frame count or duration of the header."""
        short = bool(self.declared_frames) and decoded < self.declared_frames
        if not self.declared_frames and self.duration and self.fps and last_time is not None:
            short = last_time + 1.5 / self.fps < self.duration
        if short or (decoded == 0 and self.declared_frames):
            said = (
                f"{self.declared_frames} frames"
                if self.declared_frames
                else f"{self.duration:.2f} s"
            )
            raise VideoError(
                f"{self.path}: the video ends at frame {decoded} but its header declares "
                f"{said} (truncated or corrupt file)",
                decoded,
            )

    def _decode(self, index: int, payload: Any) -> np.ndarray:
        try:
            rgb = payload.to_ndarray(format="rgb24")
        except Exception as e:  # noqa: BLE001 - PyAV raises several kinds
            raise VideoError(f"{self.path}: cannot convert frame {index}: {e}", index) from None
        return np.ascontiguousarray(rgb, dtype=np.uint8)

    def frame_count(self) -> int | None:
        if self.selection.timed or not self.declared_frames:
            return None
        n = len(range(0, self.declared_frames, self.selection.stride))
        return min(n, self.selection.max_frames or n)


class CameraSource(VideoFileSource):
    """A live camera through PyAV's capture formats; endless, read once."""

    reopenable = False

    def __init__(
        self,
        device: str,
        selection: Selection | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if device.startswith("camera:"):
            n = device.split(":", 1)[1]
            device = f"/dev/video{n}" if sys.platform.startswith("linux") else n
        fmt = {"darwin": "avfoundation", "win32": "dshow"}.get(sys.platform, "v4l2")
        super().__init__(device, selection, max_pixels, av_format=fmt)
        self.declared_frames = 0


def open_source(
    source: Any,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fps: float | None = None,
) -> VideoSource:
    """The :class:`VideoSource` of ``source``.

    Args:
        source: a video file, a frame folder, ``camera:N`` / ``/dev/videoN``, an existing
            :class:`VideoSource` (returned as is), or any iterable of frames.
        stride, max_frames, start, end: the :class:`Selection`.
        max_pixels: the largest frame accepted (None: no limit of ours).
        fps: frame rate of folders and iterators (gives them times; videos know theirs).

    Raises:
        VideoError: the source does not exist, cannot be opened or holds no frames.
        ImportError: a video file or camera without PyAV (``hybridgl[video]``).
    """
    if isinstance(source, VideoSource):
        return source
    sel = Selection(stride=stride, max_frames=max_frames, start=start, end=end)
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.startswith("camera:") or text.startswith("/dev/video"):
            return CameraSource(text, sel, max_pixels)
        path = Path(text)
        if path.is_dir():
            return FrameFolderSource(path, sel, max_pixels, fps=fps)
        if not path.exists():
            raise VideoError(f"video not found: {path}")
        return VideoFileSource(path, sel, max_pixels)
    if isinstance(source, (bytes, np.ndarray)):
        raise VideoError(
            "a single image is not a video; pass a file, a folder or an iterable of frames"
        )
    try:
        it = iter(source)
    except TypeError:
        raise VideoError(f"unsupported video source of type {type(source).__name__}") from None
    return IteratorSource(it, sel, max_pixels, fps=fps)
