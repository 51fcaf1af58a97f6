"""Shared test fixtures: the real data folder, a tiny random-weight segmenter and one local
Ray for the tests that need it."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COCO = DATA / "coco-mini"


def require_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (see README, 'Test data')")
    return path


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test ends with torch's thread count as it found it: a command run in this
    process sets it (``configure_threads``), and float rounding depends on it, so a test
    comparing two computations must not depend on which test ran before."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def coco_val() -> dict:
    """COCO val2017 annotations of coco-mini, indexed: images by id, anns by image id."""
    ann_file = require_data("coco-mini", "annotations", "instances_val2017.json")
    data = json.loads(ann_file.read_text())
    anns: dict[int, list] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    images = {im["id"]: im for im in data["images"]}
    return {"images": images, "anns": anns, "categories": data["categories"]}


def coco_masks(coco: dict, image_id: int) -> np.ndarray:
    """All instance masks of one image, ``(N, H, W)`` bool (the library's annToMask)."""
    from hybridgl.eval.annotations import annotation_to_mask

    im = coco["images"][image_id]
    h, w = im["height"], im["width"]
    out = [annotation_to_mask(a, h, w) for a in coco["anns"].get(image_id, [])]
    return np.stack(out) if out else np.zeros((0, h, w), bool)


@pytest.fixture(scope="session")
def coco_sample(coco_val) -> tuple[Path, np.ndarray]:
    """A real annotated image with at least 4 instances, and its instance masks."""
    for image_id in sorted(coco_val["anns"]):
        if len(coco_val["anns"][image_id]) >= 4:
            path = COCO / "val2017" / coco_val["images"][image_id]["file_name"]
            if path.exists():
                return path, coco_masks(coco_val, image_id)
    pytest.skip("no annotated coco-mini image with 4 instances")


@pytest.fixture(scope="session")
def tiny_segmenter():
    """A Segmenter with tiny random weights (a test device: outputs are meaningless).

    One for the whole session; ``HYBRIDGL_RANDOM_WEIGHTS`` is set only while it is built.
    """
    old = os.environ.get("HYBRIDGL_RANDOM_WEIGHTS")
    os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny"
    try:
        from hybridgl import Segmenter

        seg = Segmenter.from_pretrained(device="cpu")
    finally:
        if old is None:
            os.environ.pop("HYBRIDGL_RANDOM_WEIGHTS", None)
        else:
            os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = old
    return seg


_TINY_SEGMENTERS: dict[str, object] = {}


@pytest.fixture
def shared_tiny_segmenters(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Make ``Segmenter.from_spec`` (the one construction path: ``from_pretrained`` and
    ``ModelSpec.build``) return one segmenter per spec for the whole session while
    ``HYBRIDGL_RANDOM_WEIGHTS=tiny`` (every other call is untouched).

    For tests of the faces (CLI, jobs) that build their models through the real entry
    points: the tiny models are seeded, so a fresh build would give the same segmenter; a
    shared one saves building CLIP, SAM and the tokenizer per command. A cached one is
    returned with the build's one side effect on this process repeated: torch's thread
    count set from ``spec.threads`` (a local run then computes as a fresh build would, the
    same float rounding as a Ray worker with the same threads). Do not use it where a test
    reads a segmenter's ``stats`` counters (they accumulate across tests). Returns the
    cache (keyed by the call's arguments).
    """
    from hybridgl.models import random_weights_mode
    from hybridgl.models.runtime import configure_threads
    from hybridgl.segmenter import Segmenter

    build = Segmenter.from_spec.__func__  # type: ignore[attr-defined]

    def from_spec(cls, spec):
        try:
            tiny = random_weights_mode() == "tiny"
        except ValueError:  # an invalid value: let the real call report it
            tiny = False
        if not tiny:
            return build(cls, spec)
        key = repr((cls, replace(spec, env=())))
        if key not in _TINY_SEGMENTERS:
            _TINY_SEGMENTERS[key] = build(cls, spec)
        elif spec.threads is not None:
            configure_threads(spec.threads)
        return _TINY_SEGMENTERS[key]

    monkeypatch.setattr(Segmenter, "from_spec", classmethod(from_spec))
    return _TINY_SEGMENTERS


@pytest.fixture(scope="session")
def _ray_session(tmp_path_factory: pytest.TempPathFactory):
    """The session's local Ray (tests/ray_support.py): its address and the workers' cache."""
    pytest.importorskip("ray", reason='needs the ray extra: pip install "hybridgl[ray]"')
    from ray_support import start_local_ray

    cache = tmp_path_factory.mktemp("ray-cache")
    with start_local_ray(cache) as address:
        yield address, cache


@pytest.fixture
def ray_cluster(_ray_session, monkeypatch: pytest.MonkeyPatch):
    """The address of the session's local Ray, with this process set as its workers are
    (tiny random weights, offline, the private cache)."""
    from ray_support import set_env_for_workers

    address, cache = _ray_session
    set_env_for_workers(monkeypatch, cache)
    return address


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests on Ray run last and together: Ray starts once, and no other test shares
    the machine with its processes (the order among them is kept)."""
    from ray_support import FIXTURE

    on_ray = [i for i in items if FIXTURE in getattr(i, "fixturenames", ())]
    if on_ray:
        others = [i for i in items if FIXTURE not in getattr(i, "fixturenames", ())]
        items[:] = others + on_ray
