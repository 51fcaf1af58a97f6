"""``hybridgl segment-volume SCAN EXPRESSION --out DIR``: an object through a CT/MR volume."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hybridgl.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    UsageError,
    eprint,
    non_negative_int,
    positive,
)
from hybridgl.cli.options import add_max_pixels_arg, add_model_args, build_segmenter

DESCRIPTION = """\
Segment the object EXPRESSION names through a scan, slice by slice (hybridgl[medical]).

SCAN is a DICOM series folder, a DICOM file (multi-frame or single) or a NIfTI volume
(.nii, .nii.gz). The phrase is grounded on a key slice (the best-scoring of a few
sampled slices, or --keyslice), then followed to the neighbouring slices until it is
absent, so its extent along the axis is found. Writes into --out: summary.json (extent,
volume in mL from the voxel spacing, the window, per-slice records), labels.nii.gz (or
--nifti) with the scan's affine, and an overlay PNG per visited slice; --seg adds a DICOM
SEG that references the source series. One progress line per slice goes to stderr.

An annotation assistant, not a diagnostic device: review every result (docs/MEDICAL.md).
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    from hybridgl.cli.segment import add_window_arg
    from hybridgl.medical.volume import DEFAULT_MAX_VOXELS

    p = subparsers.add_parser(
        "segment-volume",
        help="segment an object through a DICOM series or NIfTI volume",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scan", metavar="SCAN", nargs="?", help="DICOM series folder, DICOM file or .nii/.nii.gz"
    )
    p.add_argument(
        "expression", metavar="EXPRESSION", nargs="?", help='e.g. "the liver" (quote it)'
    )
    from hybridgl.cli.segment_volume_list import add_list_args

    add_list_args(p)
    out = p.add_argument_group("outputs")
    out.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the summary, labels and overlays"
    )
    out.add_argument(
        "--nifti", metavar="OUT.nii.gz", help="label volume path (default: DIR/labels.nii.gz)"
    )
    out.add_argument("--seg", metavar="OUT.dcm", help="also write a DICOM SEG (DICOM input only)")
    out.add_argument("--no-overlays", action="store_true", help="write no per-slice overlay PNGs")
    vol = p.add_argument_group("volume")
    add_window_arg(vol)
    vol.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="voxel axis to slice along (default 2: the stored DICOM images)",
    )
    vol.add_argument(
        "--keyslice",
        type=non_negative_int,
        default=None,
        metavar="K",
        help="ground on this slice (default: the best-scoring sampled slice)",
    )
    vol.add_argument(
        "--sample-slices",
        type=positive(int),
        default=8,
        metavar="N",
        help="slices scored to choose the key slice (default 8)",
    )
    vol.add_argument(
        "--min-iou",
        type=float,
        default=0.2,
        metavar="F",
        help="overlap with the previous slice that counts as the same object (default 0.2)",
    )
    from hybridgl.video.tracker import TRACKERS

    vol.add_argument(
        "--tracker",
        default="none",
        choices=["none", *TRACKERS],
        metavar="NAME",
        help="follow the object with this video tracker, slices as frames: "
        f"{', '.join(TRACKERS)} (hybridgl[transformers]; without it: per-slice grounding); "
        "default none: ground every slice",
    )
    vol.add_argument(
        "--reground-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="with --tracker, ground again every N slices and re-anchor (default 0: never)",
    )
    vol.add_argument(
        "--tracker-min-score",
        type=float,
        default=None,
        metavar="P",
        help="with --tracker, absent when its presence score is below P (default 0.5)",
    )
    vol.add_argument(
        "--timepoint",
        type=non_negative_int,
        default=None,
        metavar="T",
        help="the volume of a 4D NIfTI file",
    )
    vol.add_argument(
        "--max-voxels",
        type=non_negative_int,
        default=DEFAULT_MAX_VOXELS,
        metavar="N",
        help=f"refuse volumes above N voxels, read from the headers first (default {DEFAULT_MAX_VOXELS:,}; 0: no limit)",
    )
    add_max_pixels_arg(p, refused="exit 3 (bad input)")
    add_model_args(p, predict=False)
    p.set_defaults(func=run)
    return p


def _check(args: argparse.Namespace) -> None:
    from hybridgl.cli.volume_options import check_options

    if not args.expression.strip():
        from hybridgl.errors import ExpressionError

        raise ExpressionError("expression is empty")
    check_options(args)


def run(args: argparse.Namespace) -> int:
    if args.list is not None:
        from hybridgl.cli.segment_volume_list import run_list

        return run_list(args)
    from hybridgl.cli.volume_options import volume_options
    from hybridgl.medical.run import read_for, run_volume

    if args.scan is None or args.expression is None:
        raise UsageError("give SCAN and EXPRESSION, or --list FILE")
    from hybridgl.cli.engine_args import engine_options

    if engine_options(args).engine != "local" or args.seg_each:
        raise UsageError("--engine ray and --seg-each need --list (many volumes)")
    _check(args)
    opts = volume_options(args)
    volume = read_for(args.scan, opts)
    if args.seg is not None and volume.kind != "dicom":
        raise UsageError("--seg needs DICOM input (a DICOM SEG references its source images)")
    n = volume.num_slices(args.axis)
    if args.keyslice is not None and args.keyslice >= n:
        raise UsageError(f"--keyslice {args.keyslice} is outside 0..{n - 1} along axis {args.axis}")
    window = volume.resolve_window(args.window)  # fails before the models load
    shown = (
        f"L {window.level:g} W {window.width:g} ({window.source})"
        if window
        else "none (colour data)"
    )
    dims = " x ".join(map(str, volume.shape))
    eprint(
        f"{volume.source}: {volume.kind} {volume.modality or ''} {dims}, "
        f"{n} slices along axis {args.axis}, window {shown}"
    )
    out = Path(args.out)
    width = len(str(n - 1))

    def progress(rec: Any, visited: int) -> None:
        state = f"found area={rec.area}" if rec.found else "absent"
        eprint(
            f"slice {rec.index:>{width}} ({visited} visited of {n}): {rec.source} {state} ({rec.seconds:.2f} s)"
        )

    t0 = time.perf_counter()
    seg = build_segmenter(args)
    t1 = time.perf_counter()
    doc = run_volume(
        seg,
        volume,
        args.expression,
        out,
        opts,
        nifti=args.nifti,
        seg=args.seg,
        progress=progress,
        extra={"load_models_s": round(t1 - t0, 4)},
    )
    extent = doc["extent"]
    print(
        f"{args.expression!r}: "
        + (
            f"slices {extent[0]}..{extent[1]} (key {doc['key_slice']}), {doc['voxels']} voxels, "
            f"{doc['volume_ml']:.2f} mL"
            if extent
            else "not found"
        )
        + f"; summary {out / 'summary.json'}",
        flush=True,
    )
    return EXIT_OK
