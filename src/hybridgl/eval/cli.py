"""``hybridgl evaluate``: RefCOCO / RefCOCO+ / RefCOCOg (REFER layout) or custom data.

Plugged into the main CLI through :func:`register`; also runnable alone as
``python -m hybridgl.eval.cli evaluate ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hybridgl.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    add_model_args,
    build_segmenter,
    configure_logging,
    non_negative_int,
    run_guarded,
)
from hybridgl.eval.refer import DATASETS, DataError, check_dataset_split


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate on RefCOCO / RefCOCO+ / RefCOCOg or a custom dataset",
        description=(
            "Evaluate referring segmentation: one record per expression in "
            "<out>/predictions.jsonl (a rerun resumes), metrics in <out>/report.json and "
            "<out>/report.md (mIoU, oIoU, P@0.5..0.9 for the pure, guided and best-proposal "
            "masks). Exit codes: 0 ok, 3 bad data, 4 missing weights, 5 some expressions failed."
        ),
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--format",
        choices=["refer", "generic"],
        default="refer",
        help="refer: <data-root>/<dataset>/refs(<splitBy>).p + instances.json (default); "
        "generic: --instances + --expressions",
    )
    d.add_argument(
        "--data-root", metavar="DIR", help="REFER data root (holds refcoco/, refcocog/, images/)"
    )
    d.add_argument(
        "--dataset",
        help=f"{', '.join(DATASETS)} (refer); any name for generic data (default: generic)",
    )
    d.add_argument(
        "--split",
        help="refcoco, refcoco+: val, testA, testB; refcocog (umd): val, test; generic: "
        "keep rows whose 'split' matches",
    )
    d.add_argument("--instances", metavar="FILE", help="generic: COCO-style instances JSON")
    d.add_argument(
        "--expressions",
        metavar="FILE",
        help='generic: JSONL with {"image_id", "ann_id", "expression"} a line',
    )
    d.add_argument(
        "--images", metavar="DIR", help="generic: images folder (default: the instances' folder)"
    )
    s = p.add_argument_group("run")
    s.add_argument(
        "--limit", type=non_negative_int, metavar="N", help="only the first N expressions"
    )
    s.add_argument(
        "--sample", type=non_negative_int, metavar="N", help="a random subset of N expressions"
    )
    s.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default 0)")
    s.add_argument(
        "--proposals",
        choices=["sam", "gt"],
        default="sam",
        help="sam: the method's SAM proposals (default); gt: all COCO masks of the image",
    )
    s.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: eval-runs/<dataset>-<split>-<proposals>)",
    )
    s.add_argument(
        "--retry-failed", action="store_true", help="evaluate again expressions recorded as failed"
    )
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    add_model_args(p)
    p.set_defaults(func=run_evaluate)
    return p


def _load_data(args: argparse.Namespace) -> Any:
    from hybridgl.eval.refer import load_generic, load_refer

    if args.format == "generic":
        if not args.instances or not args.expressions:
            raise DataError("--format generic needs --instances and --expressions")
        return load_generic(
            args.instances,
            args.expressions,
            images_dir=args.images,
            name=args.dataset or "generic",
            split=args.split,
        )
    if not args.data_root or not args.dataset or not args.split:
        raise DataError("--format refer needs --data-root, --dataset and --split")
    check_dataset_split(args.dataset, args.split)
    return load_refer(args.data_root, args.dataset, args.split)


def _progress(quiet: bool) -> Any:
    if quiet:
        return None

    def show(images_done: int, images_total: int, done: int, failed: int) -> None:
        print(
            f"hybridgl evaluate: [{images_done}/{images_total} images] "
            f"{done} expressions done, {failed} failed",
            file=sys.stderr,
            flush=True,
        )

    return show


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``hybridgl evaluate``; returns the exit code.

    Bad data (missing data root or refs file, invalid dataset/split, unreadable files,
    an output folder of another run) raises :class:`DataError`, which the main CLI turns
    into a one-line message and exit code 3; missing weights give 4. Exit code 5 when
    some expressions failed or the data had problems, 0 otherwise.
    """
    from hybridgl.eval.runner import report_markdown, run_evaluation

    data = _load_data(args)  # before the model: bad data fails fast
    out = Path(args.out or Path("eval-runs") / f"{data.name}-{data.split}-{args.proposals}")
    if args.proposals == "gt":
        args.sam = None  # SAM (and its checkpoint) is not needed with ground-truth proposals
    segmenter = build_segmenter(args)
    try:
        report = run_evaluation(
            data,
            segmenter,
            out,
            proposals=args.proposals,
            top_k=args.top_k,
            guidance=not args.no_guidance,
            limit=args.limit,
            sample=args.sample,
            seed=args.seed,
            retry_failed=args.retry_failed,
            progress=_progress(args.quiet),
        )
    except PermissionError as e:
        raise DataError(f"cannot write to {out}: {e}") from None
    sys.stdout.write(report_markdown(report))
    sys.stdout.write(f"\nreport: {out / 'report.json'}\n")
    sys.stdout.flush()
    if report["counts"]["failed"] or report["data_problems"]:
        return EXIT_PARTIAL
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m hybridgl.eval.cli evaluate ...`` (same as ``hybridgl``)."""
    parser = argparse.ArgumentParser(prog="hybridgl")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    configure_logging(args.verbose)
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
