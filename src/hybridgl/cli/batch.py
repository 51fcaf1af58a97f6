"""``hybridgl batch INPUT --out DIR``: many (image, expression) rows, resumable.

The job itself is :mod:`hybridgl.jobs.batch`; this module turns the arguments into its
settings and the model options into one :class:`~hybridgl.spec.ModelSpec`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_CODES_HELP, EXIT_OK, EXIT_PARTIAL
from hybridgl.cli.engine_args import add_engine_args, engine_options, job_spec
from hybridgl.cli.options import (
    add_max_pixels_arg,
    add_model_args,
    add_target_args,
)
from hybridgl.jobs.batch import BatchSettings, run_batch

DESCRIPTION = """\
Segment many (image, expression) rows and append one JSON record per row to
DIR/results.jsonl, with the mask as PNG under DIR/masks/.

INPUT is one of:
  - a .jsonl file, one object per line: {"image": PATH, "expression": TEXT, "id": ID}
  - a .csv file with a header row and the columns image, expression and optionally id
  - a folder of images, segmented with every --expression
Image paths are relative to the folder of the input file. "id" is optional; without it
a row's id is "<image>::<expression>". An optional "proposals" field/column names a
.npy file of N x H x W bool masks used instead of SAM for that row's image; an
optional "targets" field/column (one, many, auto) answers that row in its own target
mode instead of --targets.

With --targets many or auto (or a row's own), every target's mask is written as
DIR/masks/<id>.target<K>.png beside the union DIR/masks/<id>.png, and a phrase that
names nothing in the image is recorded with "found": false and no mask PNG (not an
error). docs/TARGETS.md.

Rows are grouped by image, so each image is encoded once. Rerunning with the same
--out skips rows whose id already has a successful record in results.jsonl; failed
rows are tried again (the last record of an id is the one that counts). A row that
fails (unreadable image, empty expression, ...) is recorded with an "error" field and
the run goes on; the exit code is then 5.
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch",
        help="segment many (image, expression) rows from JSONL/CSV or a folder; resumable",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="a .jsonl or .csv file, or a folder of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--expression",
        "-e",
        dest="expressions",
        action="append",
        default=[],
        metavar="TEXT",
        help="expression applied to every image of a folder INPUT (repeatable)",
    )
    p.add_argument(
        "--overlays",
        action="store_true",
        help="also write an overlay JPEG per row under DIR/overlays/",
    )
    p.add_argument(
        "--no-polygons",
        action="store_true",
        help="leave the polygons out of results.jsonl (RLE only; smaller files)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("jsonl", "coco"),
        default=None,
        help="coco: also write DIR/results.coco.json, a COCO results file of every row done "
        "(one entry per row, or per target with --targets many/auto; image_id from the row's image_id field, else its image "
        "path). results.jsonl is always written",
    )
    add_target_args(p)
    add_max_pixels_arg(p)
    add_model_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``hybridgl batch``: exit 0, or 5 when some rows failed."""
    options = engine_options(args)
    spec = job_spec(args, options)
    counts = run_batch(
        Path(args.input),
        Path(args.out),
        spec,
        BatchSettings(
            expressions=list(args.expressions),
            top_k=args.top_k,
            guidance=not args.no_guidance,
            polygons=not args.no_polygons,
            overlays=bool(args.overlays),
            formats=tuple(args.formats or ()),
            max_pixels=args.max_pixels or None,  # 0: no limit of ours
            progress=not args.no_progress,
            targets=args.targets,
            thresholds=args.thresholds,
        ),
        options,
    )
    return EXIT_PARTIAL if counts.failed else EXIT_OK
