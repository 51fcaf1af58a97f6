"""Collection search over HTTP: ``POST /v1/search``, the indexed-image route, and the web
page's Search tab driven in Chromium (Playwright), like the Segment page's browser test."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")

from conftest import COCO  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from server_support import ARTIFACTS, BackgroundServer  # noqa: E402

from hybridgl.masks import rle_to_mask  # noqa: E402
from hybridgl.search import Index  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402

ANSWER_RGB = (229, 72, 77)  # search.js COLORS.answer (outline drawn opaque)
CANDIDATE_RGB = (46, 125, 246)
TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def search_db(tmp_path_factory, coco_val, tiny_segmenter):
    """An index of two coco-mini images (3-6 COCO instances each) built with the tiny model."""
    picked = []
    for image_id in sorted(coco_val["anns"]):
        if 3 <= len(coco_val["anns"][image_id]) <= 6:
            path = COCO / "val2017" / coco_val["images"][image_id]["file_name"]
            if path.exists():
                picked.append(path)
        if len(picked) == 2:
            break
    if len(picked) < 2:
        pytest.skip("coco-mini lacks two images with 3-6 instances")
    root = tmp_path_factory.mktemp("search-server")
    (root / "images").mkdir()
    for p in picked:
        shutil.copy(p, root / "images" / p.name)
    idx = Index(root / "db", segmenter=tiny_segmenter)
    ann = COCO / "annotations" / "instances_val2017.json"
    assert idx.add([root / "images"], progress=False, proposals_from=ann).indexed == 2
    return idx


@pytest.mark.slow
def test_search_api(search_db, tiny_segmenter):
    app = create_app(tiny_segmenter, ServerSettings(search_db=str(search_db.db)))
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["search"] is True
        r = client.post("/v1/search", json={"expression": "the dog on the left", "top": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        want = search_db.search("the dog on the left", top=5)
        assert [h["image_id"] for h in body["hits"]] == [h.image_id for h in want]
        for h, w in zip(body["hits"], want, strict=True):
            assert h["similarity"] == w.similarity and h["rank"] == w.rank
            assert h["name"] == w.path.rsplit("/", 1)[-1] and "path" not in h
            assert np.array_equal(rle_to_mask(h["mask"]), w.prediction.mask)
            img = client.get(h["image_url"])
            assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"  # the JPEG
        r = client.post("/v1/search", json={"expression": "x", "candidate_masks": True})
        cands = r.json()["hits"][0]["candidates"]
        assert all("mask" in c for c in cands)
        r = client.post("/v1/search", json={"expression": "a", "min_score": 2.0})
        assert r.status_code == 200 and r.json()["hits"] == []
        assert client.post("/v1/search", json={"expression": "  "}).status_code == 422
        assert client.post("/v1/search", json={"expression": "a", "top": 0}).status_code == 422
        assert client.get("/v1/search/images/0123456789abcdef0123").status_code == 404
        assert client.get("/v1/search/images/..%2F..%2Fetc%2Fpasswd").status_code == 404
    with TestClient(create_app(tiny_segmenter, ServerSettings())) as client:
        assert client.get("/v1/models").json()["search"] is False
        r = client.post("/v1/search", json={"expression": "a dog"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "search_disabled"


def test_serve_refuses_a_bad_db(tmp_path, capsys, monkeypatch):
    from hybridgl.cli.main import main

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    rc = main(["serve", "--db", str(tmp_path / "none"), "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 3 and "no index at" in err and len(err.strip().splitlines()) == 1


READ_PIXELS = """([id, points]) => {
  const ctx = document.getElementById(id).getContext('2d');
  return points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
}"""


def _edges(mask: np.ndarray, limit: int = 300) -> list[list[int]]:
    p = np.pad(mask, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ys, xs = np.nonzero(mask & ~interior)
    step = max(1, len(ys) // limit)
    return [[int(x), int(y)] for x, y in zip(xs[::step], ys[::step], strict=True)]


def _colour_fraction(page, points, rgb) -> float:
    colours = page.evaluate(READ_PIXELS, ["detail-canvas", points])
    return float(np.mean([tuple(c) == rgb for c in colours]))


@pytest.mark.slow
@pytest.mark.browser
def test_search_tab_in_chromium(search_db, tiny_segmenter):
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_browser import CHROMIUM_ARGS, chromium_path

    exe = chromium_path()
    app = create_app(tiny_segmenter, ServerSettings(search_db=str(search_db.db)))
    with BackgroundServer(app) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_selector("#tabs:not([hidden])")
            page.click("#tab-search")
            page.wait_for_selector("#search-view:not([hidden])")
            assert page.locator("#segment-view").is_hidden()
            page.fill("#search-phrase", "the person on the left")
            page.press("#search-phrase", "Enter")
            page.wait_for_selector(".hit[data-drawn='true'] >> nth=1")
            body = page.evaluate("window.hybridglSearch.state.last")
            want = search_db.search("the person on the left", top=12)
            assert [h["image_id"] for h in body["hits"]] == [h.image_id for h in want]
            assert page.locator(".hit").count() == 2
            assert page.locator(".hit .score").first.inner_text().startswith("#1 · ")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-search-grid.png"))

            # click the best hit: the full image with its chosen mask drawn
            page.click(".hit[data-rank='1']")
            page.wait_for_selector("#detail-canvas[data-shown='answer']")
            hit = body["hits"][0]
            answer = rle_to_mask(hit["mask"])
            size = page.evaluate(
                "(() => { const c = document.getElementById('detail-canvas');"
                " return [c.width, c.height]; })()"
            )
            assert size == [answer.shape[1], answer.shape[0]]
            assert _colour_fraction(page, _edges(answer), ANSWER_RGB) > 0.9
            cands = hit["candidates"]
            assert page.locator("#detail-candidates li").count() == len(cands)
            # and another candidate's mask on a click
            rank = next(i for i, c in enumerate(cands) if c["index"] != hit["index"])
            page.click(f"#detail-candidates li[data-rank='{rank}']")
            page.wait_for_selector(f"#detail-canvas[data-shown='candidate-{rank}']")
            cand = rle_to_mask(cands[rank]["mask"])
            assert _colour_fraction(page, _edges(cand), CANDIDATE_RGB) > 0.9
            page.screenshot(path=str(ARTIFACTS / "browser-search-detail.png"))
            page.click("#detail-close")
            page.wait_for_selector("#search-grid:not([hidden])")

            assert errors == []
        finally:
            browser.close()
