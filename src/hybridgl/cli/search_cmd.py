"""``hybridgl search "phrase" --db DB``: find the images and regions a phrase describes."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_CODES_HELP, EXIT_OK, UsageError, positive
from hybridgl.cli.options import add_target_args
from hybridgl.cli.search_common import add_db_arg, add_model_options, make_index, missing_extra

DESCRIPTION = """\
Search an index built by `hybridgl index` for a referring expression.

Stage 1 compares the phrase's CLIP text embedding with every stored proposal; stage 2 runs
the full method (relation and GEM coherence guidance) on the best --rerank images from their
stored state. Hits are ranked by the cosine similarity of the phrase with the region chosen
in each image (comparable across images); --min-score drops weak matches, so an empty
result means "not found". With --targets auto or many, stage 2 also drops the images
where the phrase has no target (docs/TARGETS.md) and says how many it dropped; each hit
then carries every target the phrase names in that image.

Examples:
  hybridgl search "the dog on the left" --db photos-index --top 10 --html dogs.html
  hybridgl search "a red car" --db photos-index --json cars.json --min-score 0.25
  hybridgl search "the dogs" --db photos-index --targets auto --thresholds calib/thresholds.json
"""


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # nan would silently drop every hit
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search",
        help="find the images and regions a phrase describes in an index",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("expression", metavar="PHRASE", help="referring expression (quote it)")
    add_db_arg(p)
    p.add_argument("--top", type=positive(int), default=20, metavar="N", help="hits to return (20)")
    p.add_argument(
        "--rerank",
        type=positive(int),
        default=None,
        metavar="M",
        help="images re-scored with the full method (default: --top)",
    )
    p.add_argument(
        "--min-score",
        type=_float,
        default=None,
        metavar="S",
        help="drop hits whose cosine score is below S",
    )
    p.add_argument(
        "--json", dest="json_out", metavar="OUT.json", help="write hits as JSON ('-' = stdout)"
    )
    p.add_argument("--html", dest="html_out", metavar="OUT.html", help="write a gallery page")
    p.add_argument(
        "--top-k", type=positive(int), default=3, metavar="K", help="candidates kept per hit (3)"
    )
    p.add_argument("--no-guidance", action="store_true", help="stage 2 without spatial guidance")
    add_target_args(p)  # many/auto: images where the phrase has no target are dropped
    add_model_options(p)
    p.set_defaults(func=run)
    return p


def search_document(idx: Any, hits: Any) -> dict[str, Any]:
    info = hits.info()
    return {
        "db": idx.db,
        "expression": info.get("expression"),
        "parse": info.get("parse"),
        "similarity": "cosine of the phrase's text embedding with the chosen proposal's feature",
        "commit": info.get("commit"),
        "reranked": info.get("reranked"),
        "no_target": info.get("no_target", 0),
        "timings": info.get("timings"),
        "hits": [h.to_dict() for h in hits],
    }


def run(args: argparse.Namespace) -> int:
    code = missing_extra(args)
    if code is not None:
        return code
    from hybridgl.errors import ExpressionError, InputError
    from hybridgl.fileio import atomic_write_text
    from hybridgl.names import show
    from hybridgl.targets import ThresholdsError, target_kwargs

    if not args.expression.strip():
        raise ExpressionError("the phrase is empty")
    for opt, value in (("--json", args.json_out), ("--html", args.html_out)):
        if value and value != "-" and Path(value).is_dir():
            raise UsageError(f"{opt} {value!r} is a folder; give a file name")
    try:
        target_kwargs(args.targets, args.thresholds)  # a bad file fails before the index opens
    except ThresholdsError as e:
        raise InputError(str(e)) from None
    idx = make_index(args)
    hits = idx.search(
        args.expression,
        top=args.top,
        rerank=args.rerank,
        min_score=args.min_score,
        top_k=args.top_k,
        guidance=not args.no_guidance,
        **target_kwargs(args.targets, args.thresholds),
    )
    out = sys.stderr if args.json_out == "-" else sys.stdout
    if hits.no_target:
        n = hits.no_target
        print(f"dropped {n} image{'s' if n != 1 else ''} where the phrase has no target", file=out)
    if not hits:
        print(
            "nothing found"
            + (f" (min score {args.min_score})" if args.min_score is not None else ""),
            file=out,
        )
    for h in hits:
        box = " ".join(f"{v:.0f}" for v in h.prediction.box)
        # the path escaped (newlines, terminal escapes, non-UTF-8 bytes); --json has it exact
        print(f"{h.rank:>3}  {h.similarity:.4f}  {show(h.path)}  box [{box}]", file=out)
    if args.json_out:
        text = json.dumps(search_document(idx, hits), indent=2) + "\n"
        if args.json_out == "-":
            sys.stdout.write(text)
        else:
            atomic_write_text(args.json_out, text)
    if args.html_out:
        from hybridgl.search.gallery import render_gallery

        page = render_gallery(args.expression, hits, {"db": idx.db})
        atomic_write_text(args.html_out, page)
    return EXIT_OK
