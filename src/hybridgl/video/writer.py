"""Writing videos with PyAV, atomically (a temporary file renamed into place when complete)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from hybridgl.video.sources import require_av

__all__ = ["CODECS", "VideoWriter"]

#: Codec by file extension (all in PyAV's own wheels).
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9",
          ".avi": "mpeg4"}  # fmt: skip


class VideoWriter:
    """Frames in, one video file out; the file appears under its name only on :meth:`close`.

    Args:
        path: the output file; its extension picks the codec (:data:`CODECS`).
        fps: frame rate (a float is turned into a fraction).
        quality: libx264's CRF (lower is better; 18 is visually lossless, 23 the default).

    Frames must all have the size of the first; odd sizes are padded by one pixel (H.264
    needs even sides).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, quality: int = 20) -> None:
        self.av = require_av()
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in CODECS:
            raise ValueError(f"video output must end in one of {', '.join(CODECS)}, got {path!s}")
        self.codec = CODECS[ext]
        self.fps = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)
        self.quality = quality
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp{ext}")
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def _start(self, h: int, w: int) -> None:
        self._container = self.av.open(str(self.tmp), mode="w")
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.height, stream.width = h + h % 2, w + w % 2
        stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": str(self.quality)}
        self._stream = stream
        self._size = (h, w)

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame."""
        h, w = frame.shape[:2]
        if self._size is None:
            self._start(h, w)
        elif (h, w) != self._size:
            raise ValueError(
                f"frame {self.frames} is {w}x{h}, the video is {self._size[1]}x{self._size[0]}"
            )
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = self.av.VideoFrame.from_ndarray(
            np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24"
        )
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flush, close and move the file into place; returns its path."""
        if self._container is None:
            raise ValueError(f"no frame was written to {self.path}")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file (nothing appears under the final name)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - best effort on an error path
                pass
            self._container = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.close()
        else:
            self.abort()
