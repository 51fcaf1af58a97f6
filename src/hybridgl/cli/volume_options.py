"""The volume options of ``segment-volume`` (one volume or ``--list``): checks and
:class:`~hybridgl.medical.run.VolumeOptions`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybridgl.cli.common import UsageError


def check_options(args: argparse.Namespace) -> None:
    """The checks of the options every volume shares (before any model loads)."""
    from hybridgl.errors import ImageError
    from hybridgl.medical.load import window_spec

    if args.sam == "none":
        raise UsageError("segment-volume needs a proposal model (--sam none has none)")
    if args.seg is not None and Path(args.seg).suffix.lower() != ".dcm":
        raise UsageError(f"--seg must name a .dcm file, got {args.seg!r}")
    if args.nifti is not None and not str(args.nifti).lower().endswith((".nii", ".nii.gz")):
        raise UsageError(f"--nifti must end in .nii or .nii.gz, got {args.nifti!r}")
    if not 0.0 <= args.min_iou <= 1.0:
        raise UsageError(f"--min-iou must be in [0, 1], got {args.min_iou}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is not a folder")
    try:
        window_spec(args.window)
    except ImageError as e:
        raise UsageError(f"--window: {e}") from None


def volume_options(args: argparse.Namespace) -> Any:
    """The :class:`~hybridgl.medical.run.VolumeOptions` of the command line."""
    from hybridgl.medical.run import VolumeOptions

    return VolumeOptions(
        window=args.window,
        axis=args.axis,
        keyslice=args.keyslice,
        sample_slices=args.sample_slices,
        min_iou=args.min_iou,
        tracker=None if args.tracker == "none" else args.tracker,
        reground_every=args.reground_every,
        tracker_min_score=args.tracker_min_score,
        timepoint=args.timepoint,
        max_voxels=args.max_voxels or None,
        max_pixels=args.max_pixels or None,
        overlays=not args.no_overlays,
        seg=bool(getattr(args, "seg_each", False)),
    )
