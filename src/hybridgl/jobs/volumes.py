"""Volumes as work units: ``segment-volume --list FILE --out DIR [--engine local|ray]``.

A list of rows ``(volume, expression[, id])`` runs one volume per work unit through
:func:`hybridgl.jobs.engine.run_units`, on the local engine or the Ray engine alike:

- each volume's outputs go to their own folder ``DIR/volumes/<id>/`` (``summary.json``,
  ``labels.nii.gz``, ``overlays/``, ``seg.dcm`` with ``seg``; :func:`hybridgl.medical.run.
  run_volume`), written by the worker, each file atomically (on a Ray cluster ``DIR`` must
  be storage every node sees);
- one flat record per volume goes to ``DIR/volumes.jsonl`` through the driver's sink (the
  one resumable writer of :mod:`hybridgl.jobs.records`): its id, volume, expression, the
  found extent and volume in mL, the window, the folder; or ``error`` and ``error_kind``
  (:data:`hybridgl.errors.ERROR_KINDS`) when the volume failed: the run goes on;
- ``DIR/run.json`` (:mod:`hybridgl.jobs.runfile`) records the options and the model spec;
  a rerun into the same folder resumes: volumes whose last record succeeded are skipped,
  failed ones are tried again (the batch rule).

List file: JSONL, one object a line with ``volume`` (a path, relative to the list file's
folder), ``expression`` and optionally ``id`` (default: the line number); or CSV with a
header naming the same columns. A row without a volume or an expression is a failed
record (``bad_record``), a repeated id an input error before any work.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridgl.errors import InputError, error_record_fields
from hybridgl.jobs.units import UnitWorker, WorkUnit

__all__ = ["RESULTS_FILE", "VolumeRow", "VolumeTask", "read_volume_list", "volume_folder"]

RESULTS_FILE = "volumes.jsonl"
FOLDERS = "volumes"


@dataclass
class VolumeRow:
    """One row of the list: ``error`` set when the row itself is unusable."""

    id: str
    line: int
    volume: str | None
    expression: str | None
    error: str | None = None


def _rows_jsonl(path: Path) -> list[dict[str, Any] | str]:
    out: list[dict[str, Any] | str] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            text = raw.strip()
            if not text:
                out.append("")
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                out.append(f"not JSON: {e}")
                continue
            out.append(obj if isinstance(obj, dict) else "not a JSON object")
    return out


def read_volume_list(path: str | Path) -> list[VolumeRow]:
    """The rows of a list file (module docstring); relative volume paths resolved.

    Raises:
        InputError: the file cannot be read, or two rows share an id.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                raw: list[dict[str, Any] | str] = [dict(r) for r in csv.DictReader(f)]
            first = 2  # line 1 is the header
        else:
            raw, first = _rows_jsonl(path), 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read the volume list {path}: {e}") from None
    rows: list[VolumeRow] = []
    seen: set[str] = set()
    for i, obj in enumerate(raw):
        line = i + first
        if obj == "":
            continue
        if isinstance(obj, str):
            rows.append(VolumeRow(str(line), line, None, None, obj))
            continue
        rid = str(obj.get("id") or line)
        if rid in seen:
            raise InputError(f"{path}:{line}: id {rid!r} appears twice")
        seen.add(rid)
        vol, expr = obj.get("volume"), obj.get("expression")
        error = None
        if not isinstance(vol, str) or not vol.strip():
            error = "no 'volume' path"
        elif not isinstance(expr, str) or not expr.strip():
            error = "no 'expression'"
        if isinstance(vol, str) and vol.strip() and not Path(vol).is_absolute():
            vol = str(path.parent / vol)
        rows.append(
            VolumeRow(rid, line, vol if isinstance(vol, str) else None,
                      expr if isinstance(expr, str) else None, error)
        )  # fmt: skip
    return rows


def volume_folder(row_id: str) -> str:
    """``volumes/<name>``: the id when it is a safe file name, else a sanitised, hashed one."""
    from hybridgl.jobs.batch import mask_filename

    return f"{FOLDERS}/{Path(mask_filename(row_id)).stem}"


def error_record(row: dict[str, Any], error: BaseException | str, kind: str | None = None) -> dict:
    rec = {k: row.get(k) for k in ("id", "line", "volume", "expression")}
    rec.update(error_record_fields(error, kind))
    return rec


@dataclass
class VolumeTask:
    """What a worker does with one volume (plain settings: pickles to Ray actors).

    Attributes:
        out_dir: the run's folder (absolute).
        options: :class:`hybridgl.medical.run.VolumeOptions` as a dict.
    """

    out_dir: str
    options: dict[str, Any]

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        from hybridgl.medical.run import VolumeOptions, flat_record, read_for, run_volume

        row = unit.rows[0]
        opts = VolumeOptions(**self.options)
        t0 = time.perf_counter()
        try:
            volume = read_for(unit.data["volume"], opts)
            n = volume.num_slices(opts.axis)
            if opts.keyslice is not None and opts.keyslice >= n:
                raise InputError(f"keyslice {opts.keyslice} is outside 0..{n - 1}")
            volume.resolve_window(opts.window)
        except Exception as e:  # noqa: BLE001 - this volume fails, the run goes on
            return self.failed(unit, e)
        folder = volume_folder(row["id"])
        doc = run_volume(
            worker.segmenter, volume, row["expression"], Path(self.out_dir) / folder, opts
        )
        head = {k: row[k] for k in ("id", "line", "volume", "expression")}
        return [
            {**head, **flat_record(doc), "folder": folder,
             "seconds": round(time.perf_counter() - t0, 4)}
        ]  # fmt: skip

    def failed(self, unit: WorkUnit, error: BaseException) -> list[dict[str, Any]]:
        kind = "prediction_failed" if isinstance(error, RuntimeError) else None
        return [error_record(unit.rows[0], error, kind)]


def make_units(rows: list[VolumeRow]) -> list[WorkUnit]:
    """One unit per usable row (rows with an ``error`` never become units)."""
    return [
        WorkUnit(
            key=r.id,
            rows=[{"id": r.id, "line": r.line, "volume": r.volume, "expression": r.expression}],
            data={"volume": r.volume},
        )
        for r in rows
        if r.error is None
    ]


def run_volume_list(
    list_path: str | Path,
    out_dir: str | Path,
    spec: Any,
    options: Any,
    engine: Any = None,
    *,
    show_progress: bool = True,
    factory: Any = None,
) -> dict[str, Any]:
    """Run every volume of a list file into ``out_dir`` (module docstring).

    Args:
        spec: the :class:`~hybridgl.spec.ModelSpec` workers build their segmenter from.
        options: :class:`hybridgl.medical.run.VolumeOptions`.
        engine: :class:`hybridgl.jobs.engine.EngineOptions` (default: local).
        factory: local engine only: builds the segmenter (tests).

    Returns:
        Counts (``volumes``, ``done``, ``failed``, ``skipped``: done before this run), the
        results file and the engine's facts (``engine``, ``workers``).

    Raises:
        InputError: an unreadable list or a repeated id;
        RunConflictError: ``out_dir`` holds a run with other options.
    """
    from hybridgl.jobs.engine import Progress, RecordSink, run_units
    from hybridgl.jobs.records import RecordWriter, read_records
    from hybridgl.jobs.runfile import check_run_file

    list_path, out = Path(list_path), Path(out_dir)
    rows = read_volume_list(list_path)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "job": "segment-volume",
        "list": str(list_path.resolve()),
        "options": options.to_dict(),
    }
    check_run_file(out, settings, spec)
    results = out / RESULTS_FILE
    todo = set(read_records(results, key=lambda r: r.get("id")).todo([r.id for r in rows], True))
    counts = {"volumes": len(rows), "done": 0, "failed": 0, "skipped": len(rows) - len(todo)}
    progress = Progress(len(todo), len(todo), "volumes", disable=not show_progress)
    with RecordWriter(results) as writer:
        sink = RecordSink(writer, progress, counts)
        sink.bad_rows(
            error_record(vars(r), r.error, "bad_record")
            for r in rows
            if r.error is not None and r.id in todo
        )
        units = make_units([r for r in rows if r.id in todo])
        task = VolumeTask(str(out.resolve()), options.to_dict())
        try:
            facts = run_units(units, task, sink, spec=spec, options=engine, factory=factory)
        finally:
            progress.close()
    return {
        **counts,
        "results": str(results),
        "engine": facts.get("engine"),
        "workers": facts.get("workers"),
    }
