"""``POST /v1/track`` on tiny random models: records per frame, the overlay video, limits."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("av")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")

from server_support import BackgroundServer  # noqa: E402
from video_support import coco_clip, write_clip  # noqa: E402

from hybridgl.schemas import validate  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402

pytestmark = pytest.mark.slow  # tiny models on every frame: seconds per request

N = 4


@pytest.fixture(scope="module")
def clip(coco_val, tmp_path_factory):
    frames, _ = coco_clip(coco_val, N, size=(72, 96), motion="move")
    return write_clip(frames, tmp_path_factory.mktemp("t") / "clip.mp4").read_bytes()


@pytest.fixture(scope="module")
def client(tiny_segmenter):
    old = os.environ.get("HYBRIDGL_RANDOM_WEIGHTS")
    os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny"  # the tracker is built on first use
    settings = ServerSettings(max_upload_bytes=200_000, max_pixels=20_000, request_timeout_s=300)
    try:
        with BackgroundServer(create_app(tiny_segmenter, settings)) as server:
            with httpx.Client(base_url=server.url, timeout=300.0) as c:
                yield c
    finally:
        if old is None:
            os.environ.pop("HYBRIDGL_RANDOM_WEIGHTS", None)
        else:
            os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = old


def _post(client, data, params=None, phrases=("the thing",)):
    return client.post(
        "/v1/track",
        params=params or {},
        files={"video": ("clip.mp4", data, "video/mp4")},
        data={"expression": list(phrases)},
    )


def test_records_per_frame_and_overlay(client, clip):
    r = _post(client, clip, {"reground_every": 2}, ("the thing", "the other thing"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames"] == N and body["tracker"] == "sam2.1_hiera_tiny"
    assert sorted((x["frame"], x["object_id"]) for x in body["records"]) == [
        (f, o) for f in range(N) for o in (1, 2)
    ]
    for rec in body["records"]:
        validate(rec)
        assert rec["state"] in ("keyframe", "tracked", "regrounded", "absent")
    r = _post(client, clip, {"format": "mp4", "max_frames": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert len(r.content) > 100


def test_limits_and_bad_input(client, clip):
    r = _post(client, b"not a video")
    assert r.status_code == 415 and r.json()["error"]["code"] == "invalid_video"
    assert "clip.mp4" not in r.text and "/tmp" not in r.text  # no server paths
    r = _post(client, b"x" * 200_001)
    assert r.status_code == 413
    r = _post(client, clip, {"max_frames": 301})
    assert r.status_code == 422
    r = client.post("/v1/track", files={"video": ("clip.mp4", clip, "video/mp4")})
    assert r.status_code == 422  # no phrase


def test_targets_many_and_bad_target_parameters(client, clip):
    """``targets=many``: one object per target (the same ids on every frame, each with its
    phrase); a bad ``targets`` or ``thresholds`` is a 422 ``invalid_parameter``, answered
    before the upload is read (even an oversized one)."""
    import json

    rules = json.dumps({"rules": {"floor": 0.05, "margin": 0.4}})
    r = _post(client, clip, {"targets": "many", "thresholds": rules, "max_frames": 2},
              ("the things", "the other"))  # fmt: skip
    assert r.status_code == 200, r.text
    recs = r.json()["records"]
    ids = {f: sorted(x["object_id"] for x in recs if x["frame"] == f) for f in (0, 1)}
    assert ids[0] == ids[1] == list(range(1, len(ids[0]) + 1)) and len(ids[0]) >= 2
    assert {x["expression"] for x in recs} == {"the things", "the other"}
    for rec in recs:
        validate(rec)
    for params in ({"targets": "bogus"}, {"targets": "many", "thresholds": "{"},
                   {"targets": "auto", "thresholds": '{"floor": "low"}'}):  # fmt: skip
        r = _post(client, b"x" * 200_001, params)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_parameter"
        assert ("targets must be one of" if "bogus" in str(params) else "thresholds") in err[
            "message"
        ]


def test_api_key_applies(tiny_segmenter, clip):
    with (
        BackgroundServer(create_app(tiny_segmenter, ServerSettings(api_key="k3y"))) as srv,
        httpx.Client(base_url=srv.url, timeout=60.0) as c,
    ):
        r = c.post(
            "/v1/track",
            files={"video": ("clip.mp4", clip, "video/mp4")},
            data={"expression": "x"},
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.browser
def test_video_tab_in_chromium(tiny_segmenter, clip, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_browser import CHROMIUM_ARGS, chromium_path

    exe = chromium_path()
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip)
    old = os.environ.get("HYBRIDGL_RANDOM_WEIGHTS")
    os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny"
    try:
        with (
            BackgroundServer(create_app(tiny_segmenter, ServerSettings())) as server,
            sync_api.sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(240_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(server.url + "/")
                page.wait_for_selector("#tabs:not([hidden])")
                assert page.locator("#tab-search").is_hidden()  # no index: no Search tab
                page.click("#tab-video")
                page.wait_for_selector("#video-view:not([hidden])")
                assert page.locator("#segment-view").is_hidden()
                page.set_input_files("#video-file", str(path))
                page.fill("#video-phrase", "the thing")
                page.click("#video-submit")
                page.wait_for_selector("#video-result:not([hidden])")
                rows = page.locator("#video-states tbody tr")
                assert rows.count() == N
                states = [rows.nth(i).get_attribute("data-state") for i in range(N)]
                assert set(states) <= {"keyframe", "tracked", "regrounded", "absent"}
                # the overlay (WebM) is decodable by the browser
                page.wait_for_function("document.getElementById('video-player').readyState >= 1")
                assert page.evaluate("document.getElementById('video-player').duration") > 0
                # the Targets choice (targets.js): many -> ?targets=many, one row per object
                # and frame, objects numbered 1..k on every frame
                urls: list[str] = []
                page.on("request", lambda r: urls.append(r.url) if "/v1/track" in r.url else None)
                page.select_option("#video-targets-mode", "many")
                page.evaluate("document.querySelector('#video-states tbody').textContent = ''")
                page.click("#video-submit")
                page.wait_for_function("!document.getElementById('video-submit').disabled")
                assert len(urls) == 1 and "targets=many" in urls[0], urls
                assert page.locator("#video-error").is_hidden()
                texts = page.locator("#video-states tbody tr td:nth-child(2)").all_inner_texts()
                ids = sorted({int(t.split(":")[0]) for t in texts})
                assert ids and ids == list(range(1, len(ids) + 1)) and len(texts) == N * len(ids)
                assert errors == []
            finally:
                browser.close()
    finally:
        if old is None:
            os.environ.pop("HYBRIDGL_RANDOM_WEIGHTS", None)
        else:
            os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = old
