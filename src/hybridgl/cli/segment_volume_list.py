"""``hybridgl segment-volume --list FILE --out DIR [--engine local|ray]``: many volumes.

One volume per work unit on the batch engines (:mod:`hybridgl.jobs.volumes`); the same
volume options as the single-volume command. Exit 5 when some volume failed (its record
says why), as ``batch``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hybridgl.cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, eprint


def add_list_args(p: argparse.ArgumentParser) -> None:
    from hybridgl.cli.engine_args import add_engine_args

    g = p.add_argument_group("many volumes")
    g.add_argument(
        "--list",
        metavar="FILE",
        default=None,
        help="JSONL (or CSV) of volume, expression[, id] rows: one volume per work unit, "
        "outputs in DIR/volumes/<id>/, one record per volume in DIR/volumes.jsonl (resumable)",
    )
    g.add_argument(
        "--seg-each",
        action="store_true",
        help="with --list: also DIR/volumes/<id>/seg.dcm for each DICOM volume",
    )
    g.add_argument("--no-progress", action="store_true", help="with --list: no progress bar")
    add_engine_args(p)


def run_list(args: argparse.Namespace) -> int:
    from hybridgl.cli.engine_args import engine_options
    from hybridgl.cli.options import check_runtime, spec_from_args
    from hybridgl.cli.volume_options import check_options, volume_options
    from hybridgl.jobs.volumes import run_volume_list

    if args.scan is not None or args.expression is not None:
        raise UsageError("--list takes the volumes and phrases from FILE: give no SCAN")
    for flag, given in (("--seg", args.seg), ("--nifti", args.nifti)):
        if given is not None:
            raise UsageError(f"{flag} names one file; with --list use --seg-each (or nothing)")
    if not Path(args.list).is_file():
        raise UsageError(f"--list {args.list!r} is not a file")
    check_options(args)
    engine = engine_options(args)
    spec = spec_from_args(args)
    check_runtime(spec)
    res = run_volume_list(
        args.list,
        args.out,
        spec,
        volume_options(args),
        engine,
        show_progress=not args.no_progress,
    )
    eprint(
        f"{res['volumes']} volumes: {res['done']} done, {res['failed']} failed, "
        f"{res['skipped']} done before; engine {res['engine']}"
    )
    print(json.dumps(res), flush=True)
    return EXIT_PARTIAL if res["failed"] else EXIT_OK
