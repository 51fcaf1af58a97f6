"""The tracker interface: one video session, several objects, one frame at a time.

A tracker follows objects given by a seed mask through a stream of frames:

- :meth:`Tracker.reset` starts a new session (forward, or backward in time);
- :meth:`Tracker.step` takes the next frame and, optionally, seed masks for some object ids
  on that frame (the first seed of an id starts it, a later one re-seeds it); it returns the
  mask and an object-presence score in ``[0, 1]`` for every object started so far;
- :meth:`Tracker.reseed` seeds objects on the frame just stepped and answers it again;
- memory is bounded: a tracker keeps the features and outputs of at most
  :attr:`Tracker.memory_limit` frames whatever the length of the video
  (:meth:`Tracker.memory_frames` says how many it holds now).

The ``transformers`` backends (SAM 2.1 video, EdgeTAM video) are in
:mod:`hybridgl.video.hf_trackers`; a test double needs only these members.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["DEFAULT_TRACKER", "TRACKERS", "TrackStep", "Tracker", "TrackerSpec", "get_tracker_spec"]


@dataclass
class TrackStep:
    """A tracker's answer on one frame.

    Attributes:
        masks: object id -> ``(H, W)`` bool mask at the frame's resolution.
        presence: object id -> object-presence probability in ``[0, 1]`` (SAM 2's object
            score logit through a sigmoid; 1.0 on a frame where the object was seeded).
        seconds: time spent on the frame.
    """

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    presence: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


@runtime_checkable
class Tracker(Protocol):
    """A video object tracker behind one interface (see the module docstring)."""

    name: str

    @property
    def memory_limit(self) -> int:
        """The most frames whose features or outputs the session keeps."""
        ...

    def reset(self, reverse: bool = False) -> None:
        """Start a new session; ``reverse``: the frames will come in backward time order."""
        ...

    def step(self, image: np.ndarray, seeds: Mapping[int, np.ndarray] | None = None) -> TrackStep:
        """Process the next frame ``(H, W, 3)`` uint8; seed (or re-seed) the objects of
        ``seeds`` (id -> ``(H, W)`` bool, not empty) on it."""
        ...

    def reseed(self, seeds: Mapping[int, np.ndarray]) -> TrackStep:
        """Seed (or re-seed) objects on the frame of the latest :meth:`step` and answer
        that frame again (used when re-grounding overrules the tracked mask)."""
        ...

    def memory_frames(self) -> int:
        """How many frames' features or outputs the session holds now."""
        ...


@dataclass(frozen=True)
class TrackerSpec:
    """One tracker: its name, model family, registry checkpoint and size key."""

    name: str
    family: str  # "sam2_video" or "edgetam_video"
    checkpoint: str
    size: str


TRACKERS: dict[str, TrackerSpec] = {
    s.name: s
    for s in (
        *(
            TrackerSpec(f"sam2.1_hiera_{k}", "sam2_video", f"sam2.1_hiera_{k}", f"hiera_{k}")
            for k in ("tiny", "small", "base_plus", "large")
        ),
        TrackerSpec("edgetam", "edgetam_video", "edgetam", "repvit_m1"),
    )
}
DEFAULT_TRACKER = "sam2.1_hiera_tiny"


def get_tracker_spec(name: str) -> TrackerSpec:
    try:
        return TRACKERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKERS)}") from None
