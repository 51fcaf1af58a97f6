"""Synthetic clips for the video tests: a coco-mini photo seen by a moving camera, with the
COCO mask of its largest object warped the same way (a known mask on every frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import COCO, coco_masks, require_data


def coco_clip(coco_val: dict, num_frames: int, size=(72, 96), motion: str = "pan"):
    """``(frames, masks)``: lists of ``(h, w, 3)`` uint8 and ``(h, w)`` bool."""
    from hybridgl.images import load_image
    from hybridgl.video.synthetic import camera_frames

    require_data("coco-mini", "val2017")
    for image_id in sorted(coco_val["anns"]):
        path = COCO / "val2017" / coco_val["images"][image_id]["file_name"]
        if path.exists():
            break
    masks = coco_masks(coco_val, image_id)
    mask = masks[int(np.argmax(masks.reshape(len(masks), -1).sum(1)))]
    image = load_image(path)
    pairs = list(camera_frames(image, mask, num_frames, size, motion))
    return [f for f, _ in pairs], [m for _, m in pairs]


def write_clip(frames, path: Path, fps: float = 10.0) -> Path:
    """Write frames as a video (PyAV) or, for a path without a suffix, a JPEG folder."""
    if path.suffix:
        from hybridgl.video.writer import VideoWriter

        with VideoWriter(path, fps=fps, quality=10) as w:
            for f in frames:
                w.write(f)
        return path
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{i:05d}.jpg", quality=95)
    return path
