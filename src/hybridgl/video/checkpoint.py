"""Checkpoints of a tracking run, for a resume that gives exactly the uninterrupted result.

:class:`SessionState` is the video method's whole state after a frame of the forward pass:
the tracker's bounded session (its memory bank, object pointers and conditioning frames,
from :meth:`HFVideoTracker.get_state`), each object's ``seeded`` / ``lost`` flags, the
keyframe's position and the frame's. Continuing from it
(``VideoSegmenter.track(..., resume=state)``) computes the following frames exactly as
the uninterrupted run does (the models are deterministic; tested bit for bit).

:func:`save_checkpoint` writes it with ``torch.save`` atomically (a temporary file renamed
into place), with the number of bytes of the records file it goes with;
:func:`load_checkpoint` reads it with ``torch.load(weights_only=True)`` (tensors, numbers,
text, lists and dicts only: a checkpoint file cannot run code) and checks its shape. The
size is bounded like the session: at most ``memory_limit`` frames of outputs per object.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import VideoError

__all__ = [
    "CHECKPOINT_VERSION",
    "ResumePoint",
    "SessionState",
    "load_checkpoint",
    "resume_from_masks",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1


@dataclass
class SessionState:
    """The video method after the forward frame at ``position`` (source index ``frame``).

    Attributes:
        objects: ``(object id, seeded, lost)`` of every phrase, in order.
        tracker: the tracker's :meth:`get_state` (plain tensors, numbers, lists, dicts).
    """

    frame: int
    position: int
    keyframe_position: int
    objects: list[tuple[int, bool, bool]] = field(default_factory=list)
    tracker: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": int(self.frame),
            "position": int(self.position),
            "keyframe_position": int(self.keyframe_position),
            "objects": [[int(o), bool(s), bool(lost)] for o, s, lost in self.objects],
            "tracker": self.tracker,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SessionState:
        return cls(
            frame=int(d["frame"]),
            position=int(d["position"]),
            keyframe_position=int(d["keyframe_position"]),
            objects=[(int(o), bool(s), bool(lost)) for o, s, lost in d["objects"]],
            tracker=dict(d["tracker"]),
        )


def save_checkpoint(path: Path, state: SessionState, records_bytes: int, run_key: str) -> None:
    """Write ``state`` atomically; ``records_bytes``: the size of the records file it goes
    with (its frames up to ``state.frame`` are all in those bytes); ``run_key``: what
    identifies the run (a checkpoint of another run is never loaded)."""
    import torch

    doc = {
        "version": CHECKPOINT_VERSION,
        "records_bytes": int(records_bytes),
        "run": str(run_key),
        "state": state.to_dict(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, run_key: str) -> tuple[SessionState, int] | None:
    """``(state, records_bytes)`` of a checkpoint of this run, or None when there is none
    usable (missing, unreadable, of another version or run: the caller replays instead)."""
    import torch

    if not path.is_file():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
        if doc.get("version") != CHECKPOINT_VERSION or doc.get("run") != run_key:
            return None
        return SessionState.from_dict(doc["state"]), int(doc["records_bytes"])
    except Exception:  # noqa: BLE001 - a damaged checkpoint only costs a longer replay
        return None


@dataclass
class ResumePoint:
    """The inexact resume, for a tracker that cannot save its session (no ``get_state``):
    the last finished frame and the keyframe (source indices; the keyframe at or before
    it), and each object's recorded mask on the last finished frame (None: absent). The
    tracker restarts from those masks; absent objects wait for the next re-grounding."""

    frame: int
    keyframe: int
    masks: dict[int, np.ndarray | None] = field(default_factory=dict)


def resume_from_masks(vs: Any, src: Any, objects: list[Any], point: ResumePoint) -> Iterator[Any]:
    """The frames after ``point.frame`` of a :class:`~hybridgl.video.method.VideoSegmenter`
    restarted from :class:`ResumePoint` (``track(..., resume=point)``)."""
    vs.tracker.reset(reverse=False)
    started = False
    key: int | None = None
    for p, frame in enumerate(src.frames()):
        if frame.index == point.keyframe:
            key = p
        if frame.index < point.frame:
            continue
        if not started:
            if frame.index != point.frame or key is None:
                raise VideoError(
                    f"cannot resume: frame {point.frame} or keyframe {point.keyframe} "
                    "is not among the selected frames"
                )
            seeds = {o: m for o, m in point.masks.items() if m is not None and m.any()}
            for o in objects:
                o.seeded = o.oid in seeds
                o.lost = not o.seeded
            vs.tracker.step(frame.image, seeds)
            started = True
            continue
        assert key is not None
        yield vs._frame(frame, p, key, objects)
