"""Bulk jobs (``batch``, ``evaluate``): work units, engines and the one results file.

- :mod:`hybridgl.jobs.records`: the resumable JSONL writer/reader every job uses.
- :mod:`hybridgl.jobs.units`: a work unit (one image and its rows), the task a worker
  runs on it and :class:`~hybridgl.jobs.units.SegmenterSpec` (how a worker builds its model).
- :mod:`hybridgl.jobs.engine`: :func:`~hybridgl.jobs.engine.run_units`, the one entry
  point, with the ``local`` engine; the ``ray`` engine lives in
  :mod:`hybridgl.jobs.ray_engine` and needs the extra ``pip install "hybridgl[ray]"``.
- :mod:`hybridgl.jobs.video_track` (one video into a folder, resumable: ``hybridgl track``),
  :mod:`hybridgl.jobs.video_batch` (many videos, one per unit: ``track --list``) and
  :mod:`hybridgl.jobs.video_eval` (the referring video datasets: ``evaluate``).

Importing this package never imports ray or the models.
"""
