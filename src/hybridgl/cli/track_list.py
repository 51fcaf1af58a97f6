"""``hybridgl track --list FILE --out DIR [--engine local|ray]``: many videos, one per
work unit (the job: :mod:`hybridgl.jobs.video_batch`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_OK, EXIT_PARTIAL, UsageError
from hybridgl.cli.engine_args import engine_options, job_spec


def run_list(
    args: argparse.Namespace,
    track_options: Callable[[argparse.Namespace], Any],
    selection_of: Callable[[argparse.Namespace], dict[str, Any]],
    job_settings: Callable[[argparse.Namespace, Any], dict[str, Any]],
) -> int:
    """Exit 0, or 5 when some videos failed (the option readers of ``track`` given)."""
    from hybridgl.jobs.video_batch import VideoTask, run_video_list

    if args.video is not None or args.expressions:
        raise UsageError("give VIDEO PHRASE ... or --list FILE, not both")
    if args.overlay:
        raise UsageError("--overlay names one video's output; with --list use --overlays")
    engine = engine_options(args)
    spec = job_spec(args, engine)
    options = track_options(args)
    selection = selection_of(args)
    shared = job_settings(args, spec)
    out = Path(args.out)
    task = VideoTask(
        out_dir=str(out.resolve()),
        tracker=args.tracker,
        settings=shared,
        options=dataclasses.asdict(options),
        selection=selection,
        davis=args.davis,
        vis=args.vis,
        overlays=args.overlays,
        weights_dir=spec.weights_dir,
        checkpoint_every=args.checkpoint_every,
        thresholds=shared["options"].get("thresholds"),  # the rules, read by job_settings
    )
    outputs = {"davis": args.davis, "vis": args.vis, "overlays": args.overlays}
    # the model is recorded and compared by the run file itself (the spec)
    recorded = {k: v for k, v in shared.items() if k != "model"}
    counts = run_video_list(
        Path(args.list), out, spec, task, {**recorded, "outputs": outputs}, engine,
        progress=not args.no_progress,
    )  # fmt: skip
    return EXIT_PARTIAL if counts["failed"] else EXIT_OK
