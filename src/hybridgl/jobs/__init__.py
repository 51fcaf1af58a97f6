"""Bulk jobs (``batch``, ``evaluate``): work units, engines and the one results file.

- :mod:`hybridgl.jobs.records`: the resumable JSONL writer/reader every job uses.
- :mod:`hybridgl.jobs.units`: a work unit (one image and its rows), the task a worker
  runs on it and :class:`~hybridgl.jobs.units.SegmenterSpec` (how a worker builds its model).
- :mod:`hybridgl.jobs.engine`: :func:`~hybridgl.jobs.engine.run_units`, the one entry
  point, with the ``local`` engine; the ``ray`` engine lives in
  :mod:`hybridgl.jobs.ray_engine` and needs the extra ``pip install "hybridgl[ray]"``.

Importing this package never imports ray or the models.
"""
