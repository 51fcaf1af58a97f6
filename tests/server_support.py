"""Helpers for the server tests (API, load, browser).

The real :class:`hybridgl.Segmenter` with tiny random weights does all the work. Its random
SAM finds no masks, so for the images the tests use, :class:`GivenProposals` feeds COCO
ground-truth instance masks as proposals (``set_image(image, proposals=...)``, the
library's oracle setting): every other stage (CLIP hybrid features, GEM, parsing, scoring)
runs for real and the answers have candidates to show. Other images go through SAM.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COCO = DATA / "coco-mini"
ANNOTATIONS = COCO / "annotations" / "instances_val2017.json"
ARTIFACTS = REPO / "test-artifacts"


def require_coco() -> None:
    if not ANNOTATIONS.is_file():
        pytest.skip(f"real data not available: {ANNOTATIONS} is missing (see README, 'Test data')")


def _instance_masks(image: dict, anns: list[dict]) -> np.ndarray:
    from hybridgl.eval.refer import annotation_to_mask

    return np.stack([annotation_to_mask(a, image["height"], image["width"]) for a in anns])


def coco_images(n: int, min_instances: int = 3, max_instances: int = 8) -> list[tuple[Path, Any]]:
    """``n`` coco-mini val images with a few non-crowd instances: ``[(path, masks)]``."""
    require_coco()
    data = json.loads(ANNOTATIONS.read_text())
    anns: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            anns.setdefault(a["image_id"], []).append(a)
    out = []
    for im in sorted(data["images"], key=lambda im: im["id"]):
        group = anns.get(im["id"], [])
        path = COCO / "val2017" / im["file_name"]
        if min_instances <= len(group) <= max_instances and path.is_file():
            out.append((path, _instance_masks(im, group)))
            if len(out) == n:
                return out
    pytest.skip(f"coco-mini has fewer than {n} images with {min_instances}+ instances")


def pixel_key(image: Any) -> str:
    from hybridgl.images import load_image

    arr = load_image(image)
    return hashlib.sha256(arr.tobytes() + repr(arr.shape).encode()).hexdigest()


class GivenProposals:
    """A real Segmenter that takes COCO instance masks as proposals for known images."""

    def __init__(self, segmenter: Any, images: list[tuple[Path, np.ndarray]]) -> None:
        self._seg = segmenter
        self._table = {pixel_key(path): masks for path, masks in images}

    def set_image(self, image: Any, proposals: Any = None) -> Any:
        if proposals is None:
            proposals = self._table.get(pixel_key(image))
        return self._seg.set_image(image, proposals=proposals)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seg, name)


class BlockingSegmenter:
    """Blocks inside ``set_image`` until released (timeout and busy tests), then fails.

    ``entered`` is set once a request is inside the model; nothing is computed.
    """

    def __init__(self, segmenter: Any) -> None:
        self._seg = segmenter
        self.entered = threading.Event()
        self.release = threading.Event()

    def set_image(self, image: Any, proposals: Any = None) -> Any:
        self.entered.set()
        self.release.wait(60)
        raise RuntimeError("released by the test")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seg, name)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def counters(seg: Any) -> dict[str, int]:
    return {k: int(seg.stats.get(k, 0)) for k in ("sam_runs", "feature_passes", "gem_passes")}
