"""Tracking one video into a folder, resumably: the job behind ``hybridgl track``.

``track_to_folder`` writes ``DIR/frames.jsonl`` (one record per phrase per frame, fsynced
as each frame finishes), ``DIR/run.json`` (the run's settings and whether it is complete)
and, every ``checkpoint_every`` frames, ``DIR/checkpoint.pt`` (the video method's bounded
session state: :mod:`hybridgl.video.checkpoint`). Started again on the same folder with the
same settings it resumes exactly: from the checkpoint (or, without one, from the first
frame) it computes the frames again without writing those already recorded, then goes on;
every record equals the uninterrupted run's, none is written twice, none is lost. With
other settings it is refused. ``write_outputs`` makes the derived outputs (DAVIS PNGs,
YouTube-VIS JSON, the overlay video) from the records. Both the single-video command and
the many-videos job (:mod:`hybridgl.jobs.video_batch`, one video per work unit) use them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridgl.errors import UsageError

__all__ = [
    "CHECKPOINT_FILE",
    "RECORDS_FILE",
    "RUN_FILE",
    "resume_point",
    "track_to_folder",
    "write_outputs",
]

RUN_FILE = "run.json"
RECORDS_FILE = "frames.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
#: Frames between two checkpoints: a resume computes at most this many frames again.
CHECKPOINT_EVERY = 25


def resume_point(records: list[dict[str, Any]], n_objects: int) -> Any:
    """The :class:`~hybridgl.video.method.ResumePoint` after the last complete frame of
    ``records``, or None to start afresh (no keyframe record yet)."""
    from hybridgl.masks import rle_to_mask
    from hybridgl.video.method import ResumePoint
    from hybridgl.video.outputs import group_by_frame

    frames = {f: r for f, r in group_by_frame(records).items() if len(r) == n_objects}
    keys = [f for f, recs in frames.items() if any(r.get("keyframe") for r in recs)]
    if not frames or not keys:
        return None
    last = max(frames)
    masks = {
        int(r["object_id"]): rle_to_mask(r["mask"]) if r["present"] else None for r in frames[last]
    }
    return ResumePoint(frame=last, keyframe=keys[0], masks=masks)


def read_run_file(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The folder's run file ({} when new); another run's folder is refused.

    Raises:
        UsageError: ``out`` is a file, or holds a run with other settings.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder")
    path = out / RUN_FILE
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable ({e}); delete it or use another folder") from None
    if not isinstance(previous, dict) or previous.get("settings") != settings:
        raise UsageError(
            f"{out} holds another run (other {_differences(previous.get('settings'), settings)}); "
            "use another --out folder or delete it"
        )
    return previous


def _differences(before: Any, now: dict[str, Any]) -> str:
    """What differs between two runs' settings, by name (an option by its own name:
    ``targets 'many' -> 'one'``); "video, phrases or options" when unreadable."""
    if not isinstance(before, dict):
        return "video, phrases or options"
    out = []
    for k in sorted(set(before) | set(now)):
        a, b = before.get(k), now.get(k)
        if a == b:
            continue
        if k == "options" and isinstance(a, dict) and isinstance(b, dict):
            defaults = {"targets": "one"}  # not recorded when the default
            out += [f"{o} {a.get(o, defaults.get(o))!r} -> {b.get(o, defaults.get(o))!r}"
                    for o in sorted(set(a) | set(b)) if a.get(o) != b.get(o)]  # fmt: skip
        elif k in ("source", "expressions", "tracker"):
            out.append(k if k != "source" else "video")
        else:
            out.append(f"{k} {a!r} -> {b!r}")
    return "; ".join(out) or "settings"


def track_to_folder(
    out: Path,
    settings: dict[str, Any],
    source: Any,
    expressions: list[str],
    build: Callable[[], tuple[Any, dict[str, Any]]],
    *,
    progress: bool = True,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> list[dict[str, Any]]:
    """Track ``expressions`` through ``source`` into ``out`` (resumable); the records.

    Args:
        out: the video's folder (created).
        settings: what makes two runs the same run (JSON-ready; compared on resume).
        source: an opened :class:`~hybridgl.video.sources.VideoSource`.
        expressions: one phrase per object.
        build: called only when there is work left: ``(VideoSegmenter, model_info)``.
        progress: a progress bar on stderr.
        checkpoint_every: frames between two checkpoints (0: none; a resume then
            computes every frame again from the first).

    Returns:
        The records of ``frames.jsonl`` (the last one of each frame and object).

    Raises:
        UsageError: ``out`` holds another run.
        VideoError: the video cannot be read (frames finished before it are kept).
    """
    import hashlib

    from hybridgl.fileio import atomic_write_json
    from hybridgl.jobs.engine import progress_bar
    from hybridgl.jobs.records import RecordWriter, read_records
    from hybridgl.video.checkpoint import load_checkpoint, save_checkpoint
    from hybridgl.video.outputs import group_by_frame, record_key

    this_run = json.loads(json.dumps(settings))  # as it reads back from run.json
    previous = read_run_file(out, this_run)
    records_path = out / RECORDS_FILE
    checkpoint = out / CHECKPOINT_FILE
    run_key = hashlib.sha256(json.dumps(this_run, sort_keys=True).encode()).hexdigest()
    # targets many/auto: the objects are made on the keyframe (several per phrase), so the
    # saved session and the recorded masks do not say which phrase each is; a resume replays
    # from the first frame (exact), writing only the frames not recorded
    per_target = settings.get("options", {}).get("targets", "one") != "one"
    if not previous.get("complete"):
        log = read_records(records_path, record_key)
        n = len(expressions)
        done_frames = {f for f, recs in group_by_frame(log.current()).items()
                       if per_target or len(recs) == n}  # a frame is committed whole  # fmt: skip
        video, model_info = build()
        resume: Any = None
        if done_frames and per_target:
            checkpoint.unlink(missing_ok=True)
            if not source.reopenable:  # no replay of a stream: start afresh
                records_path.unlink()
                done_frames = set()
        elif done_frames:
            loaded = load_checkpoint(checkpoint, run_key)
            if loaded is not None and loaded[1] <= records_path.stat().st_size:
                resume = loaded[0]  # exact: continue from the saved session
            elif not (hasattr(video.tracker, "get_state") and source.reopenable):
                # no exact way: the tracker restarts from the last recorded masks
                resume = resume_point(log.current(), n)
                if resume is None:  # nothing usable before the keyframe: start afresh
                    records_path.unlink()
                    done_frames = set()
            # else: replay from the first frame (exact), writing only the frames not done
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_FILE, {"settings": this_run, "complete": False,
                                           "model": model_info})  # fmt: skip
        bar = progress_bar(source.frame_count(), "track", "frame", progress)
        bar.update(len(done_frames))
        try:
            with RecordWriter(records_path) as writer:
                for result in video.track(source, expressions, resume=resume):
                    if result.frame not in done_frames:
                        writer.write_all(result.to_records())
                        writer.commit()
                        bar.update(1)
                    if (
                        checkpoint_every
                        and not per_target
                        and result.position
                        and result.position % checkpoint_every == 0
                    ):
                        state = video.snapshot() if hasattr(video, "snapshot") else None
                        if state is not None:
                            size = records_path.stat().st_size
                            save_checkpoint(checkpoint, state, size, run_key)
        finally:
            bar.close()
        atomic_write_json(out / RUN_FILE, {"settings": this_run, "complete": True,
                                           "model": model_info})  # fmt: skip
        checkpoint.unlink(missing_ok=True)
    return read_records(records_path, record_key).current()


def write_outputs(
    records: list[dict[str, Any]],
    out: Path,
    *,
    davis: bool = False,
    vis: bool = False,
    overlay: str | Path | None = None,
    reopen: Callable[[], Any] | None = None,
    video_id: str = "video",
) -> None:
    """The derived outputs of a finished run: ``out/davis/``, ``out/results_vis.json`` and
    the overlay video (``reopen()`` gives the source again to draw on)."""
    from hybridgl.video.outputs import write_davis_pngs, write_overlay, write_youtube_vis

    if davis:
        write_davis_pngs(records, out / "davis")
    if vis:
        write_youtube_vis(records, out / "results_vis.json", video_id=video_id)
    if overlay:
        if reopen is None:
            raise ValueError("an overlay needs the source (reopen)")
        write_overlay(reopen(), records, overlay)


def state_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many records of each state (``keyframe``, ``tracked``, ``regrounded``, ``absent``)."""
    from hybridgl.video.method import STATES

    counts = dict.fromkeys(STATES, 0)
    for r in records:
        counts[str(r.get("state"))] = counts.get(str(r.get("state")), 0) + 1
    return counts
