"""``hybridgl track VIDEO PHRASE [PHRASE ...] --out DIR``: follow phrases through a video."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hybridgl.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    UsageError,
    non_negative_int,
    positive,
)
from hybridgl.cli.engine_args import add_engine_args
from hybridgl.cli.options import (
    add_max_pixels_arg,
    add_model_args,
    add_target_args,
    build_segmenter,
    check_runtime,
    spec_from_args,
)

DESCRIPTION = """\
Follow the object each PHRASE refers to through VIDEO (a video file, a folder of frames in
the DAVIS / YouTube-VOS layout, or camera:N).

The HybridGL method grounds every phrase on a keyframe, a video tracker follows it, and the
method re-grounds every --reground-every frames (re-seeding the tracker when it disagrees and
wins, reporting the object absent when nothing matches). docs/VIDEO.md has the rules.

DIR receives frames.jsonl (one record per phrase per frame: COCO RLE mask, box, score, state
keyframe|tracked|regrounded|absent, object id, frame index) and run.json; --davis adds
DIR/davis/ (indexed PNGs), --vis DIR/results_vis.json (YouTube-VIS), --overlay a video.
A run that is interrupted continues where it stopped when started again with the same DIR:
every finished frame is kept, none is written twice, and the result is exactly that of an
uninterrupted run (the tracker's session is checkpointed every --checkpoint-every frames).
"""

RUN_FILE = "run.json"  # hybridgl.jobs.video_track's names
RECORDS_FILE = "frames.jsonl"


def register(subparsers: Any) -> argparse.ArgumentParser:
    from hybridgl.video.tracker import DEFAULT_TRACKER, TRACKERS

    p = subparsers.add_parser(
        "track",
        help="follow what phrases refer to through a video",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", metavar="VIDEO", nargs="?",
                   help="video file, frame folder, or camera:N")  # fmt: skip
    p.add_argument("expressions", metavar="PHRASE", nargs="*", help="referring phrase (quote it)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", required=True, metavar="DIR", help="results folder (resumable)")
    out.add_argument("--list", metavar="FILE", default=None,
                     help="many videos: a .jsonl or .csv work list (video, expression[s], id), "
                     "one video per work unit on --engine; DIR/videos/<id>/ per video and "
                     "DIR/results.jsonl, one summary record per video")  # fmt: skip
    out.add_argument("--overlay", metavar="OUT.mp4", help="write the video with masks drawn")
    out.add_argument("--overlays", action="store_true",
                     help="--list: write DIR/videos/<id>/overlay.mp4 for every video")  # fmt: skip
    out.add_argument("--davis", action="store_true", help="write DIR/davis/ indexed PNGs")
    out.add_argument("--vis", action="store_true", help="write DIR/results_vis.json")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--checkpoint-every", type=non_negative_int, default=25, metavar="K",
                     help="save the tracker's session every K frames, so that a resume "
                     "computes at most K frames again (0: never; default: 25)")  # fmt: skip
    m = p.add_argument_group("video method")
    m.add_argument("--tracker", default=DEFAULT_TRACKER, choices=list(TRACKERS),
                   metavar="NAME", help=f"video tracker: {', '.join(TRACKERS)} "
                   f"(default: {DEFAULT_TRACKER})")  # fmt: skip
    m.add_argument("--reground-every", type=non_negative_int, default=15, metavar="N",
                   help="run the method again every N frames (0: never; default: 15)")  # fmt: skip
    m.add_argument("--keyframe", default="0", metavar="N|auto",
                   help="frame position to ground on first (default: 0), or auto: the best "
                   "of --keyframe-candidates evenly spaced frames")  # fmt: skip
    m.add_argument("--keyframe-candidates", type=positive(int), default=5, metavar="K")
    m.add_argument("--reseed-margin", type=float, default=0.05, metavar="M",
                   help="re-seed when the method's choice beats the tracked mask by more "
                   "than M of its score (default: 0.05)")  # fmt: skip
    m.add_argument("--presence-threshold", type=float, default=0.5, metavar="P",
                   help="absent when the tracker's presence score is below P (default: "
                   "0.5; negative: off)")  # fmt: skip
    m.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        metavar="C",
        help="absent when the method's choice has a cosine below C (default: off)",
    )
    s = p.add_argument_group("frames")
    s.add_argument("--stride", type=positive(int), default=1, metavar="S")
    s.add_argument("--max-frames", type=positive(int), default=None, metavar="N")
    s.add_argument("--start", type=float, default=None, metavar="SEC")
    s.add_argument("--end", type=float, default=None, metavar="SEC")
    s.add_argument("--fps", type=positive(float), default=None, metavar="FPS",
                   help="frame rate of a frame folder (gives it times)")  # fmt: skip
    add_max_pixels_arg(s, refused="exit 3 (bad input)")
    add_target_args(p)  # --targets many/auto: one tracker object per target (docs/VIDEO.md)
    add_model_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)
    return p


def _keyframe(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--keyframe must be a frame position or auto, got {text!r}") from None
    if value < 0:
        raise UsageError(f"--keyframe must be >= 0, got {value}")
    return value


def job_settings(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The settings every video of a run shares: the tracker, the model spec and the
    options of the video method (device and threads may change between runs)."""
    options = {
        k: getattr(args, k)
        for k in (
            "reground_every",
            "keyframe",
            "keyframe_candidates",
            "reseed_margin",
            "presence_threshold",
            "min_cosine",
            "stride",
            "max_frames",
            "start",
            "end",
            "fps",
            "no_guidance",
            "top_k",
        )  # fmt: skip
    }
    return {
        "tracker": args.tracker,
        "model": {k: v for k, v in spec.to_dict().items() if k not in ("device", "threads")},
        # targets / thresholds only when not the default: runs made before them still resume
        "options": {**options, **target_settings(args)},
    }


def target_rules(args: argparse.Namespace) -> Any:
    """``--thresholds FILE`` read (None without it); a bad file is exit 3, before the models
    load."""
    if not getattr(args, "thresholds", None):
        return None
    from hybridgl.errors import InputError
    from hybridgl.targets import TargetRules, ThresholdsError

    try:
        return TargetRules.load(args.thresholds)
    except ThresholdsError as e:
        raise InputError(str(e)) from None


def target_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``targets`` and ``thresholds`` (the rules, not the file's path) as the run file
    records them: only what differs from the default ``one`` without thresholds."""
    out: dict[str, Any] = {}
    if getattr(args, "targets", "one") != "one":
        out["targets"] = args.targets
    rules = target_rules(args)
    if rules is not None:
        out["thresholds"] = rules.to_dict()
    return out


def settings(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """What makes two runs the same run (checked before resuming): the video, the phrases,
    and :func:`job_settings`."""
    src = args.video
    if not str(src).startswith("camera:"):
        src = str(Path(src).resolve())
    return {"source": src, "expressions": list(args.expressions), **job_settings(args, spec)}


def run(args: argparse.Namespace) -> int:
    if args.list is not None:
        from hybridgl.cli.track_list import run_list

        return run_list(args, track_options, selection_of, job_settings)
    if args.video is None or not args.expressions:
        raise UsageError("give VIDEO and at least one PHRASE, or --list FILE")
    if args.engine != "local":
        raise UsageError("--engine applies to --list (many videos); one video runs here")
    return run_one(args)


def selection_of(args: argparse.Namespace) -> dict[str, Any]:
    """The frame selection options (``open_source`` keywords); bad ones are a usage error."""
    from hybridgl.video.sources import Selection

    try:
        Selection(args.stride, args.max_frames, args.start, args.end)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return {"stride": args.stride, "max_frames": args.max_frames, "start": args.start,
            "end": args.end, "max_pixels": args.max_pixels or None, "fps": args.fps}  # fmt: skip


def track_options(args: argparse.Namespace) -> Any:
    from hybridgl.video.method import TrackOptions

    return TrackOptions(
        keyframe=_keyframe(args.keyframe),
        keyframe_candidates=args.keyframe_candidates,
        reground_every=args.reground_every,
        reseed_margin=args.reseed_margin,
        presence_threshold=None if args.presence_threshold < 0 else args.presence_threshold,
        min_cosine=args.min_cosine,
        top_k=args.top_k,
        guidance=not args.no_guidance,
        targets=args.targets,
    )


def run_one(args: argparse.Namespace) -> int:
    from hybridgl.errors import ExpressionError
    from hybridgl.jobs.video_track import track_to_folder, write_outputs
    from hybridgl.video.grounding import HybridGLGrounder
    from hybridgl.video.hf_trackers import build_tracker
    from hybridgl.video.method import VideoSegmenter
    from hybridgl.video.sources import open_source

    # cheap checks first: bad input fails before the models load
    for i, expr in enumerate(args.expressions):
        if not expr.strip():
            raise ExpressionError(f"phrase {i} is empty")
    if args.overlay and Path(args.overlay).suffix.lower() not in (".mp4", ".mkv", ".webm",
                                                                  ".mov", ".avi"):  # fmt: skip
        raise UsageError(f"--overlay must be a video file (.mp4, ...), got {args.overlay!r}")
    options = track_options(args)
    rules = target_rules(args)
    selection = selection_of(args)
    source = open_source(args.video, **selection)
    if args.overlay and not source.reopenable:
        raise UsageError("--overlay needs a file or folder (a camera cannot be read again)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder")
    spec = spec_from_args(args)
    check_runtime(spec)

    def build() -> tuple[Any, dict[str, Any]]:
        seg = build_segmenter(spec)
        tracker = build_tracker(args.tracker, device=spec.device, weights_dir=spec.weights_dir,
                                dtype=getattr(seg, "dtype", None))  # the spec's, as resolved  # fmt: skip
        grounder = HybridGLGrounder(
            seg,
            top_k=options.top_k,
            guidance=options.guidance,
            min_cosine=options.min_cosine,
            max_pixels=args.max_pixels or None,
            thresholds=rules,
        )
        return VideoSegmenter(grounder, tracker, options), dict(getattr(seg, "model_info", {}))

    records = track_to_folder(
        out, settings(args, spec), source, list(args.expressions), build,
        progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    write_outputs(
        records, out, davis=args.davis, vis=args.vis, overlay=args.overlay,
        reopen=lambda: open_source(args.video, **selection), video_id=Path(args.video).name,
    )  # fmt: skip
    _summary(records, len(args.expressions))
    return EXIT_OK


def _summary(records: list[dict[str, Any]], n_obj: int) -> None:
    from collections import Counter

    frames = len({r["frame"] for r in records})
    print(f"{frames} frames, {n_obj} phrase(s)")
    for oid in range(1, n_obj + 1):
        mine = [r for r in records if r["object_id"] == oid]
        counts = Counter(r["state"] for r in mine)
        expr = json.dumps(mine[0]["expression"] if mine else "", ensure_ascii=False)
        states = " ".join(f"{k}={counts.get(k, 0)}" for k in
                          ("keyframe", "tracked", "regrounded", "absent"))  # fmt: skip
        print(f"[{oid}] {expr}: {states}")
