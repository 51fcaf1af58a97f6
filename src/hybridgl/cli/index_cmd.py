"""``hybridgl index PATH... --db DB``: add images to a search index."""

from __future__ import annotations

import argparse
from typing import Any

from hybridgl.cli.common import (
    EXIT_CODES_HELP,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_PARTIAL,
    UsageError,
    eprint,
)
from hybridgl.cli.engine_args import add_engine_args, engine_options
from hybridgl.cli.options import add_max_pixels_arg
from hybridgl.cli.search_common import add_db_arg, add_model_options, make_index, missing_extra

DESCRIPTION = """\
Index images for `hybridgl search`: each image's proposals, their hybrid features and its
GEM tokens go into a LanceDB database (a folder, or an object-store URI).

PATH is a folder (searched recursively), an image file, or a list file (one path a line).
Unchanged images (same SHA-256) are skipped, changed ones re-encoded; an interrupted run
resumes where it stopped. Unreadable images are recorded and skipped (exit code 5).

With --engine ray the images are encoded on a Ray cluster (one model per worker, the
jobs layer of `hybridgl batch`); their rows come back and this process writes them.

Examples:
  hybridgl index ~/photos --db photos-index
  hybridgl index val2017/ --db coco-index --proposals-from instances_val2017.json
  hybridgl index --db photos-index --prune --optimize
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "index",
        help="add images to a search index (LanceDB)",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", metavar="PATH", nargs="*", help="folder, image or list file")
    add_db_arg(p)
    p.add_argument(
        "--proposals-from",
        metavar="COCO.json",
        help="use the masks of this COCO instances JSON (matched by file name) instead of SAM",
    )
    p.add_argument("--prune", action="store_true", help="remove entries whose file is gone")
    p.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="PATH_OR_ID",
        help="remove an image (file path or image id) or every image under a folder from "
        "the index (repeat for several; '.' and '' are refused)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --remove: list what would be removed and change nothing",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the index for what a crashed run can leave (writes past the last "
        "commit, duplicated or missing rows); exit 3 when it finds a problem",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what --check finds without re-encoding: roll back uncommitted writes, "
        "drop duplicate rows; images that cannot be made whole are removed (the next "
        "index run encodes them again)",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="empty the index and re-encode everything (needed to change models or options)",
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="compact the tables and build the IVF vector index (large indexes; "
        "an index run also builds it by itself past 50,000 proposals)",
    )
    p.add_argument(
        "--no-gem",
        action="store_true",
        help="store no GEM tokens (about 0.8 MB an image less; search then skips the "
        "coherence guidance)",
    )
    p.add_argument(
        "--gem-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="precision of the stored GEM tokens (float32: re-ranking bit-identical to "
        "`hybridgl segment`, twice the bytes; default float16)",
    )
    p.add_argument(
        "--json", dest="json_out", metavar="OUT.json", help="write the run's report as JSON"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_max_pixels_arg(p, refused="a recorded failure")
    add_model_options(p)
    add_engine_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from hybridgl.names import show

    code = missing_extra(args)
    if code is not None:
        return code
    if args.check or args.repair:
        if args.paths or args.prune or args.optimize or args.rebuild or args.remove:
            raise UsageError("--check / --repair run alone (no PATH, --prune, --optimize)")
        return _check(args)
    if args.dry_run and not args.remove:
        raise UsageError("--dry-run goes with --remove")
    if args.remove:
        if args.paths or args.prune or args.optimize or args.rebuild:
            raise UsageError("--remove runs alone (no PATH, --prune, --optimize, --rebuild)")
        return _remove(args)
    if not args.paths and not (args.prune or args.optimize or args.rebuild):
        raise UsageError("give at least one PATH to index (or --prune / --optimize)")
    if args.sam == "none" and not args.proposals_from and (args.paths or args.rebuild):
        raise UsageError(
            "--sam none builds no SAM, so the proposals must come from --proposals-from "
            "COCO.json (or choose a SAM: --sam vit_h, vit_l or vit_b)"
        )
    engine = engine_options(args)
    idx = make_index(args, gem=not args.no_gem, gem_dtype=args.gem_dtype)
    report = None
    if args.paths or args.prune or args.rebuild:
        report = idx.add(
            args.paths,
            progress=not args.no_progress,
            proposals_from=args.proposals_from,
            prune=args.prune,
            rebuild=args.rebuild,
            engine=engine,
            max_pixels=args.max_pixels or None,  # 0: no limit of ours
        )
        print(
            f"indexed {report.indexed}, skipped {report.skipped} unchanged, pruned {report.pruned}, "
            f"failed {len(report.failed)}, {report.proposals} proposals, "
            f"time {report.seconds:.1f} s ({show(args.db)})",
            flush=True,
        )
    optimized = None
    if args.optimize:
        optimized = idx.optimize()
        eprint(
            f"hybridgl: optimized {args.db}: "
            + ("IVF index built" if optimized["ann_built"] else "tables compacted")
            + f" ({optimized['proposals']} proposals)"
        )
    if args.json_out:
        from hybridgl.fileio import atomic_write_json

        doc = {"db": args.db, "report": report.to_dict() if report else None, "optimize": optimized}
        atomic_write_json(args.json_out, doc)
    return EXIT_PARTIAL if report is not None and report.failed else EXIT_OK


def _check(args: argparse.Namespace) -> int:
    """``--check`` / ``--repair``: one line per problem and per fix; exit 3 if any remain."""
    from hybridgl.names import show
    from hybridgl.search.index import Index

    report = Index(args.db).verify(repair=args.repair)
    for problem in report["problems"]:
        print(f"problem: {show(problem)}", flush=True)
    remaining = report["problems"]
    if "repair" in report:
        done = report["repair"]
        for name, (committed, latest) in done["rolled_back"].items():
            print(f"rolled back {name}: version {latest} -> committed {committed}")
        print(
            f"repaired: {len(done['fixed'])} image(s) de-duplicated, {len(done['removed'])} "
            f"removed (re-encoded by the next index run), {done['orphans_deleted']} "
            "orphaned image id(s) of proposals deleted",
            flush=True,
        )
        remaining = report["problems_after_repair"]
    if args.json_out:
        from hybridgl.fileio import atomic_write_json

        atomic_write_json(args.json_out, {"db": args.db, "check": report})
    if remaining:
        eprint(
            f"hybridgl: error: index {show(args.db)} has {len(remaining)} problem(s)"
            + ("" if args.repair else "; fix them with --repair (or rebuild with --rebuild)")
        )
        return EXIT_INPUT
    print(f"index {show(args.db)} is consistent", flush=True)
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    """``--remove``: one line per image removed (or that would be, with ``--dry-run``)."""
    from hybridgl.names import show
    from hybridgl.search.index import Index

    idx = Index(args.db)
    try:
        n = idx.remove(args.remove, dry_run=args.dry_run)
    except ValueError as e:
        raise UsageError(str(e)) from None
    verb = "would remove" if args.dry_run else "removed"
    for image_id, path in idx.last_removed:
        print(f"{verb} {image_id}  {show(path)}")
    print(f"{verb} {n} image(s) from {show(args.db)}", flush=True)
    return EXIT_OK
