"""Outputs of a tracking run, all made from its per-frame records.

The primary output is the JSONL file of records (:meth:`FrameResult.to_records`, one line per
object per frame, written as frames finish through :class:`~hybridgl.jobs.records.RecordWriter`,
so a killed run keeps every finished frame). Everything else is derived from the records:

- :func:`write_davis_pngs`: DAVIS-style indexed PNGs, ``00000.png`` ... named by frame index,
  pixel value = object id (0: background), the DAVIS palette;
- :func:`write_overlay`: the video with every present object's mask, box and phrase drawn
  (PyAV), frames read again from the source;
- :func:`write_youtube_vis`: a YouTube-VIS style results JSON (one entry per object:
  ``video_id``, ``category_id``, ``score``, ``segmentations`` with one COCO RLE or null per
  frame).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.fileio import atomic_dir, atomic_write_json

__all__ = [
    "davis_palette",
    "group_by_frame",
    "record_key",
    "write_davis_pngs",
    "write_overlay",
    "write_youtube_vis",
]

#: Colours of objects 1, 2, ... in overlays (RGB).
COLORS = [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 80, 255),
          (0, 220, 220), (255, 128, 0), (160, 160, 160)]  # fmt: skip


def record_key(record: dict[str, Any]) -> str | None:
    """The id of a video record in the results file: ``"<frame>:<object_id>"``."""
    if "frame" not in record or "object_id" not in record:
        return None
    return f"{record['frame']}:{record['object_id']}"


def group_by_frame(records: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Records by frame index, each frame's sorted by object id, frames in order."""
    out: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(int(r["frame"]), []).append(r)
    return {f: sorted(out[f], key=lambda r: r["object_id"]) for f in sorted(out)}


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS annotations (PASCAL VOC's), flat ``[r, g, b, ...]``."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _label_image(recs: list[dict[str, Any]]) -> np.ndarray:
    from hybridgl.masks import rle_to_mask

    h, w = int(recs[0]["height"]), int(recs[0]["width"])
    out = np.zeros((h, w), dtype=np.uint8)
    for r in recs:  # higher ids drawn last win overlapping pixels
        if r.get("present"):
            out[rle_to_mask(r["mask"])] = min(255, int(r["object_id"]))
    return out


def write_davis_pngs(records: Iterable[dict[str, Any]], folder: str | os.PathLike) -> Path:
    """One indexed PNG per frame (``<frame:05d>.png``) into ``folder`` (replaced whole)."""
    from PIL import Image

    target = Path(folder)
    palette = davis_palette()
    with atomic_dir(target) as tmp:
        for frame, recs in group_by_frame(records).items():
            img = Image.fromarray(_label_image(recs), mode="P")
            img.putpalette(palette)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            (tmp / f"{frame:05d}.png").write_bytes(buf.getvalue())
    return target


def draw_frame(image: np.ndarray, recs: list[dict[str, Any]]) -> np.ndarray:
    """Every present object's mask, box and ``phrase (state)`` label on a copy of ``image``."""
    from hybridgl.masks import rle_to_mask
    from hybridgl.viz import overlay

    out = image
    for r in recs:
        if not r.get("present"):
            continue
        color = COLORS[(int(r["object_id"]) - 1) % len(COLORS)]
        label = f"{r['object_id']}: {r['expression']} ({r['state']})"
        out = overlay(out, rle_to_mask(r["mask"]), box=r["box"], label=label, color=color)
    if out is image:
        out = image.copy()
    return out


def write_overlay(
    source: Any,
    records: Iterable[dict[str, Any]],
    path: str | os.PathLike,
    fps: float | None = None,
) -> Path:
    """The overlay video of a run: frames of ``source`` (read again) with their records drawn.

    Frames without records are skipped; ``fps`` defaults to the source's frame rate divided
    by the stride (25 when unknown).
    """
    from hybridgl.video.sources import open_source
    from hybridgl.video.writer import VideoWriter

    src = open_source(source)
    by_frame = group_by_frame(records)
    rate = fps or ((src.fps or 25.0) / src.selection.stride)
    with VideoWriter(path, fps=rate) as writer:
        for frame in src.frames():
            recs = by_frame.get(frame.index)
            if recs:
                writer.write(draw_frame(frame.image, recs))
    return Path(path)


def write_youtube_vis(
    records: Iterable[dict[str, Any]],
    path: str | os.PathLike,
    video_id: int | str = 1,
    category_id: int = 1,
) -> Path:
    """A YouTube-VIS style results file: one entry per object over every frame of the run.

    ``segmentations`` has one item per frame (in frame order): the COCO RLE of the object's
    mask, or null where it is absent; ``score`` is the mean score of its present frames.
    """
    frames = group_by_frame(records)
    ids = sorted({int(r["object_id"]) for recs in frames.values() for r in recs})
    out = []
    for oid in ids:
        segs: list[Any] = []
        scores = []
        expression = None
        for recs in frames.values():
            r = next((x for x in recs if int(x["object_id"]) == oid), None)
            if r is not None and r.get("present"):
                segs.append(r["mask"])
                if r.get("score") is not None:
                    scores.append(float(r["score"]))
            else:
                segs.append(None)
            if r is not None:
                expression = r.get("expression")
        out.append(
            {
                "video_id": video_id,
                "category_id": int(category_id),
                "object_id": oid,
                "expression": expression,
                "score": float(np.mean(scores)) if scores else 0.0,
                "segmentations": segs,
            }
        )
    return atomic_write_json(path, out, indent=None)
