"""Run work units on an engine and hand their records to a sink, in the driver.

``run_units(units, task, sink, options)`` is the one entry point of ``batch`` and
``evaluate``: the ``local`` engine runs the units in this process with one segmenter; the
``ray`` engine (:mod:`hybridgl.jobs.ray_engine`, optional extra ``hybridgl[ray]``) runs
them on a pool of Ray actors, one segmenter each. Either way the records of a unit come
back to this process and the same sink writes them (one results file, one resume rule),
so the two engines write the same records.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from hybridgl.jobs.engine_options import ENGINES, EngineOptions, Sink
from hybridgl.jobs.units import Task, UnitWorker, WorkUnit, build_from_spec
from hybridgl.spec import ModelSpec

__all__ = ["ENGINES", "EngineOptions", "Progress", "RecordSink", "Sink", "run_units"]


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True) -> Any:
    """The one progress bar of the bulk jobs (tqdm on stderr): batch, evaluate, index, track
    (``total`` None: unknown, e.g. a camera)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


class Progress:
    """The progress bar of every bulk job: rows (expressions) and images, rate, ETA.

    Driven by records arriving in the driver, so it reads the same on both engines.
    """

    def __init__(self, total_rows: int, total_units: int, desc: str, disable: bool) -> None:
        self.total_units = total_units
        self.units = 0
        self.failed = 0
        self.bar = progress_bar(total_rows, desc, "expr", not disable)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"images {self.units}/{self.total_units} failed {self.failed}")

    def rows(self, n: int, failed: int = 0) -> None:
        self.failed += failed
        self.bar.update(n)
        self._postfix()

    def unit_done(self) -> None:
        self.units += 1
        self._postfix()

    def message(self, text: str) -> None:
        from hybridgl.names import show

        self.bar.write(show(text), file=sys.stderr)  # one line, whatever a name holds

    def close(self) -> None:
        self.bar.close()


class RecordSink:
    """The driver's sink of a job whose records are its whole output (``track --list``,
    ``segment-volume --list``, video ``evaluate``): each unit's records appended once (a
    retried unit that arrives twice is written once) and made durable together, failures
    shown one line each, ``counts["done"]`` and ``counts["failed"]`` kept, the bar moved.

    ``writer`` is the job's :class:`~hybridgl.jobs.records.RecordWriter`.
    """

    def __init__(self, writer: Any, progress: Progress, counts: dict[str, int] | None = None):
        self.writer = writer
        self.progress = progress
        self.counts = counts if counts is not None else {}
        self.counts.setdefault("done", 0)
        self.counts.setdefault("failed", 0)
        self.seen: set[str] = set()

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record (not yet durable: :meth:`__call__` commits per unit)."""
        self.writer.write(rec)
        if rec.get("error"):
            self.counts["failed"] += 1
            self.progress.message(f"hybridgl: failed {rec['id']}: {rec['error']}")
        else:
            self.counts["done"] += 1

    def bad_rows(self, records: Iterable[dict[str, Any]]) -> None:
        """Write the error records of rows refused before any work, durably."""
        for rec in records:
            self.write(rec)
            self.progress.rows(1, 1)
        self.writer.commit()

    def __call__(self, unit: WorkUnit, records: list[dict[str, Any]]) -> None:
        if unit.key in self.seen:
            return
        self.seen.add(unit.key)
        for rec in records:
            self.write(rec)
        self.writer.commit()
        self.progress.rows(len(records), sum(1 for r in records if r.get("error")))
        self.progress.unit_done()


def run_units(
    units: Sequence[WorkUnit] | Iterable[WorkUnit],
    task: Task,
    sink: Sink,
    *,
    spec: ModelSpec,
    options: EngineOptions | None = None,
    factory: Callable[[], Any] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Process every unit and pass its records to ``sink`` (in this process).

    Args:
        units: the work, one image each.
        task: what a worker does with a unit.
        sink: writes a unit's records; called once per unit, in completion order.
        spec: how workers build their segmenter.
        options: engine choice and Ray settings (default: local).
        factory: local engine only: builds the segmenter (default
            ``Segmenter.from_spec(spec)``).
        on_start: called once with engine facts (e.g. Ray's worker count) before work.

    Returns:
        Engine facts: ``engine``, ``units``, ``workers``, for Ray the cluster's, and
        ``built``: what each worker's segmenter was built with (distinct entries of
        :func:`hybridgl.spec.built_facts`), so a run can record and check it.
    """
    opts = options or EngineOptions()
    if opts.engine == "local":
        return _run_local(list(units), task, sink, spec, factory, on_start)
    if opts.engine == "ray":
        from hybridgl.jobs.ray_engine import run_ray

        return run_ray(list(units), task, sink, spec, opts, on_start)
    raise ValueError(f"unknown engine {opts.engine!r}; choose one of {', '.join(ENGINES)}")


def _run_local(
    units: list[WorkUnit],
    task: Task,
    sink: Sink,
    spec: ModelSpec,
    factory: Callable[[], Any] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    if factory is None:
        spec.apply_env()
        factory = partial(build_from_spec, spec)
    worker = UnitWorker(task, factory)
    facts = {"engine": "local", "workers": 1, "units": len(units)}
    if on_start is not None:
        on_start(facts)
    for unit in units:
        sink(unit, worker.process(unit))
    facts["segmenter"] = worker._segmenter
    built = worker.built()
    facts["built"] = [built] if built is not None else []
    return facts
