"""``hybridgl evaluate``: RefCOCO / RefCOCO+ / RefCOCOg (REFER layout), gRefCOCO, PhraseCut
or custom data.

One split, several (``--dataset refcoco,refcoco+,refcocog --split all``) or the paper's
whole table (``--suite paper``) in one run, on the local or the Ray engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_OK, EXIT_PARTIAL, UsageError, non_negative_int
from hybridgl.cli.engine_args import add_engine_args, engine_options, job_spec
from hybridgl.cli.evaluate_video import add_video_eval_args, is_video_dataset, run_video_evaluate
from hybridgl.cli.options import add_max_pixels_arg, add_model_args
from hybridgl.eval.refer import DATASETS, DataError, check_dataset_split

#: The evaluation splits of each dataset (the paper's table), for ``--split all``.
EVAL_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
    "grefcoco": ("val", "testA", "testB"),
    "phrasecut": ("test",),
}

#: Datasets whose expressions may name zero or several objects: ``--targets`` defaults to
#: ``auto`` on them (``one``, the method as published, elsewhere).
MULTI_TARGET_DATASETS = frozenset({"grefcoco", "phrasecut"})

SUITES: dict[str, tuple[str, str]] = {"paper": ("refcoco,refcoco+,refcocog", "all")}


def add_data_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The data options (``evaluate``, ``calibrate``): which dataset and split, or custom
    data; :func:`load_data` reads them."""
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
        help=f"{', '.join(DATASETS)}, or several separated by commas (refer); any name for "
        "generic data (default: generic); or a video dataset: ref-davis17, ref-ytvos, mevis",
    )
    d.add_argument(
        "--split",
        help="refcoco, refcoco+: val, testA, testB; refcocog (umd): val, test; 'all': every "
        "evaluation split of each dataset; several separated by commas; generic: keep rows "
        "whose 'split' matches",
    )
    d.add_argument(
        "--suite",
        choices=sorted(SUITES),
        help="paper: every split of the paper's table (= --dataset refcoco,refcoco+,refcocog "
        "--split all)",
    )
    d.add_argument("--instances", metavar="FILE", help="generic: COCO-style instances JSON")
    d.add_argument(
        "--expressions",
        metavar="FILE",
        help='generic: JSONL with {"image_id", "ann_id", "expression"} a line; "ann_id" may '
        "be a list (several objects) or [] (none, with image_id)",
    )
    d.add_argument(
        "--images", metavar="DIR", help="generic: images folder (default: the instances' folder)"
    )
    return d


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate on RefCOCO / RefCOCO+ / RefCOCOg or a custom dataset",
        description=(
            "Evaluate referring segmentation: one record per expression in "
            "<out>/predictions.jsonl (a rerun resumes), metrics in <out>/report.json and "
            "<out>/report.md (mIoU, oIoU, P@0.5..0.9 for the pure, guided and best-proposal "
            "masks). Several datasets/splits (or --suite paper) run in one job, each image "
            "encoded once for all of them. Exit codes: 0 ok, 2 usage, 3 bad data, "
            "4 missing weights, 5 some expressions failed."
        ),
    )
    add_data_args(p)
    s = p.add_argument_group("run")
    s.add_argument(
        "--limit",
        type=non_negative_int,
        metavar="N",
        help="only the first N expressions (per split)",
    )
    s.add_argument(
        "--sample",
        type=non_negative_int,
        metavar="N",
        help="a random subset of N expressions (per split)",
    )
    s.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --sample (default 0)")
    s.add_argument(
        "--proposals",
        choices=["sam", "gt"],
        default="sam",
        help="sam: the method's SAM proposals (default); gt: all COCO masks of the image",
    )
    s.add_argument(
        "--targets",
        choices=["one", "many", "auto"],
        help="zero, one or many targets per expression (docs/TARGETS.md); default: auto for "
        "grefcoco and phrasecut, one (the method as published) otherwise; on the video "
        "datasets one tracked object per target, scored as their union",
    )
    s.add_argument(
        "--thresholds",
        metavar="FILE",
        help="thresholds JSON of the target rules (hybridgl calibrate writes one)",
    )
    s.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: eval-runs/<dataset>-<split>-<proposals>)",
    )
    s.add_argument(
        "--retry-failed", action="store_true", help="evaluate again expressions recorded as failed"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_pixels_arg(s)
    add_model_args(p)
    add_engine_args(p)
    add_video_eval_args(p)
    p.set_defaults(func=run_evaluate)
    return p


def _pairs(datasets: str, splits: str) -> list[tuple[str, str]]:
    names = [x.strip() for x in datasets.split(",") if x.strip()]
    wanted = [x.strip() for x in splits.split(",") if x.strip()]
    if not names or not wanted:
        raise UsageError("--dataset and --split must name at least one dataset and split")
    pairs: list[tuple[str, str]] = []
    for ds in names:
        if ds not in DATASETS:
            check_dataset_split(ds, wanted[0])  # raises the usual message
        for sp in wanted:
            todo = EVAL_SPLITS.get(ds, ()) if sp == "all" else (sp,)
            for one in todo:
                check_dataset_split(ds, one)
                if (ds, one) not in pairs:
                    pairs.append((ds, one))
    return pairs


def load_data(args: argparse.Namespace) -> list[Any]:
    """The splits the options name, loaded and checked (raises DataError, exit 3)."""
    from hybridgl.eval.datasets import load_dataset
    from hybridgl.eval.generic import load_generic

    if args.format == "generic":
        if not args.instances or not args.expressions:
            raise UsageError("--format generic needs --instances and --expressions")
        return [
            load_generic(
                args.instances,
                args.expressions,
                images_dir=args.images,
                name=args.dataset or "generic",
                split=args.split,
            )
        ]
    if args.suite:
        if args.dataset or args.split:
            raise UsageError("--suite replaces --dataset and --split; give one or the other")
        args.dataset, args.split = SUITES[args.suite]
    if not args.data_root or not args.dataset or not args.split:
        raise UsageError("--format refer needs --data-root, --dataset and --split (or --suite)")
    return [load_dataset(args.data_root, ds, sp) for ds, sp in _pairs(args.dataset, args.split)]


def _check_usable(parts: list[Any]) -> None:
    """Fail before loading models when no selected expression can be evaluated."""
    for d in parts:
        if any(not e.error for e in d.expressions):
            return
    where = ", ".join(
        f"{d.sources.get('refs') or d.sources.get('expressions')} ({d.name} {d.split})"
        for d in parts
    )
    raise DataError(f"no usable referring expression in {where}")


def evaluation_from_args(
    args: argparse.Namespace, data: Any, out: Path, options: Any, **extra: Any
) -> tuple[dict[str, Any], Any]:
    """Run ``evaluate``'s evaluation (also ``calibrate``'s) as the arguments say; returns the
    report and the model spec.

    The spec comes from the model options (no proposal model with ``--proposals gt``);
    with the local engine missing weights fail here (exit 4) before any work. ``extra``
    goes to :func:`hybridgl.eval.runner.run_evaluation`. An output folder that cannot be
    written is a :class:`DataError`.
    """
    from hybridgl.eval.runner import run_evaluation

    if args.proposals == "gt":
        args.sam = "none"  # SAM (and its checkpoint) is not needed with ground-truth proposals
    spec = job_spec(args, options)
    if options.engine == "local":
        spec.check_weights()  # missing weights: exit 4 before any work
    try:
        report = run_evaluation(
            data,
            None,
            out,
            proposals=args.proposals,
            top_k=args.top_k,
            guidance=not args.no_guidance,
            limit=args.limit,
            sample=args.sample,
            seed=args.seed,
            progress=not args.quiet,
            spec=spec,
            engine=options,
            max_pixels=args.max_pixels or None,
            **extra,
        )
    except PermissionError as e:
        raise DataError(f"cannot write to {out}: {e}") from None
    return report, spec


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``hybridgl evaluate``; returns the exit code.

    Bad data (missing data root or refs file, invalid dataset/split, unreadable files,
    no usable expression, an output folder of another run) raises :class:`DataError`,
    which the main CLI turns into a one-line message and exit code 3, before any model is
    loaded; missing weights give 4. Exit code 5 when some expressions failed or the data
    had problems, 0 otherwise.
    """
    from hybridgl.eval.report import report_markdown, suite_markdown

    if is_video_dataset(args.dataset):
        return run_video_evaluate(args)
    options = engine_options(args)
    if args.sam == "none" and args.proposals != "gt":
        raise UsageError("--sam none needs --proposals gt (there is no proposal model)")
    parts = load_data(args)  # before the model: bad data fails fast
    _check_usable(parts)
    targets = args.targets or (
        "auto" if any(d.name in MULTI_TARGET_DATASETS for d in parts) else "one"
    )
    thresholds = None
    if args.thresholds:
        from hybridgl.targets import TargetRules, ThresholdsError

        try:
            thresholds = TargetRules.load(args.thresholds)
        except ThresholdsError as e:
            raise DataError(str(e)) from None
    if len(parts) == 1:
        default_name = f"{parts[0].name}-{parts[0].split}-{args.proposals}"
    else:
        default_name = f"{args.suite or 'suite'}-{args.proposals}"
    out = Path(args.out or Path("eval-runs") / default_name)
    report, _ = evaluation_from_args(
        args,
        parts if len(parts) > 1 else parts[0],
        out,
        options,
        retry_failed=args.retry_failed,
        targets=targets,
        thresholds=thresholds,
    )
    sys.stdout.write(suite_markdown(report) if report.get("suite") else report_markdown(report))
    sys.stdout.write(f"\nreport: {out / 'report.json'}\n")
    sys.stdout.flush()
    if report["counts"]["failed"] or report["data_problems"]:
        return EXIT_PARTIAL
    return EXIT_OK
