"""``hybridgl evaluate --dataset ref-davis17|ref-ytvos|mevis``: the referring video datasets
(the job: :mod:`hybridgl.jobs.video_eval`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, non_negative_int


def add_video_eval_args(parser: argparse.ArgumentParser) -> None:
    """The video method's options of ``evaluate`` (used only with a video dataset)."""
    from hybridgl.video.tracker import DEFAULT_TRACKER, TRACKERS

    g = parser.add_argument_group(
        "video datasets (ref-davis17, ref-ytvos, mevis; docs/EVALUATION.md)"
    )
    g.add_argument("--tracker", default=DEFAULT_TRACKER, choices=list(TRACKERS), metavar="NAME",
                   help=f"video tracker (default: {DEFAULT_TRACKER})")  # fmt: skip
    g.add_argument("--reground-every", type=non_negative_int, default=15, metavar="N",
                   help="re-ground every N frames (0: never; default: 15)")  # fmt: skip


def is_video_dataset(name: str | None) -> bool:
    from hybridgl.jobs.video_eval import VIDEO_EVAL_DATASETS

    return name in VIDEO_EVAL_DATASETS


def run_video_evaluate(args: argparse.Namespace) -> int:
    """Exit 0, or 5 when some expressions failed."""
    from hybridgl.cli.engine_args import engine_options, job_spec
    from hybridgl.cli.track import target_rules
    from hybridgl.jobs.video_eval import VideoEvalTask, run_video_evaluation, video_report_markdown
    from hybridgl.video.method import TrackOptions

    if not args.data_root or not args.split:
        raise UsageError(f"--dataset {args.dataset} needs --data-root and --split")
    if args.proposals != "sam" or args.sample:
        raise UsageError("--proposals gt and --sample are for the image datasets")
    rules = target_rules(args)  # a bad --thresholds file: exit 3 before the models load
    engine = engine_options(args)
    spec = job_spec(args, engine)
    options = TrackOptions(reground_every=args.reground_every, top_k=args.top_k,
                           guidance=not args.no_guidance, targets=args.targets or "one")  # fmt: skip
    import dataclasses

    opts = dataclasses.asdict(options)
    thresholds = rules.to_dict() if rules is not None else None
    task = VideoEvalTask(tracker=args.tracker, options=opts, max_pixels=args.max_pixels or None,
                         weights_dir=spec.weights_dir, thresholds=thresholds)  # fmt: skip
    out = Path(args.out or Path("eval-runs") / f"{args.dataset}-{args.split}")
    settings: dict[str, Any] = {"tracker": args.tracker, "options": opts}
    if thresholds is not None:
        settings["thresholds"] = thresholds
    report: dict[str, Any] = run_video_evaluation(
        args.dataset, Path(args.data_root), args.split, out, spec, task, settings,
        engine=engine, limit=args.limit, retry_failed=args.retry_failed,
        progress=not args.quiet,
    )  # fmt: skip
    sys.stdout.write(video_report_markdown(report))
    sys.stdout.write(f"\nreport: {out / 'report.json'}\n")
    sys.stdout.flush()
    return EXIT_PARTIAL if report["counts"]["failed"] else EXIT_OK
