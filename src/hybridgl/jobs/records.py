"""The one resumable JSONL results file, shared by ``batch``, ``evaluate`` and the engines.

One JSON object a line. Rules, the same for every job:

- **Appending**: records are written by :class:`RecordWriter`; :meth:`RecordWriter.commit`
  flushes and fsyncs, and is called once per work unit (one image and its rows), so a
  crash loses at most the unit in progress.
- **Truncated last line**: a run killed mid-write leaves an incomplete last line. Readers
  ignore it (and count it); the writer cuts it off before appending, so the file stays one
  object a line.
- **Last record wins**: an id may appear several times (a failed row tried again); the last
  record of an id is the one that counts.
- **Resume**: an id whose last record succeeded (no ``error``) is done and skipped; an id
  whose last record failed is done too unless the caller retries failures
  (:meth:`RecordLog.todo`). ``batch`` retries failed rows on every rerun; ``evaluate``
  does with ``--retry-failed``.

Nothing here imports the models: the driver of a distributed run uses it alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RecordLog", "RecordWriter", "dumps", "is_failed", "read_records"]

log = logging.getLogger("hybridgl.jobs")

KeyFn = Callable[[dict[str, Any]], str | None]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(record: dict[str, Any]) -> str:
    """One record as one JSON line (no newline); numpy scalars and paths allowed."""
    return json.dumps(record, ensure_ascii=False, default=_json_default)


def is_failed(record: dict[str, Any]) -> bool:
    """A record describes a failure when it carries a non-empty ``error``."""
    return bool(record.get("error"))


@dataclass
class RecordLog:
    """What a results file holds: every valid record, and the last one per id."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    broken: int = 0  # lines that are not complete JSON objects with an id

    def done_ids(self, retry_failed: bool = False) -> set[str]:
        """Ids that need no more work: last record succeeded (or failed, unless retried)."""
        return {k for k, r in self.last.items() if not (retry_failed and is_failed(r))}

    def todo(self, ids: Iterable[str], retry_failed: bool = False) -> list[str]:
        """The ids of ``ids`` still to do, in the given order (the one resume rule)."""
        done = self.done_ids(retry_failed)
        return [i for i in ids if i not in done]

    def current(self) -> list[dict[str, Any]]:
        """The record that counts for each id (the last one), in first-appearance order."""
        return list(self.last.values())


def read_records(path: str | Path, key: KeyFn) -> RecordLog:
    """Read a results file written by :class:`RecordWriter`.

    Args:
        path: the JSONL file; a missing file reads as empty.
        key: the id of a record (None: the line is not a record of this job).

    Lines that are not JSON objects with an id (a truncated last line) are skipped and
    counted in :attr:`RecordLog.broken`, with a warning naming the file.
    """
    out = RecordLog(Path(path))
    if not out.path.is_file():
        return out
    with open(out.path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                out.broken += 1
                continue
            rid = key(rec) if isinstance(rec, dict) else None
            if rid is None:
                out.broken += 1
                continue
            out.records.append(rec)
            out.last.pop(rid, None)  # re-insert: order of the last record
            out.last[rid] = rec
    if out.broken:
        log.warning(
            "%s: dropped %d incomplete or invalid line(s) (an interrupted write); "
            "their rows are done again",
            out.path,
            out.broken,
        )
    return out


class RecordWriter:
    """Appends records to a JSONL file; :meth:`commit` makes them durable (fsync).

    Opening cuts off an incomplete last line left by a killed run, so every line after
    it is whole. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_partial_line()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.written = 0

    def _cut_partial_line(self) -> None:
        if not self.path.is_file():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            # find the last newline; everything after it is a partial record
            pos = size
            chunk = 1 << 16
            keep = 0
            while pos > 0:
                start = max(0, pos - chunk)
                f.seek(start)
                buf = f.read(pos - start)
                nl = buf.rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                    break
                pos = start
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (buffered until :meth:`commit`)."""
        self._f.write(dumps(record) + "\n")
        self.written += 1

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def commit(self) -> None:
        """Flush and fsync: everything written so far survives a crash."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.commit()
            self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
