"""``hybridgl evaluate --dataset ref-davis17|ref-ytvos|mevis``: the referring video datasets.

One work unit per video expression (:class:`VideoEvalTask`, local or Ray engine): the
worker tracks the expression's frames with the video method and scores every frame
against the ground truth (J, F, J&F exactly as the DAVIS 2017 evaluation:
:mod:`hybridgl.video.metrics`), or, where the truth is withheld (Ref-YouTube-VOS
``valid``), writes its masks in the submission layout
``DIR/submission/Annotations/<video>/<expression id>/<frame>.png``, zipped into
``DIR/submission.zip`` at the end. Records go to ``DIR/predictions.jsonl`` (resumable: an
expression whose record succeeded is not done again), the summary to ``DIR/report.json``
and ``DIR/report.md`` with published training-free figures beside ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridgl.errors import error_record_fields
from hybridgl.jobs.units import UnitWorker, WorkUnit

__all__ = [
    "PUBLISHED",
    "VIDEO_EVAL_DATASETS",
    "VideoEvalTask",
    "build_video_report",
    "run_video_evaluation",
    "video_report_markdown",
]

#: ``--dataset`` names -> the loader's names (:data:`hybridgl.video.datasets.DATASETS`).
VIDEO_EVAL_DATASETS = {
    "ref-davis17": "ref-davis17",
    "ref-ytvos": "ref-youtube-vos",
    "ref-youtube-vos": "ref-youtube-vos",
    "mevis": "mevis",
}

#: Published training-free (zero-shot) figures, for reference beside ours. Only figures
#: found with their source are listed; the split is as the source gives it.
PUBLISHED: list[dict[str, Any]] = [
    {"dataset": "ref-davis17", "method": "AL-Ref-SAM 2 (GPT-4 + GroundingDINO + SAM 2)",
     "J&F": 74.2, "source": "arXiv:2408.15876, as listed by wizwand.com "
     "(www.wizwand.com/paper/68fa765a1e209131cea6c8f2); not checked against the paper's table"},
    {"dataset": "ref-youtube-vos", "method": "AL-Ref-SAM 2 (GPT-4 + GroundingDINO + SAM 2)",
     "J&F": 67.9, "source": "arXiv:2408.15876, as listed by wizwand.com "
     "(www.wizwand.com/paper/68fa765a1e209131cea6c8f2); not checked against the paper's table"},
    {"dataset": "mevis", "method": "AL-Ref-SAM 2 (GPT-4 + GroundingDINO + SAM 2)",
     "J&F": 42.8, "source": "arXiv:2408.15876, as listed by wizwand.com "
     "(www.wizwand.com/paper/68fa765a1e209131cea6c8f2; split not stated there); not "
     "checked against the paper's table"},
]  # fmt: skip


def _sample_data(sample: Any) -> dict[str, Any]:
    """A :class:`~hybridgl.video.datasets.VideoExpression` as plain JSON (crosses to Ray)."""
    return {
        "dataset": sample.dataset, "split": sample.split, "video": sample.video,
        "expression_id": sample.expression_id, "text": sample.text,
        "object_ids": sample.object_ids, "anno_ids": sample.anno_ids, "frames": sample.frames,
        "frame_dir": str(sample.frame_dir),
        "annotation_dir": str(sample.annotation_dir) if sample.annotation_dir else None,
        "mask_dict": str(sample.mask_dict) if sample.mask_dict else None,
    }  # fmt: skip


def _sample(data: dict[str, Any]) -> Any:
    from hybridgl.video.datasets import VideoExpression

    d = dict(data)
    d["frame_dir"] = Path(d["frame_dir"])
    d["annotation_dir"] = Path(d["annotation_dir"]) if d.get("annotation_dir") else None
    d["mask_dict"] = Path(d["mask_dict"]) if d.get("mask_dict") else None
    return VideoExpression(**d)


def make_units(samples: list[Any]) -> list[WorkUnit]:
    """One unit per video expression, id ``<video>/<expression id>``."""
    units = []
    for s in samples:
        key = f"{s.video}/{s.expression_id}"
        head = {"id": key, "video": s.video, "expression_id": s.expression_id,
                "expression": s.text}  # fmt: skip
        units.append(WorkUnit(key=key, rows=[head], data=_sample_data(s)))
    return units


@dataclass
class VideoEvalTask:
    """Track one video expression on a worker and score it (or write its submission)."""

    tracker: str
    options: dict[str, Any]
    submission_dir: str | None = None
    max_pixels: int | None = None
    weights_dir: str | None = None
    thresholds: dict[str, Any] | None = None  # the target rules (TargetRules.to_dict())

    def _masks(self, worker: UnitWorker, path: Path) -> dict[str, Any]:
        """MeViS's ``mask_dict.json``, read once per worker."""
        import json

        cache = getattr(worker, "mask_dicts", None)
        if cache is None:
            cache = worker.mask_dicts = {}  # type: ignore[attr-defined]
        if str(path) not in cache:
            cache[str(path)] = json.loads(path.read_text(encoding="utf-8"))
        return cache[str(path)]

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        from hybridgl.jobs.video_batch import worker_video
        from hybridgl.video.datasets import evaluate_expression, write_submission

        t0 = time.perf_counter()
        sample = _sample(unit.data)
        video = worker_video(worker, self.tracker, self.options, self.max_pixels,
                             self.weights_dir, self.thresholds)  # fmt: skip
        head = unit.rows[0]
        if sample.has_truth:
            masks = self._masks(worker, sample.mask_dict) if sample.mask_dict else None
            rec = {**head, **evaluate_expression(video, sample, masks)}
        else:
            if self.submission_dir is None:
                raise ValueError(f"{sample.video}: no ground truth and no submission folder")
            write_submission(video, sample, self.submission_dir)
            rec = {**head, "frames": len(sample.frames), "submitted": True}
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return [rec]

    def failed(self, unit: WorkUnit, error: BaseException) -> list[dict[str, Any]]:
        from hybridgl.errors import VideoError

        kind = "bad_video" if isinstance(error, VideoError) else None
        return [{**unit.rows[0], **error_record_fields(error, kind)}]


# --------------------------------------------------------------------------- report


def build_video_report(
    records: list[dict[str, Any]], settings: dict[str, Any], selected: int
) -> dict[str, Any]:
    """Means over the expressions scored: J, F, J&F (each expression weighs the same), and
    the absence error rates over frames: reported absent while the truth has the object
    (of the frames where it is present), and the reverse (of the frames where it is not)."""
    done = [r for r in records if not r.get("error")]
    scored = [r for r in done if "J&F" in r]
    failed = [r for r in records if r.get("error")]

    def mean(key: str) -> float | None:
        return sum(float(r[key]) for r in scored) / len(scored) if scored else None

    present = sum(int(r.get("present_frames", 0)) for r in scored)
    absent = sum(int(r["frames"]) - int(r.get("present_frames", 0)) for r in scored)
    awp = sum(int(r.get("absent_when_present", 0)) for r in scored)
    pwa = sum(int(r.get("present_when_absent", 0)) for r in scored)
    metrics: dict[str, Any] = {
        "J": mean("J"),
        "F": mean("F"),
        "J&F": mean("J&F"),
        "absent_when_present_rate": awp / present if present else None,
        "present_when_absent_rate": pwa / absent if absent else None,
        "frames": sum(int(r["frames"]) for r in scored),
    }
    ds = settings.get("dataset")
    return {
        **settings,
        "counts": {
            "selected": selected,
            "done": len(done),
            "scored": len(scored),
            "submitted": sum(1 for r in done if r.get("submitted")),
            "failed": len(failed),
            "pending": selected - len(records),
        },  # fmt: skip
        "metrics": metrics,
        "errors": [
            {"id": r["id"], "error": r["error"], "error_kind": r.get("error_kind")}
            for r in failed[:100]
        ],  # fmt: skip
        "published": [p for p in PUBLISHED if p["dataset"] == ds],
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def video_report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: ours, then the published figures with their sources."""
    m, c = report["metrics"], report["counts"]
    lines = [
        f"# {report.get('dataset')} {report.get('split')} (tracker {report.get('tracker')})",
        "",
        f"expressions: {c['selected']} selected, {c['scored']} scored, {c['submitted']} "
        f"written for submission, {c['failed']} failed, {c['pending']} pending",
        "",
    ]
    if c["scored"]:
        lines += [
            "| J | F | J&F | absent while present | present while absent | frames |",
            "|---|---|---|---|---|---|",
            f"| {_pct(m['J'])} | {_pct(m['F'])} | {_pct(m['J&F'])} | "
            f"{_pct(m['absent_when_present_rate'])} | {_pct(m['present_when_absent_rate'])} | "
            f"{m['frames']} |",
            "",
        ]
    if report.get("submission"):
        lines += [
            f"The ground truth of this split is withheld: the masks are in "
            f"{report['submission']} (Annotations/<video>/<expression id>/<frame>.png) for "
            "the evaluation server; no score of ours is computed here.",
            "",
        ]
    if report["published"]:
        lines += ["Published training-free figures (for reference; J&F in %):", "",
                  "| method | J&F | source |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {p['method']} | {p['J&F']} | {p['source']} |" for p in report["published"]]
    else:
        lines.append("No published training-free figure was found for this dataset (unchecked).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the job

PREDICTIONS = "predictions.jsonl"


def _zip_submission(folder: Path, target: Path) -> None:
    """``target``: every PNG under ``folder`` (paths from ``Annotations/``), written
    atomically."""
    import os
    import zipfile

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, path.relative_to(folder).as_posix())
    os.replace(tmp, target)


def run_video_evaluation(
    dataset: str,
    root: Path,
    split: str,
    out: Path,
    spec: Any,
    task: VideoEvalTask,
    settings: dict[str, Any],
    *,
    engine: Any = None,
    limit: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate (or write the submission of) every expression of a split; the report.

    Raises:
        VideoError: the dataset's files are missing or malformed (exit 3), before any model
            is built. RunConflictError: ``out`` holds a run with other settings.
    """
    import json

    from hybridgl.errors import VideoError
    from hybridgl.fileio import atomic_write_json, atomic_write_text
    from hybridgl.jobs.engine import EngineOptions, Progress, RecordSink, run_units
    from hybridgl.jobs.records import RecordWriter, read_records
    from hybridgl.jobs.runfile import check_run_file
    from hybridgl.video.datasets import load

    name = VIDEO_EVAL_DATASETS[dataset]
    samples = load(name, root, split)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise VideoError(f"{dataset} {split}: no expression to evaluate")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"job": "evaluate-video", "dataset": name, "split": split, **settings}
    check_run_file(out, {**settings, "limit": limit}, spec)
    if not all(s.has_truth for s in samples):
        task.submission_dir = str((out / "submission").resolve())
    path = out / PREDICTIONS

    def key(r: dict[str, Any]) -> str | None:
        return str(r["id"]) if "id" in r else None

    done = read_records(path, key).done_ids(retry_failed=retry_failed)
    units = [u for u in make_units(samples) if u.key not in done]
    bar = Progress(len(units), len(units), desc="evaluate", disable=not progress)
    with RecordWriter(path) as writer:
        sink = RecordSink(writer, bar)
        try:
            run_units(units, task, sink, spec=spec.with_driver_env(),
                      options=engine or EngineOptions())  # fmt: skip
        finally:
            bar.close()
    wanted = {u.key for u in make_units(samples)}
    records = [r for r in read_records(path, key).current() if r["id"] in wanted]
    report = build_video_report(records, settings, len(samples))
    if task.submission_dir is not None and not report["counts"]["pending"]:
        _zip_submission(Path(task.submission_dir), out / "submission.zip")
        report["submission"] = str(out / "submission.zip")
    atomic_write_json(out / "report.json", json.loads(json.dumps(report, default=str)))
    atomic_write_text(out / "report.md", video_report_markdown(report))
    return report
