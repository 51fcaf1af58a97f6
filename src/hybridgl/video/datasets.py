"""Referring video datasets in their distributed layouts, and scoring a run against them.

Layouts (``root`` is the dataset's folder):

- **Ref-YouTube-VOS**: ``meta_expressions/<split>/meta_expressions.json``,
  ``<split>/JPEGImages/<video>/<frame>.jpg`` and, for ``train``,
  ``<split>/Annotations/<video>/<frame>.png`` (indexed PNGs, pixel = object id). The
  ``valid`` ground truth is withheld: :func:`write_submission` writes the submission layout
  ``Annotations/<video>/<expression id>/<frame>.png`` (0/255 masks) to zip and upload.
- **Ref-DAVIS17** as the referring-VOS methods distribute it (the DAVIS 2017 frames and
  annotations with the Ref-DAVIS expressions in the Ref-YouTube-VOS layout above).
- **MeViS**: ``<split>/JPEGImages/<video>/<frame>.jpg``, ``<split>/meta_expressions.json``
  and, for ``train`` and ``valid_u``, ``<split>/mask_dict.json`` (annotation id -> one COCO
  RLE or null per frame); an expression may refer to several objects (``anno_id`` list):
  its target is the union of their masks.

``meta_expressions.json``: ``{"videos": {video: {"expressions": {id: {"exp": text,
"obj_id": id or [ids], "anno_id": [ids] (MeViS)}}, "frames": [frame names]}}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import VideoError

__all__ = ["DATASETS", "VideoExpression", "evaluate_expression", "load", "write_submission"]

DATASETS = ("ref-youtube-vos", "ref-davis17", "mevis")


@dataclass
class VideoExpression:
    """One referring expression of one video, with where its frames and truth are."""

    dataset: str
    split: str
    video: str
    expression_id: str
    text: str
    object_ids: list[int]
    anno_ids: list[str]
    frames: list[str]
    frame_dir: Path
    annotation_dir: Path | None = None
    mask_dict: Path | None = None

    def frame_paths(self) -> list[Path]:
        return [self.frame_dir / f"{name}.jpg" for name in self.frames]

    @property
    def has_truth(self) -> bool:
        return self.mask_dict is not None or (
            self.annotation_dir is not None and self.annotation_dir.is_dir()
        )

    def truth(self, masks: dict[str, list[Any]] | None = None) -> Iterator[np.ndarray]:
        """The target mask of every frame, ``(H, W)`` bool (the union of its objects)."""
        from PIL import Image

        from hybridgl.masks import rle_to_mask

        if self.mask_dict is not None:
            assert masks is not None, "pass the loaded mask_dict.json"
            for i in range(len(self.frames)):
                out: np.ndarray | None = None
                for a in self.anno_ids:
                    rle = masks[a][i]
                    if rle is not None:
                        m = rle_to_mask(rle)
                        out = m if out is None else out | m
                if out is None:
                    with Image.open(self.frame_paths()[i]) as im:
                        out = np.zeros((im.height, im.width), bool)
                yield out
            return
        assert self.annotation_dir is not None
        for name in self.frames:
            with Image.open(self.annotation_dir / f"{name}.png") as im:
                labels = np.asarray(im)
            yield np.isin(labels, self.object_ids)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise VideoError(f"{path} not found (is this the dataset's folder?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise VideoError(f"{path} is not valid JSON: {e}") from None


def _ids(value: Any) -> list[int]:
    items = value if isinstance(value, list) else [value]
    return [int(v) for v in items]


def load(dataset: str, root: str | os.PathLike, split: str) -> list[VideoExpression]:
    """Every expression of a split, in the order of the file (videos, then expression ids).

    Raises:
        VideoError: unknown dataset, missing or malformed files.
    """
    if dataset not in DATASETS:
        raise VideoError(f"unknown video dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    base = Path(root)
    if dataset == "mevis":
        meta = _read_json(base / split / "meta_expressions.json")
        mask_dict = base / split / "mask_dict.json"
        masks: Path | None = mask_dict if mask_dict.is_file() else None
        annotations: Path | None = None
    else:
        meta = _read_json(base / "meta_expressions" / split / "meta_expressions.json")
        masks = None
        annotations = base / split / "Annotations"
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise VideoError(f"{dataset} {split}: meta_expressions.json has no 'videos' object")
    out = []
    for video, v in videos.items():
        try:
            frames = [str(f) for f in v["frames"]]
            for eid, e in v["expressions"].items():
                out.append(
                    VideoExpression(
                        dataset=dataset,
                        split=split,
                        video=str(video),
                        expression_id=str(eid),
                        text=str(e["exp"]),
                        object_ids=_ids(e.get("obj_id", [])),
                        anno_ids=[str(a) for a in e.get("anno_id", [])],
                        frames=frames,
                        frame_dir=base / split / "JPEGImages" / str(video),
                        annotation_dir=annotations / str(video) if annotations else None,
                        mask_dict=masks,
                    )
                )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VideoError(f"{dataset} {split}: video {video!r} is malformed: {e}") from None
    return out


def _union(frame: Any) -> tuple[np.ndarray, bool]:
    """A tracked frame's answer to its one phrase: the union of its objects' masks (one
    object with ``targets="one"``; one per target with many/auto, none when the phrase
    named nothing) and whether any object is present."""
    mask = np.zeros((frame.height, frame.width), dtype=bool)
    for o in frame.objects:
        mask |= np.asarray(o.mask, dtype=bool)
    return mask, any(o.present for o in frame.objects)


def evaluate_expression(
    segmenter: Any, sample: VideoExpression, masks: dict[str, list[Any]] | None = None
) -> dict[str, Any]:
    """Track one expression with a :class:`~hybridgl.video.method.VideoSegmenter` and score it.

    The prediction on a frame is the union of the phrase's tracked objects (the one object
    with ``targets="one"``), as MeViS's truth is the union of the objects an expression
    refers to.

    Returns:
        ``video``, ``expression_id``, ``expression``, J, F, J&F (DAVIS 2017), ``frames``,
        ``present_frames`` (frames whose truth is not empty), ``absent_when_present`` and
        ``present_when_absent`` (frames where the object was reported absent though the
        truth has it, and the reverse).
    """
    from hybridgl.video.metrics import j_and_f

    preds = [_union(r) for r in segmenter.track(sample.frame_paths(), [sample.text])]
    truth = list(sample.truth(masks))
    if len(truth) != len(preds):
        raise VideoError(f"{sample.video}: {len(preds)} frames tracked, {len(truth)} annotated")
    scores = j_and_f((mask, t) for (mask, _), t in zip(preds, truth, strict=True))
    return {
        "video": sample.video,
        "expression_id": sample.expression_id,
        "expression": sample.text,
        **scores,
        "frames": len(truth),
        "present_frames": sum(bool(t.any()) for t in truth),
        "absent_when_present": sum(not p and t.any() for (_, p), t in zip(preds, truth)),  # noqa: B905
        "present_when_absent": sum(p and not t.any() for (_, p), t in zip(preds, truth)),  # noqa: B905
    }


def write_submission(segmenter: Any, sample: VideoExpression, out_dir: str | os.PathLike) -> Path:
    """Track one expression and write its masks in the Ref-YouTube-VOS submission layout:
    ``out_dir/Annotations/<video>/<expression id>/<frame>.png`` (0 or 255)."""
    from hybridgl.masks import save_mask_png

    folder = Path(out_dir) / "Annotations" / sample.video / sample.expression_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, r in zip(sample.frames, segmenter.track(sample.frame_paths(), [sample.text])):  # noqa: B905
        save_mask_png(_union(r)[0], folder / f"{name}.png")
    return folder
