"""HTTP API over real HTTP on 127.0.0.1: shapes, RLE round trip, the image cache, limits
and the JSON errors of every kind of bad input (real tiny Segmenter, real coco-mini images)."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from server_support import (  # noqa: E402
    BackgroundServer,
    BlockingSegmenter,
    GivenProposals,
    coco_images,
    counters,
    png_bytes,
)

from hybridgl.masks import mask_to_box, png_to_mask, rle_to_mask  # noqa: E402
from hybridgl.schemas import validate  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402
from hybridgl.server.cache import LRUCache  # noqa: E402

SETTINGS = ServerSettings(
    max_upload_bytes=1_000_000,
    max_pixels=1_000_000,
    max_expressions=4,
    max_expression_chars=200,
    cache_size=4,
    top_k=3,
    request_timeout_s=300,
)


@pytest.fixture(scope="module")
def images():
    return coco_images(3)


@pytest.fixture(scope="module")
def live(tiny_segmenter, images):
    """(base url, the Segmenter behind it) for a server with GT proposals on ``images[:2]``."""
    seg = GivenProposals(tiny_segmenter, images[:2])
    with BackgroundServer(create_app(seg, SETTINGS)) as server:
        yield server.url, tiny_segmenter


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live[0], timeout=httpx.Timeout(300.0, connect=10.0)) as c:
        yield c


def upload(path_or_bytes, name="image.jpg", mime="image/jpeg"):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"image": (name, data, mime)}


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert "Traceback" not in r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# ------------------------------------------------------------------ info endpoints


def test_health_and_models(client):
    h = client.get("/health")
    assert h.status_code == 200
    assert h.json()["status"] == "ok" and h.json()["model_loaded"] is True
    m = client.get("/v1/models").json()
    assert m["random_weights"] is True or m["random_weights"] == "tiny"
    assert m["device"] == "cpu"
    assert m["preset"] == "paper"
    assert m["model"]["clip"] == "ViT-B-16"
    assert m["limits"]["max_expressions"] == 4
    assert set(m["stats"]) >= {"gem_passes"} or m["stats"] == {}


def test_docs_and_page_are_served(client):
    # the Swagger UI / ReDoc pages would load scripts from a CDN: they are off (offline)
    for page in ("/docs", "/redoc"):
        assert_error(client.get(page), 404, "not_found")
    spec = client.get("/openapi.json").json()
    assert "/v1/segment" in spec["paths"] and "/health" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


# ------------------------------------------------------------------ results


@pytest.mark.slow
def test_segment_json_shapes_and_candidates(client, images):
    path, gt = images[0]
    r = client.post(
        "/v1/segment",
        files=upload(path),
        data={"expression": ["the person on the left", "a dog next to the table"]},
        params={"candidate_masks": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    n, h, w = gt.shape
    assert body["image"] == {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "width": w,
        "height": h,
        "num_proposals": n,
    }
    assert isinstance(body["cache_hit"], bool)
    assert r.headers["x-image-sha256"] == body["image"]["sha256"]
    assert {"total_ms", "image_ms", "predict_ms"} <= set(body["timings"])
    assert [res["expression"] for res in body["results"]] == [
        "the person on the left",
        "a dog next to the table",
    ]
    for res in body["results"]:
        validate(res)  # the package's one prediction record (docs/FORMATS.md)
        mask = rle_to_mask(res["mask"])
        assert mask.shape == (h, w) and res["mask"]["size"] == [h, w]
        assert res["found"] is True and res["area"] == int(mask.sum()) > 0
        assert res["box"] == pytest.approx(list(mask_to_box(mask)))
        assert np.array_equal(mask, gt[res["index"]])  # the answer is one of the proposals
        assert isinstance(res["score"], float)
        assert res["polygons"] and all(
            len(poly) >= 6 and len(poly) % 2 == 0 for poly in res["polygons"]
        )
        assert {"noun_phrase", "relation", "direction", "sentence"} <= set(res["parse"])
        cands = res["candidates"]
        assert 1 <= len(cands) <= 3
        assert res["index"] in [c["index"] for c in cands]
        for c in cands:
            cmask = rle_to_mask(c["mask"])
            assert np.array_equal(cmask, gt[c["index"]])
            assert c["box"] == pytest.approx(list(mask_to_box(cmask)))
            assert {"clip_score", "probability"} <= set(c)
    assert body["results"][0]["parse"]["relation"] == "left"


def test_expressions_as_json_list_keep_order(client, images):
    path, _ = images[0]
    r = client.post(
        "/v1/segment",
        files=upload(path),
        data={"expression": "a chair", "expressions": json.dumps(["the tv", "the lamp"])},
        params={"polygons": "false", "top_k": 2},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["expression"] for x in results] == ["a chair", "the tv", "the lamp"]
    assert all("polygons" not in x and "mask" not in x["candidates"][0] for x in results)
    assert all(len(x["candidates"]) <= 2 for x in results)


def test_rle_round_trip_equals_png_mask(client, images):
    path, _ = images[0]
    form = {"files": upload(path), "data": {"expression": "the person in the middle"}}
    js = client.post("/v1/segment", **form)
    png = client.post("/v1/segment", params={"format": "png_mask"}, **form)
    assert js.status_code == 200 and png.status_code == 200, (js.text, png.text)
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-cache-hit"] == "true"
    from_png = png_to_mask(png.content)
    from_rle = rle_to_mask(js.json()["results"][0]["mask"])
    assert from_png.shape == from_rle.shape
    assert np.array_equal(from_png, from_rle)

    over = client.post("/v1/segment", params={"format": "png_overlay"}, **form)
    assert over.status_code == 200 and over.headers["content-type"] == "image/png"
    from PIL import Image

    from hybridgl.images import load_image

    drawn = np.asarray(Image.open(io.BytesIO(over.content)).convert("RGB"))
    original = load_image(path)
    assert drawn.shape == original.shape
    inside = from_rle
    assert np.abs(drawn[inside].astype(int) - original[inside]).mean() > 5  # tinted
    far = ~inside
    far[: int(from_rle.shape[0] * 0.05)] = False  # where a label may be drawn
    assert np.mean(np.all(drawn[far] == original[far], axis=-1)) > 0.5


@pytest.mark.slow
def test_second_phrase_reuses_image_work(client, live, images):
    """The cache holds the ImageState: no second feature or GEM pass (counters, not clocks)."""
    seg = live[1]
    path, _ = images[1]
    before = counters(seg)
    first = client.post("/v1/segment", files=upload(path), data={"expression": "the big one"})
    assert first.status_code == 200 and first.json()["cache_hit"] is False
    after_first = counters(seg)
    assert after_first["feature_passes"] == before["feature_passes"] + 1
    assert after_first["gem_passes"] == before["gem_passes"] + 1
    text_before = seg.stats["text_encodes"]

    second = client.post(
        "/v1/segment", files=upload(path), data={"expression": "the small thing on the right"}
    )
    assert second.status_code == 200 and second.json()["cache_hit"] is True
    assert second.headers["x-cache-hit"] == "true"
    assert counters(seg) == after_first  # no SAM, no feature pass, no GEM pass
    assert seg.stats["text_encodes"] > text_before  # the text side did run
    assert second.json()["image"] == first.json()["image"]
    assert client.get("/health").json()["cache"]["hits"] >= 1


@pytest.mark.slow
def test_sam_path_runs_once_per_image(client, live):
    """An image without given proposals goes through SAM, once; the next phrase skips it."""
    seg = live[1]
    rng = np.random.default_rng(0)
    picture = png_bytes(rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8))
    before = counters(seg)
    r1 = client.post(
        "/v1/segment", files=upload(picture, "noise.png", "image/png"), data={"expression": "a"}
    )
    assert r1.status_code == 200, r1.text
    assert r1.json()["cache_hit"] is False
    assert counters(seg)["sam_runs"] == before["sam_runs"] + 1
    mid = counters(seg)
    r2 = client.post(
        "/v1/segment", files=upload(picture, "noise.png", "image/png"), data={"expression": "b"}
    )
    assert r2.status_code == 200 and r2.json()["cache_hit"] is True
    assert counters(seg) == mid
    res = r2.json()["results"][0]
    if not res["found"]:  # random SAM may find nothing: an explicit "no mask" answer
        assert res["area"] == 0 and res["candidates"] == [] and res["index"] is None


# ------------------------------------------------------------------ bad input


def _bad_cases(jpeg: bytes):
    big_png = png_bytes(np.zeros((1000, 1200, 3), np.uint8))  # 1.2 MP > 1 MP, tiny file
    return {
        "not an image": ({"files": upload(b"hello, not an image"), "data": {"expression": "x"}},
                         415, "invalid_image"),
        "empty file": ({"files": upload(b""), "data": {"expression": "x"}}, 415, "invalid_image"),
        "truncated jpeg": ({"files": upload(jpeg[:1500]), "data": {"expression": "x"}},
                           415, "invalid_image"),
        "empty expression": ({"files": upload(jpeg), "data": {"expression": "   "}},
                             422, "empty_expression"),
        "one empty among several": ({"files": upload(jpeg), "data": {"expression": ["a", ""]}},
                                    422, "empty_expression"),
        "missing expression": ({"files": upload(jpeg)}, 422, "missing_field"),
        "missing image": ({"data": {"expression": "x"}}, 422, "missing_field"),
        "image sent as text": ({"data": {"expression": "x", "image": "abc"}},
                               422, "validation_error"),
        "too many expressions": ({"files": upload(jpeg), "data": {"expression": list("abcde")}},
                                 422, "too_many_expressions"),
        "expression too long": ({"files": upload(jpeg), "data": {"expression": "a" * 201}},
                                422, "expression_too_long"),
        "expressions not json": ({"files": upload(jpeg), "data": {"expressions": "[1"}},
                                 422, "invalid_expressions"),
        "expressions not a list of strings": (
            {"files": upload(jpeg), "data": {"expressions": '{"a": 1}'}},
            422, "invalid_expressions"),
        "upload over the limit": ({"files": upload(b"\xff" * 1_100_000), "data": {"expression": "x"}},
                                  413, "payload_too_large"),
        "body far over the limit": ({"files": upload(b"\xff" * 3_000_000),
                                     "data": {"expression": "x"}}, 413, "payload_too_large"),
        "too many pixels": ({"files": upload(big_png, "big.png", "image/png"),
                             "data": {"expression": "x"}}, 413, "image_too_large"),
        "bad format": ({"files": upload(jpeg), "data": {"expression": "x"},
                        "params": {"format": "gif"}}, 422, "validation_error"),
        "top_k zero": ({"files": upload(jpeg), "data": {"expression": "x"},
                        "params": {"top_k": 0}}, 422, "validation_error"),
        "top_k too big": ({"files": upload(jpeg), "data": {"expression": "x"},
                           "params": {"top_k": 1000}}, 422, "invalid_parameter"),
        "json body": ({"json": {"image": "x", "expression": "y"}}, 422, "missing_field"),
        "multipart without boundary": ({"content": b"garbage",
                                        "headers": {"content-type": "multipart/form-data"}},
                                       400, "bad_request"),
        "malformed multipart": ({"content": b"--xyz\r\nnot a part",
                                 "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
                                None, None),
    }  # fmt: skip


BAD_CASES = list(_bad_cases(b"").keys())


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_4xx_json(client, images, case):
    jpeg = images[0][0].read_bytes()
    kwargs, status, code = _bad_cases(jpeg)[case]
    r = client.post("/v1/segment", **kwargs)
    if status is None:  # only "some 4xx" is promised
        assert 400 <= r.status_code < 500
        assert_error(r, r.status_code)
    else:
        assert_error(r, status, code)


def test_streamed_body_over_the_limit_gets_413(client):
    """A chunked upload (no Content-Length) is cut off once it passes the limit."""

    def body():
        yield b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(300):  # 3 MB
            yield b"\xff" * 10_000
        yield b'\r\n--xyz\r\nContent-Disposition: form-data; name="expression"\r\n\r\nx'
        yield b"\r\n--xyz--\r\n"

    r = client.post(
        "/v1/segment",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(r, 413, "payload_too_large")


def test_wrong_route_and_method_get_json(client):
    assert_error(client.get("/v1/segment"), 405, "method_not_allowed")
    assert_error(client.get("/no/such/page"), 404, "not_found")


def test_server_survives_bad_input(client):
    assert client.get("/health").json()["status"] == "ok"


# ------------------------------------------------------------------ timeout, busy, no model


@pytest.mark.slow
def test_timeout_gives_504_and_full_queue_gives_503(tiny_segmenter, images):
    blocking = BlockingSegmenter(tiny_segmenter)
    settings = ServerSettings(request_timeout_s=0.5, max_queue=1)
    jpeg = images[2][0].read_bytes()
    with (
        BackgroundServer(create_app(blocking, settings)) as server,
        httpx.Client(base_url=server.url, timeout=60.0) as c,
    ):
        first: dict = {}

        def send_first():
            first["r"] = c.post("/v1/segment", files=upload(jpeg), data={"expression": "x"})

        t = threading.Thread(target=send_first, daemon=True)
        t.start()
        try:
            assert blocking.entered.wait(60), "the first request never reached the model"
            # the model is held by the first request: the queue (1) is full
            busy = c.post("/v1/segment", files=upload(jpeg), data={"expression": "y"})
            assert_error(busy, 503, "busy")
            t.join(60)
            assert not t.is_alive()
            assert_error(first["r"], 504, "timeout")
            assert c.get("/health").status_code == 200  # the event loop was never blocked
        finally:
            blocking.release.set()
            t.join(60)


def test_model_that_fails_to_load_gives_503(images):
    from hybridgl.errors import WeightsError

    def factory():
        raise WeightsError("sam_vit_h_4b8939.pth is missing; put it in ~/.cache/hybridgl")

    with (
        BackgroundServer(create_app(factory, ServerSettings())) as server,
        httpx.Client(base_url=server.url, timeout=60.0) as c,
    ):
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "error"
        assert "sam_vit_h_4b8939.pth" in h.json()["error"]
        r = c.post("/v1/segment", files=upload(images[0][0]), data={"expression": "x"})
        err = assert_error(r, 503, "model_unavailable")
        assert "sam_vit_h_4b8939.pth" in err["message"]


# ------------------------------------------------------------------ settings and CLI


def test_lru_cache_evicts_by_count_and_bytes():
    class Blob:
        def __init__(self, n):
            self.n = n

        def nbytes(self):
            return self.n

    cache = LRUCache(3, max_bytes=100)
    for key in "abc":
        cache.put(key, Blob(10))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", Blob(10))  # over the count: b (least recently used) goes
    assert "b" not in cache and {"a", "c", "d"} == {k for k in "abcd" if k in cache}
    cache.put("e", Blob(85))  # over the count (c goes), then over the bytes (a goes)
    assert {k for k in "abcde" if k in cache} == {"d", "e"}
    assert cache.info()["bytes"] == 95
    assert cache.get("zzz") is None
    info = cache.info()
    assert info["hits"] == 1 and info["misses"] == 1 and info["evictions"] >= 2
    huge = LRUCache(2, max_bytes=10)
    huge.put("x", Blob(50))  # the newest entry is kept even when alone over the bound
    assert "x" in huge
    off = LRUCache(0)
    off.put("x", Blob(1))
    assert len(off) == 0 and off.get("x") is None


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_pixels"):
        ServerSettings(max_pixels=0)
    with pytest.raises(ValueError, match="top_k"):
        ServerSettings(top_k=30, max_top_k=20)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ServerSettings(request_timeout_s=0)


def test_serve_cli_options_and_errors(capsys):
    pytest.importorskip("hybridgl.cli.main")
    import socket

    from hybridgl.cli.main import main

    assert main(["serve", "--port", "99999"]) == 2
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    capsys.readouterr()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "cannot listen" in err and "Traceback" not in err
