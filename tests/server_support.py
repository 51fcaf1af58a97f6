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
import socket
import threading
import time
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
    from hybridgl.eval.annotations import annotation_to_mask

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

    def encode_image(self, image: Any, proposals: Any = None, **kw: Any) -> Any:
        if proposals is None:
            proposals = self._table.get(pixel_key(image))
        return self._seg.encode_image(image, proposals=proposals, **kw)

    def set_image(self, image: Any, proposals: Any = None, **kw: Any) -> Any:
        raise AssertionError("the server must use encode_image, never set_image")

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

    def encode_image(self, image: Any, proposals: Any = None, **kw: Any) -> Any:
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


class GatedSegmenter:
    """Holds every ``encode_image`` until ``gate`` is set, then encodes for real.

    ``inside`` counts the calls that reached the gate (the memory-bound tests).
    """

    def __init__(self, segmenter: Any, default_proposals: Any = None) -> None:
        self._seg = segmenter
        self._default_proposals = default_proposals  # (h, w) -> masks, instead of SAM
        self.gate = threading.Event()
        self.inside = 0
        self._lock = threading.Lock()

    def encode_image(self, image: Any, proposals: Any = None, **kw: Any) -> Any:
        with self._lock:
            self.inside += 1
        self.gate.wait(120)
        if proposals is None and self._default_proposals is not None:
            proposals = self._default_proposals(*np.asarray(image).shape[:2])
        return self._seg.encode_image(image, proposals=proposals, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seg, name)


class BackgroundServer:
    """Run an app with uvicorn on a background thread, on a free port of 127.0.0.1.

    Uses the server's own uvicorn configuration (:func:`hybridgl.server.protocol.
    uvicorn_config`, read timeout included). :attr:`url` is the base URL once started.
    """

    def __init__(self, app: Any, log_level: str = "warning") -> None:
        import uvicorn

        from hybridgl.server.protocol import uvicorn_config

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
