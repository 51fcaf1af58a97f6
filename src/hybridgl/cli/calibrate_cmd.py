"""``hybridgl calibrate``: fit the no-target and several-target thresholds on labelled data.

One evaluation pass (local or Ray, resumable) with the no-target tests open stores every
expression's evidence and candidate pool; each threshold is then swept offline on the
GRES metrics (:mod:`hybridgl.eval.calibrate`). Writes ``thresholds.json`` for
``--thresholds FILE`` / ``thresholds=``, the tables and a plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_OK, UsageError, non_negative_int, positive
from hybridgl.cli.engine_args import add_engine_args, engine_options
from hybridgl.cli.evaluate import _check_usable, add_data_args, evaluation_from_args, load_data
from hybridgl.cli.options import add_max_pixels_arg, add_model_args
from hybridgl.errors import DataError

DESCRIPTION = """\
Fit the thresholds of --targets many/auto (docs/TARGETS.md) on a labelled split, e.g.
  hybridgl calibrate --data-root data --dataset grefcoco --split val --out calib/
The method runs once per expression (DIR/predictions.jsonl; a rerun resumes, and a
finished pass is swept again without running the models); each threshold (floor,
contrast_margin, margin, cosine_margin) is then swept over a grid and fitted on the
GRES metrics (gIoU, cIoU, N-acc, T-acc). Prints the trade-off and writes
DIR/thresholds.json (for --thresholds FILE), DIR/calibration.md and .json (the
tables) and DIR/calibration.png (the plot; needs the plot extra).
Exit codes: 0 ok, 2 usage, 3 bad data, 4 missing weights."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate",
        help="fit the no-target and several-target thresholds on labelled data",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_args(p)
    c = p.add_argument_group("calibration")
    c.add_argument(
        "--targets",
        choices=["auto", "many"],
        default="auto",
        help="the mode the thresholds are fitted for (default auto)",
    )
    c.add_argument(
        "--thresholds",
        metavar="FILE",
        help="start from these thresholds (pool size and contrast prompts are kept as they "
        "are; default: the built-in defaults)",
    )
    c.add_argument(
        "--objective",
        choices=["gIoU", "cIoU", "balanced"],
        default="gIoU",
        help="what the fit maximises: gIoU (default, the GRES ranking metric), cIoU, or "
        "balanced (the mean of N-acc and T-acc)",
    )
    c.add_argument(
        "--points",
        type=positive(int),
        default=21,
        metavar="N",
        help="grid points per threshold (quantiles of the data; default 21)",
    )
    c.add_argument("--no-plot", action="store_true", help="do not draw calibration.png")
    c.add_argument(
        "--out", metavar="DIR", help="output folder (default: calib-runs/<dataset>-<split>)"
    )
    c.add_argument(
        "--limit", type=non_negative_int, metavar="N", help="only the first N expressions"
    )
    c.add_argument("--sample", type=non_negative_int, metavar="N", help="a random N expressions")
    c.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default 0)")
    c.add_argument(
        "--proposals",
        choices=["sam", "gt"],
        default="sam",
        help="sam: the method's proposals (default); gt: all COCO masks of the image",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_pixels_arg(c)
    add_model_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from hybridgl.cli.evaluate_video import is_video_dataset
    from hybridgl.eval.calibrate import calibrate, open_rules, read_samples, summary_text
    from hybridgl.eval.runner import PREDICTIONS
    from hybridgl.targets import TargetRules, ThresholdsError

    if is_video_dataset(args.dataset):
        raise UsageError("calibrate fits the image target rules; video datasets are not supported")
    options = engine_options(args)
    if args.sam == "none" and args.proposals != "gt":
        raise UsageError("--sam none needs --proposals gt (there is no proposal model)")
    parts = load_data(args)
    if len(parts) != 1:
        raise UsageError("calibrate fits one split at a time (one --dataset, one --split)")
    _check_usable(parts)
    data = parts[0]
    try:
        base = TargetRules.load(args.thresholds) if args.thresholds else TargetRules()
    except ThresholdsError as e:
        raise DataError(str(e)) from None
    out = Path(args.out or Path("calib-runs") / f"{data.name}-{data.split}")
    report, spec = evaluation_from_args(
        args, data, out, options, targets=args.targets, thresholds=open_rules(base),
        calibration=True,
    )  # fmt: skip
    samples = read_samples(out / PREDICTIONS)
    if not samples:
        raise DataError(f"no expression of {data.name} {data.split} could be evaluated")
    result = calibrate(
        samples,
        base,
        out,
        objective=args.objective,
        points=args.points,
        source={
            "dataset": data.name,
            "split": data.split,
            "targets": args.targets,
            "proposals": args.proposals,
            "model": spec.model_info(),
        },
        plot=not args.no_plot,
    )
    failed = report["counts"]["failed"]
    if failed:
        print(f"hybridgl: {failed} expressions failed and are left out", file=sys.stderr)
    sys.stdout.write(summary_text(result))
    sys.stdout.flush()
    return EXIT_OK
