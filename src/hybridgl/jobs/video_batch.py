"""Many videos as work units: ``hybridgl track --list FILE --out DIR --engine local|ray``.

The work list is a JSONL or CSV file of rows ``(video, expression[s][, id])``:

- JSONL: ``{"video": PATH, "expressions": [TEXT, ...], "id": ID}`` (or ``"expression":
  TEXT``); CSV: a header naming ``video`` and ``expression`` (and optionally ``id``), one
  phrase a row.
- Rows with the same id (by default the video as written) are one video: their phrases
  are its objects, in the order given. Paths are relative to the list file's folder.

Each video is one :class:`~hybridgl.jobs.units.WorkUnit`, run by :class:`VideoTask` on a
worker of the job engine (local or Ray; the worker's segmenter and one tracker are built
once). The worker tracks the video into its own folder ``DIR/videos/<id>/``
(:func:`hybridgl.jobs.video_track.track_to_folder`: ``frames.jsonl`` and ``run.json``, resumable
frame by frame) and returns one summary record, which the driver appends to
``DIR/results.jsonl``. Workers write into ``DIR``: with Ray on several machines it must be
a folder every node reaches (as the videos must be).

Resume: a video whose last summary record succeeded is not run again; a failed one is
tried again; one interrupted midway continues after its last finished frame. A video that
fails (missing, unreadable, corrupt) gets a record with ``error`` and ``error_kind`` and
the run goes on.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridgl.errors import InputError, error_record_fields
from hybridgl.jobs.units import UnitWorker, WorkUnit

__all__ = [
    "VIDEOS",
    "VideoRow",
    "VideoTask",
    "make_units",
    "read_video_rows",
    "run_video_list",
    "worker_video",
]

VIDEOS = "videos"  # DIR/videos/<id>/: one folder per video
VIDEO_KEYS = ("video", "video_path", "path")


@dataclass
class VideoRow:
    """One video of the list with its phrases (``error``: a row that cannot be run)."""

    id: str
    line: int
    video: str
    expressions: list[str] = field(default_factory=list)
    error: str | None = None
    targets: str | None = None  # the row's own target mode (docs/TARGETS.md); None: the run's

    def head(self) -> dict[str, Any]:
        head = {"id": self.id, "line": self.line, "video": self.video,
                "expressions": list(self.expressions)}  # fmt: skip
        return head if self.targets is None else {**head, "targets": self.targets}


def _targets(record: dict[str, Any]) -> str | None:
    """The row's ``targets`` field (None when absent or empty); a bad value: ValueError."""
    from hybridgl.targets import TARGET_MODES

    value = record.get("targets")
    if value in (None, ""):
        return None
    if not isinstance(value, str) or value.strip() not in TARGET_MODES:
        raise ValueError(f"targets must be one of {list(TARGET_MODES)}, got {value!r}")
    return value.strip()


def _phrases(record: dict[str, Any]) -> list[str] | str:
    """The row's phrases, or an error message."""
    many = record.get("expressions")
    one = record.get("expression")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(e, str) for e in many):
            return "expressions must be a list of text"
        return list(many)
    if one is None or one == "":
        return "no expression"
    return [one] if isinstance(one, str) else "expression must be text"


def _records(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    out: list[tuple[int, dict[str, Any] | str]] = []
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            with open(path, encoding="utf-8-sig") as f:
                for n, text in enumerate(f, start=1):
                    if not text.strip():
                        continue
                    try:
                        rec = json.loads(text)
                    except json.JSONDecodeError as e:
                        out.append((n, f"not JSON ({e.msg})"))
                        continue
                    out.append((n, rec if isinstance(rec, dict) else "not a JSON object"))
        elif suffix == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                if not any(k in header for k in VIDEO_KEYS) or "expression" not in header:
                    raise InputError(
                        f"{path}: the CSV header must name a video column "
                        f"({'/'.join(VIDEO_KEYS)}) and an expression column; got {header}"
                    )
                reader.fieldnames = header
                for rec in reader:
                    out.append((reader.line_num, {k: v for k, v in rec.items() if k}))
        else:
            raise InputError(f"unknown list kind {path.name!r}: use a .jsonl or .csv file")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise InputError(f"{path}: malformed CSV: {e}") from None
    return out


def read_video_rows(path: Path) -> list[VideoRow]:
    """The videos of a work list, in the order they first appear (bad rows included, with
    their ``error``).

    Raises:
        InputError: the file is missing, of an unknown kind, or holds no rows.
    """
    if not path.is_file():
        raise InputError(f"video list not found: {path}")
    rows: dict[str, VideoRow] = {}
    bad: list[VideoRow] = []
    for n, rec in _records(path):
        where = f"{path.name} line {n}"
        if isinstance(rec, str):
            bad.append(VideoRow(f"line:{n}", n, "", error=f"{where}: {rec}"))
            continue
        video = next((rec[k] for k in VIDEO_KEYS if rec.get(k) not in (None, "")), None)
        raw_id = rec.get("id")
        rid = None if raw_id in (None, "") else str(raw_id).strip()
        if not isinstance(video, str):
            bad.append(VideoRow(rid or f"line:{n}", n, "", error=f"{where}: no video path"))
            continue
        phrases = _phrases(rec)
        try:
            targets = _targets(rec)
        except ValueError as e:
            phrases = str(e)
        if isinstance(phrases, str):
            bad.append(VideoRow(rid or f"line:{n}", n, video, error=f"{where}: {phrases}"))
            continue
        key = rid or video
        row = rows.get(key)
        if row is None:
            rows[key] = VideoRow(key, n, video, phrases, targets=targets)
        elif targets is not None and targets != (row.targets or targets):
            bad.append(VideoRow(f"line:{n}", n, video, phrases,
                                error=f"{where}: targets {targets!r} differs from line "
                                f"{row.line}'s {row.targets!r} for id {key!r}"))  # fmt: skip
        elif row.video != video:
            bad.append(VideoRow(f"line:{n}", n, video, phrases,
                                error=f"{where}: id {key!r} names another video (line "
                                f"{row.line})"))  # fmt: skip
        else:
            row.expressions.extend(phrases)
            row.targets = row.targets or targets
    out = list(rows.values()) + bad
    if not out:
        raise InputError(f"no rows in {path}")
    for row in rows.values():
        if not row.expressions or any(not e.strip() for e in row.expressions):
            row.error = f"{path.name} line {row.line}: an expression is empty"
    return out


def make_units(rows: list[VideoRow], base: Path) -> list[WorkUnit]:
    """One work unit per video: its row, the video's path and its output folder."""
    from hybridgl.jobs.batch import safe_name

    units = []
    for r in rows:
        path = Path(r.video)
        path = path if path.is_absolute() or r.video.startswith("camera:") else base / path
        units.append(WorkUnit(key=r.id, rows=[r.head()],
                              data={"video_path": str(path),
                                    "folder": f"{VIDEOS}/{safe_name(r.id)}"}))  # fmt: skip
    return units


def failed_record(
    row: dict[str, Any], error: BaseException | str, kind: str | None = None
) -> dict[str, Any]:
    """The summary record of a video that failed: its row, ``error`` and ``error_kind``."""
    from hybridgl.errors import UsageError, VideoError

    if kind is None and isinstance(error, VideoError):
        kind = "bad_video"
    elif kind is None and isinstance(error, UsageError):
        kind = "bad_record"  # its folder holds another run
    return {**row, **error_record_fields(error, kind)}


def worker_video(
    worker: UnitWorker,
    tracker: str,
    options: dict[str, Any],
    max_pixels: int | None,
    weights_dir: str | None,
    thresholds: dict[str, Any] | None = None,
    targets: str | None = None,
) -> Any:
    """The worker's :class:`~hybridgl.video.method.VideoSegmenter`: its segmenter and one
    tracker, built on first use and kept on the worker (one per actor on Ray); ``targets``:
    a row's own mode (the same segmenter, grounder and tracker with that option)."""
    import dataclasses

    from hybridgl.video.method import VideoSegmenter

    cached = getattr(worker, "video_segmenter", None)
    if cached is None:
        cached = _build_video(worker, tracker, options, max_pixels, weights_dir, thresholds)
    if targets is None or targets == cached.options.targets:
        return cached
    return VideoSegmenter(cached.grounder, cached.tracker,
                          dataclasses.replace(cached.options, targets=targets))  # fmt: skip


def _build_video(
    worker: UnitWorker,
    tracker: str,
    options: dict[str, Any],
    max_pixels: int | None,
    weights_dir: str | None,
    thresholds: dict[str, Any] | None,
) -> Any:
    from hybridgl.video.grounding import HybridGLGrounder
    from hybridgl.video.hf_trackers import build_tracker
    from hybridgl.video.method import TrackOptions, VideoSegmenter

    seg = worker.segmenter
    opts = TrackOptions(**options)
    built = build_tracker(tracker, device=getattr(seg, "device", None), weights_dir=weights_dir,
                          dtype=getattr(seg, "dtype", None))  # the spec's dtype, as resolved  # fmt: skip
    grounder = HybridGLGrounder(seg, top_k=opts.top_k, guidance=opts.guidance,
                                min_cosine=opts.min_cosine, max_pixels=max_pixels,
                                thresholds=thresholds)  # fmt: skip
    video = VideoSegmenter(grounder, built, opts)
    worker.video_segmenter = video  # type: ignore[attr-defined]
    return video


@dataclass
class VideoTask:
    """What a worker does with one video: track it into its folder, return its summary.

    Plain settings only (pickled to Ray actors). ``settings``: what every video shares
    (tracker, model, options; the source and phrases are added per video) for the
    folder's run file; ``options``: :class:`~hybridgl.video.method.TrackOptions` fields;
    ``selection``: :func:`~hybridgl.video.sources.open_source` keywords.
    """

    out_dir: str
    tracker: str
    settings: dict[str, Any]
    options: dict[str, Any]
    selection: dict[str, Any]
    davis: bool = False
    vis: bool = False
    overlays: bool = False
    weights_dir: str | None = None
    checkpoint_every: int = 25  # jobs.video_track.CHECKPOINT_EVERY
    thresholds: dict[str, Any] | None = None  # the target rules (TargetRules.to_dict())

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        from hybridgl.jobs.video_track import state_counts, track_to_folder, write_outputs
        from hybridgl.video.sources import open_source

        row = unit.rows[0]
        t0 = time.perf_counter()
        path = unit.data["video_path"]
        if not path.startswith("camera:") and not Path(path).exists():
            return [failed_record(row, f"video not found: {row['video']}", "missing_video")]
        folder = Path(self.out_dir) / unit.data["folder"]
        try:
            source = open_source(path, **self.selection)
            settings = {"source": str(Path(path).resolve()), "expressions": row["expressions"],
                        **self.settings}  # fmt: skip
            own = row.get("targets")  # the row's own mode, recorded in its folder's run file
            if own is not None:
                opts = {k: v for k, v in settings["options"].items() if k != "targets"}
                settings["options"] = opts if own == "one" else {**opts, "targets": own}

            def build() -> tuple[Any, dict[str, Any]]:
                video = worker_video(worker, self.tracker, self.options,
                                     self.selection.get("max_pixels"), self.weights_dir,
                                     self.thresholds, own)  # fmt: skip
                return video, dict(getattr(worker.segmenter, "model_info", {}))

            records = track_to_folder(folder, settings, source, row["expressions"], build,
                                      progress=False, checkpoint_every=self.checkpoint_every)  # fmt: skip
            write_outputs(
                records, folder, davis=self.davis, vis=self.vis,
                overlay=folder / "overlay.mp4" if self.overlays else None,
                reopen=lambda: open_source(path, **self.selection), video_id=str(row["id"]),
            )  # fmt: skip
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - one bad video never stops the run
            from hybridgl.errors import WeightsError

            if isinstance(e, WeightsError):
                raise
            return [failed_record(row, e)]
        return [{
            **row,
            "out": unit.data["folder"],
            "frames": len({r["frame"] for r in records}),
            "states": state_counts(records),
            "seconds": round(time.perf_counter() - t0, 3),
        }]  # fmt: skip

    def failed(self, unit: WorkUnit, error: BaseException) -> list[dict[str, Any]]:
        return [failed_record(unit.rows[0], error)]


# --------------------------------------------------------------------------- the driver

RESULTS = "results.jsonl"


def _record_id(rec: dict[str, Any]) -> str | None:
    return str(rec["id"]) if "id" in rec else None


def run_video_list(
    list_path: Path,
    out_dir: Path,
    spec: Any,
    task: VideoTask,
    job_settings: dict[str, Any],
    options: Any = None,
    progress: bool = True,
) -> dict[str, int]:
    """Run every video of a work list on the engine; ``{"done", "skipped", "failed"}``.

    ``job_settings`` go to ``DIR/run.json`` with the model spec
    (:func:`hybridgl.jobs.runfile.check_run_file`): a resume with other tracker, method or
    model options is refused naming them.

    Raises:
        UsageError: ``out_dir`` is a file. InputError: the list is missing or empty, or
        ``out_dir`` holds another run.
    """
    from hybridgl.errors import UsageError
    from hybridgl.jobs.engine import EngineOptions, Progress, RecordSink, run_units
    from hybridgl.jobs.records import RecordWriter, read_records
    from hybridgl.jobs.runfile import check_run_file

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    rows = read_video_rows(list_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_file(out_dir, {"job": "track", **job_settings}, spec)
    results = out_dir / RESULTS
    done = read_records(results, _record_id).done_ids(retry_failed=True)
    todo = [r for r in rows if r.id not in done]
    counts = {"done": 0, "skipped": len(rows) - len(todo), "failed": 0}
    bad = [r for r in todo if r.error]
    units = make_units([r for r in todo if not r.error], list_path.parent)
    bar = Progress(len(todo), len(units), desc="track", disable=not progress)

    with RecordWriter(results) as writer:
        sink = RecordSink(writer, bar, counts)
        try:
            sink.bad_rows(failed_record(r.head(), r.error or "bad row", "bad_record") for r in bad)
            run_units(units, task, sink, spec=spec.with_driver_env(),
                      options=options or EngineOptions())  # fmt: skip
        finally:
            bar.close()
    print(f"done {counts['done']}, skipped {counts['skipped']}, failed {counts['failed']} "
          f"({results})", flush=True)  # fmt: skip
    return counts
