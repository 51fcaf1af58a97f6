"""The model service on its own: no FastAPI, no HTTP (real tiny Segmenter)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest
from server_support import REPO, BlockingSegmenter, png_bytes

from hybridgl.server.errors import ApiError
from hybridgl.server.inputs import inspect_upload
from hybridgl.server.service import ModelService
from hybridgl.server.settings import ServerSettings


def halves(h: int, w: int) -> np.ndarray:
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, :, : w // 2] = True
    masks[1, :, w // 2 :] = True
    return masks


def upload(settings: ServerSettings, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = png_bytes(rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8))
    return inspect_upload(data, settings)


def test_service_and_serve_options_import_without_the_web_framework():
    code = (
        "import sys, hybridgl.server.service, hybridgl.cli.serve\n"
        "loaded = [m for m in ('fastapi', 'starlette', 'uvicorn', 'multipart', 'torch')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


def test_service_segments_and_caches_without_http(tiny_segmenter):
    settings = ServerSettings(cache_size=2, max_queue=1)
    service = ModelService(tiny_segmenter, settings)
    service.start()
    try:
        up = upload(settings)

        async def ask(expression: str):
            ticket = service.admit()
            try:
                return await service.segment(
                    ticket,
                    up,
                    [expression],
                    top_k=2,
                    guidance=True,
                    proposals=halves,
                    proposals_key="halves",
                )
            finally:
                ticket.release()

        first = asyncio.run(ask("the left half"))
        assert first.cache_hit is False and first.state.num_proposals == 2
        pred = first.predictions[0]
        assert pred.found and np.array_equal(pred.mask, halves(40, 56)[pred.index])
        second = asyncio.run(ask("the right half"))
        assert second.cache_hit is True and second.state is first.state
        assert service.pending == 0
        assert service.images.info() == {"active": 0, "peak": 1, "total": 1}

        held = service.admit()  # max_queue=1: the next one is refused
        with pytest.raises(ApiError) as busy:
            service.admit()
        assert busy.value.status == 503 and busy.value.code == "busy"
        assert int(busy.value.headers["Retry-After"]) >= 1
        held.release()
        assert service.pending == 0
    finally:
        service.close()


@pytest.mark.slow
def test_a_timed_out_job_keeps_its_place_in_the_queue(tiny_segmenter):
    """504 for the client, but the model work it started still counts against max_queue
    until it really ends (so timeouts cannot pile up unbounded work)."""
    blocking = BlockingSegmenter(tiny_segmenter)
    settings = ServerSettings(request_timeout_s=2.0, max_queue=4)
    service = ModelService(blocking, settings)
    service.start()
    try:
        up = upload(settings, seed=1)

        async def ask():
            ticket = service.admit()
            try:
                return await service.segment(ticket, up, ["x"], top_k=1, guidance=True)
            finally:
                ticket.release()

        with pytest.raises(ApiError) as timeout:
            asyncio.run(ask())
        assert timeout.value.status == 504
        assert blocking.entered.wait(60)
        assert service.pending == 1  # the image job is still running on its thread
        blocking.release.set()
        deadline = time.monotonic() + 60
        while service.pending:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        blocking.release.set()
        service.close()


class _LimitSpy:
    """Records the ``max_pixels`` the service hands to ``encode_image``."""

    def __init__(self, segmenter) -> None:
        self._seg = segmenter
        self.limits: list = []

    def encode_image(self, image, proposals=None, **kw):
        self.limits.append(kw.get("max_pixels", "default"))
        return self._seg.encode_image(image, proposals=proposals, **kw)

    def __getattr__(self, name: str):
        return getattr(self._seg, name)


@pytest.mark.parametrize("limit", [40 * 56, 50_000_000])
def test_service_passes_its_pixel_limit_to_the_segmenter(tiny_segmenter, limit):
    """``--max-pixels`` above the package default (44.7 MP) must not be undone by the
    segmenter re-checking the decoded image with its default limit."""
    spy = _LimitSpy(tiny_segmenter)
    settings = ServerSettings(max_pixels=limit)
    service = ModelService(spy, settings)
    service.start()
    try:
        up = upload(settings)
        ticket = service.admit()
        try:
            out = asyncio.run(
                service.segment(
                    ticket, up, ["the left half"], top_k=2, guidance=True, proposals=halves
                )
            )
        finally:
            ticket.release()
        assert out.state.num_proposals == 2
        assert spy.limits == [limit]
    finally:
        service.close()


def test_segmenter_refusing_the_size_is_a_413_with_the_servers_limit(tiny_segmenter):
    """An ImageTooLargeError from the segmenter maps to 413 with its size and limit."""
    from hybridgl.errors import ImageTooLargeError

    class Refusing(_LimitSpy):
        def encode_image(self, image, proposals=None, **kw):
            raise ImageTooLargeError("too large", height=40, width=56, limit=100)

    settings = ServerSettings()
    service = ModelService(Refusing(tiny_segmenter), settings)
    service.start()
    try:
        ticket = service.admit()
        try:
            with pytest.raises(ApiError) as err:
                asyncio.run(
                    service.segment(
                        ticket, upload(settings), ["x"], top_k=1, guidance=True, proposals=halves
                    )
                )
        finally:
            ticket.release()
        assert err.value.status == 413 and err.value.code == "image_too_large"
        assert "56x40 = 2240 pixels" in str(err.value) and "limit is 100" in str(err.value)
    finally:
        service.close()


@pytest.fixture(scope="module")
def small_working_side():
    """A tiny segmenter whose working resolution (max_side=64) is below the inputs'."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
        from hybridgl import Segmenter

        yield Segmenter.from_pretrained(sam=None, device="cpu", max_side=64)


def test_candidate_masks_are_at_the_input_resolution(small_working_side):
    """With a working resolution below the input's, candidate masks still have the
    image's size (and match the candidate boxes), like the record's own mask."""
    from hybridgl.masks import masks_to_boxes_xywh, rle_to_mask
    from hybridgl.server.encoding import result_record

    seg = small_working_side
    image = np.random.default_rng(0).integers(0, 255, size=(96, 160, 3), dtype=np.uint8)
    state = seg.encode_image(image, proposals=halves(96, 160))
    assert state.work_size != (96, 160)
    pred = seg.predict("the left half", top_k=2, state=state)
    rec = result_record(pred, state, candidate_masks=True, polygons=False)
    assert rec["mask"]["size"] == [96, 160]
    assert len(rec["candidates"]) == 2
    for cand in rec["candidates"]:
        assert cand["mask"]["size"] == [96, 160]
        mask = rle_to_mask(cand["mask"])
        assert np.array_equal(mask, state.input_mask(cand["index"]))
        assert cand["box"] == [float(v) for v in masks_to_boxes_xywh(mask[None])[0]]
