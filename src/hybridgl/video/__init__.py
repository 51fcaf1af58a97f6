"""Video and live streams: follow what a phrase refers to through every frame.

Modules (one concern each; nothing heavy is imported here):

- :mod:`~hybridgl.video.sources`: frames from video files, folders, iterators and cameras.
- :mod:`~hybridgl.video.tracker`: the tracker interface; :mod:`~hybridgl.video.hf_trackers`
  the SAM 2.1 / EdgeTAM video backends through ``transformers``.
- :mod:`~hybridgl.video.method`: :class:`VideoSegmenter`, ground, track, re-ground, absence.
- :mod:`~hybridgl.video.outputs`: JSONL records, DAVIS PNGs, overlay video, YouTube-VIS.
- :mod:`~hybridgl.video.metrics`: the DAVIS 2017 region J and boundary F.
- :mod:`~hybridgl.video.synthetic`: clips with a known mask on every frame.
"""

from __future__ import annotations
