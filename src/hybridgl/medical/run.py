"""One volume, start to finish: read it, segment the phrase through it, write its folder.

:func:`run_volume` is what ``hybridgl segment-volume SCAN EXPRESSION`` does and what every
volume of ``segment-volume --list`` does on a worker (:mod:`hybridgl.jobs.volumes`): the
options are one :class:`VolumeOptions` (plain values, so it pickles to Ray actors), the
outputs are those of docs/MEDICAL.md (``summary.json``, ``labels.nii.gz``, ``overlays/``,
and ``seg.dcm`` when asked for and the input is DICOM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hybridgl.limits import DEFAULT_MAX_PIXELS
from hybridgl.medical.volume import DEFAULT_MAX_VOXELS

__all__ = ["VolumeOptions", "flat_record", "read_for", "run_volume"]


@dataclass(frozen=True)
class VolumeOptions:
    """How a volume is read and segmented (the options of ``segment-volume``)."""

    window: str | None = None
    axis: int = 2
    keyslice: int | None = None
    sample_slices: int = 8
    min_iou: float = 0.2
    tracker: str | None = None
    reground_every: int = 0
    tracker_min_score: float | None = None
    timepoint: int | None = None
    max_voxels: int | None = DEFAULT_MAX_VOXELS
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    overlays: bool = True
    seg: bool = False  # list mode: also DIR/seg.dcm for DICOM input

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_for(path: str | Path, opts: VolumeOptions) -> Any:
    """The volume at ``path`` under the options' limits and time point."""
    from hybridgl.medical.load import read_volume

    return read_volume(
        path, timepoint=opts.timepoint, max_voxels=opts.max_voxels, max_pixels=opts.max_pixels
    )


SliceProgress = Callable[[Any, int], None]


def run_volume(
    segmenter: Any,
    volume: Any,
    expression: str,
    out: str | Path,
    opts: VolumeOptions,
    *,
    nifti: str | Path | None = None,
    seg: str | Path | None = None,
    progress: SliceProgress | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment ``expression`` through ``volume`` and write ``out`` (every file atomic).

    Args:
        nifti: the label volume's path (default ``out/labels.nii.gz``).
        seg: a DICOM SEG path (default ``out/seg.dcm`` when ``opts.seg`` and DICOM input).
        progress: ``progress(record, visited)`` after each slice.
        extra: more keys for ``summary.json``.

    Returns:
        The summary document written to ``out/summary.json``.
    """
    from hybridgl.medical.outputs import write_outputs, write_overlay
    from hybridgl.medical.propagate import segment_volume

    out = Path(out)
    window = volume.resolve_window(opts.window)
    n = volume.num_slices(opts.axis)
    width = len(str(n - 1))
    written: list[str] = []
    visited = [0]

    def on_slice(rec: Any, image: Any, mask: Any) -> None:
        visited[0] += 1
        if opts.overlays:
            path = out / "overlays" / f"slice_{rec.index:0{width}d}.png"
            write_overlay(path, image, mask, rec, expression, window)
            written.append(str(path))
        if progress is not None:
            progress(rec, visited[0])

    t0 = time.perf_counter()
    result = segment_volume(
        segmenter,
        volume,
        expression,
        axis=opts.axis,
        keyslice=opts.keyslice,
        window=window,
        sample_slices=opts.sample_slices,
        min_iou=opts.min_iou,
        tracker=opts.tracker,
        reground_every=opts.reground_every,
        tracker_min_score=opts.tracker_min_score,
        on_slice=on_slice,
        max_pixels=opts.max_pixels,
    )
    if seg is None and opts.seg and volume.kind == "dicom":
        seg = out / "seg.dcm"
    return write_outputs(
        result,
        volume,
        json_path=out / "summary.json",
        nifti=nifti if nifti is not None else out / "labels.nii.gz",
        seg=seg,
        extra={
            "overlays": sorted(written),
            "summary": str(out / "summary.json"),
            "model": dict(getattr(segmenter, "model_info", {}) or {}),
            "segment_s": round(time.perf_counter() - t0, 4),
            **(extra or {}),
        },
    )


def flat_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The one-line record of a volume's summary (``segment-volume --list`` results)."""
    extent = doc.get("extent") or [None, None]
    window = doc.get("window") or {}
    return {
        "found": bool(doc.get("found")),
        "key_slice": doc.get("key_slice"),
        "extent_first": extent[0],
        "extent_last": extent[1],
        "voxels": doc.get("voxels"),
        "volume_ml": doc.get("volume_ml"),
        "slices_visited": len(doc.get("slices") or []),
        "shape": doc.get("shape"),
        "modality": doc.get("modality"),
        "window_level": window.get("level"),
        "window_width": window.get("width"),
        "window_source": window.get("source"),
        "tracker": doc.get("tracker"),
        "tracker_fallback": doc.get("tracker_fallback"),
    }
