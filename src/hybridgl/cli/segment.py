"""``hybridgl segment IMAGE EXPRESSION [EXPRESSION ...]``: one image, one or more phrases."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hybridgl.cli.common import EXIT_CODES_HELP, EXIT_OK, UsageError
from hybridgl.cli.options import (
    add_max_pixels_arg,
    add_model_args,
    add_target_args,
    build_segmenter,
    predict_options,
)

OVERLAY_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

DESCRIPTION = """\
Segment the object each EXPRESSION refers to in IMAGE.

The image is encoded once and every expression is answered from that encoding.
A one-line summary per expression goes to stdout (to stderr with --json -).

With several expressions, --mask and --overlay write one file per expression,
numbered in the order given: --mask out.png -> out_0.png, out_1.png, ...
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment",
        help="segment the object an expression refers to in one image",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image",
        metavar="IMAGE",
        help="image file (JPEG, PNG, ...), or a single-slice DICOM file (hybridgl[medical])",
    )
    p.add_argument(
        "expressions",
        metavar="EXPRESSION",
        nargs="+",
        help='referring expression, e.g. "the man on the left" (quote it)',
    )
    add_target_args(p)
    out = p.add_argument_group("outputs")
    out.add_argument("--mask", metavar="OUT.png", help="write the mask as an 8-bit PNG (0 / 255)")
    out.add_argument(
        "--overlay",
        metavar="OUT.jpg",
        help="write the image with the mask, box and expression drawn on it "
        f"({', '.join(OVERLAY_EXTENSIONS)})",
    )
    out.add_argument(
        "--json",
        dest="json_out",
        metavar="OUT.json",
        help="write the results as JSON, one record per expression in the format of "
        "docs/FORMATS.md (mask RLE, polygons, box, score, candidates, parse); '-' writes to stdout",
    )
    p.add_argument(
        "--proposals",
        metavar="MASKS.npy",
        help="use these N x H x W bool masks (.npy) instead of SAM's proposals",
    )
    add_max_pixels_arg(p, refused="exit 3 (bad input)")
    add_window_arg(p)
    add_model_args(p)
    p.set_defaults(func=run)
    return p


def add_window_arg(p: argparse.ArgumentParser) -> None:
    """``--window`` for DICOM / NIfTI input (docs/MEDICAL.md, "Windows")."""
    from hybridgl.medical.window import WINDOW_HELP

    p.add_argument(
        "--window",
        default=None,
        metavar="WINDOW",
        help=f"DICOM/NIfTI only: {WINDOW_HELP}; recorded in the outputs",
    )


def numbered_path(path: str | Path, index: int, count: int) -> Path:
    """``out.png`` itself for one expression, ``out_<index>.png`` for several."""
    p = Path(path)
    if count <= 1:
        return p
    return p.with_name(f"{p.stem}_{index}{p.suffix}")


def _check_outputs(args: argparse.Namespace) -> None:
    if args.mask is not None and Path(args.mask).suffix.lower() != ".png":
        raise UsageError(f"--mask must name a .png file, got {args.mask!r}")
    if args.overlay is not None and Path(args.overlay).suffix.lower() not in OVERLAY_EXTENSIONS:
        raise UsageError(
            f"--overlay must end in one of {', '.join(OVERLAY_EXTENSIONS)}, got {args.overlay!r}"
        )
    for opt, value in (
        ("--mask", args.mask),
        ("--overlay", args.overlay),
        ("--json", args.json_out),
    ):
        if value is None or value == "-":
            continue
        target = Path(value)
        if target.is_dir():
            raise UsageError(f"{opt} {value!r} is a folder; give a file name")
        # the nearest existing folder above the file: missing ones are created on writing
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"{opt} {value!r}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            # found before the models load and inference run; the same exit code (1) as
            # the write itself would give
            raise PermissionError(errno.EACCES, f"{opt}: cannot write into folder", str(parent))


def summary_line(index: int, record: dict[str, Any]) -> str:
    """One human-readable line for one expression's result."""
    expr = json.dumps(record["expression"], ensure_ascii=False)
    if not record["found"]:
        rule = (record.get("evidence") or {}).get("rule")
        if rule in (None, "no_proposal"):
            return f"[{index}] {expr}: no mask (the image has no proposals)"
        ev = record["evidence"]
        cos = ev.get("cosine")
        return (
            f"[{index}] {expr}: not found in this image ({rule}; cosine "
            f"{'-' if cos is None else f'{cos:.3f}'}, floor {ev.get('floor')})"
        )
    box = ", ".join(f"{v:g}" for v in record["box"])
    parse = record.get("parse") or {}
    extra = f"np={json.dumps(parse.get('noun_phrase', ''), ensure_ascii=False)}"
    if parse.get("relation", "none") != "none":
        extra += f" relation={parse['relation']}"
    if parse.get("direction", "none") != "none":
        extra += f" direction={parse['direction']}"
    return (
        f"[{index}] {expr}: score={record['score']:.4f} box=[{box}] "
        f"area={record['area']} proposal={record['index']} {extra}"
        + (f" targets={len(record['targets'])}" if len(record.get("targets") or []) > 1 else "")
    )


def format_document(doc: dict[str, Any]) -> str:
    """JSON with the top level indented and each result on one line (polygons stay short)."""
    head = {k: v for k, v in doc.items() if k != "results"}
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in doc.get("results", [])]
    body = json.dumps(head, ensure_ascii=False, indent=2, allow_nan=False)
    results = "[\n" + ",\n".join("    " + line for line in lines) + "\n  ]" if lines else "[]"
    return body[:-2] + ',\n  "results": ' + results + "\n}\n"


def _is_medical(path: str) -> bool:
    from hybridgl.medical import is_medical_path

    return is_medical_path(path)


def run(args: argparse.Namespace) -> int:
    from hybridgl.errors import ExpressionError, ImageError
    from hybridgl.fileio import atomic_write_text
    from hybridgl.images import load_image
    from hybridgl.masks import save_mask_png
    from hybridgl.names import safe_text
    from hybridgl.proposal_files import load_proposals_file
    from hybridgl.viz import overlay, save_image

    # Cheap checks first, so that bad input fails before the models load.
    _check_outputs(args)
    if args.sam == "none" and not args.proposals:
        raise UsageError("--sam none needs --proposals (there is no proposal model)")
    for i, expr in enumerate(args.expressions):
        if not expr.strip():
            raise ExpressionError(f"expression {i} is empty")
    max_pixels = args.max_pixels or None  # 0: no limit of ours
    medical: dict[str, Any] | None = None
    if _is_medical(args.image):
        from hybridgl.medical.load import load_medical_image, window_spec

        try:
            window_spec(args.window)
        except ImageError as e:
            raise UsageError(f"--window: {e}") from None
        image, medical = load_medical_image(args.image, window=args.window, max_pixels=max_pixels)
    elif args.window is not None:
        raise UsageError("--window applies to DICOM and NIfTI input only")
    else:
        image = load_image(args.image, max_pixels=max_pixels)
    proposals = (
        load_proposals_file(args.proposals, image.shape[0], image.shape[1])
        if args.proposals
        else None
    )

    t0 = time.perf_counter()
    seg = build_segmenter(args)
    t1 = time.perf_counter()
    state = seg.set_image(image, proposals=proposals, max_pixels=max_pixels)
    t2 = time.perf_counter()
    preds = seg.predict_many(list(args.expressions), **predict_options(args))
    t3 = time.perf_counter()

    count = len(args.expressions)
    records = []
    for i, (expr, pred) in enumerate(zip(args.expressions, preds, strict=True)):
        rec = {"id": i, **pred.to_dict(polygons=True)}
        if args.mask:
            path = save_mask_png(pred.mask, numbered_path(args.mask, i, count))
            rec["mask_png"] = safe_text(path)
            if getattr(args, "targets", "one") != "one":  # one PNG per target, beside the union
                rec["target_mask_pngs"] = [
                    safe_text(
                        save_mask_png(t.mask, path.with_name(f"{path.stem}.target{k}{path.suffix}"))
                    )
                    for k, t in enumerate(pred.targets)
                ]
        if args.overlay:
            label = f"{expr} ({pred.score:.2f})" if pred.found else f"{expr} (no mask)"
            if medical is not None and medical["window"] is not None:
                label += f" [L {medical['window']['level']:g} W {medical['window']['width']:g}]"
            drawn = overlay(
                state.image, pred.mask, box=pred.box if pred.found else None, label=label
            )
            path = save_image(drawn, numbered_path(args.overlay, i, count))
            rec["overlay"] = safe_text(path)
        records.append(rec)

    summary_stream = sys.stderr if args.json_out == "-" else sys.stdout
    for i, rec in enumerate(records):
        print(summary_line(i, rec), file=summary_stream, flush=True)

    if args.json_out:
        doc = {
            "image": safe_text(args.image),
            "height": int(state.height),
            "width": int(state.width),
            "num_proposals": int(state.num_proposals),
            **({"medical": medical} if medical is not None else {}),
            "model": dict(getattr(seg, "model_info", {}) or {}),
            "timings": {
                "load_models": round(t1 - t0, 4),
                "set_image": round(t2 - t1, 4),
                "predict": round(t3 - t2, 4),
            },
            "results": records,
        }
        text = format_document(doc)
        if args.json_out == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            atomic_write_text(args.json_out, text)
    return EXIT_OK
