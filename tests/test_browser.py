"""The web demo in a real browser: Playwright drives Debian's Chromium against a live server.

Loads the page, uploads a coco-mini image, types a phrase and presses Enter, then checks
that the mask overlay is drawn on the canvas (exact outline colour on the mask's edge
pixels), that the candidate list and the parse appear, that the JavaScript RLE decoder
agrees with pycocotools, that a second phrase is answered from the server's image cache,
and that clicking a candidate draws that candidate's mask. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from server_support import ARTIFACTS, BackgroundServer, GivenProposals, coco_images  # noqa: E402

from hybridgl.masks import rle_to_mask  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ANSWER_RGB = (229, 72, 77)  # app.js COLORS.answer: the outline is drawn opaque
CANDIDATE_RGB = (46, 125, 246)  # app.js COLORS.candidate
TIMEOUT_MS = 180_000


def chromium_path() -> str:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Chromium not installed (apt-get install chromium); the browser test needs it")


def edge_pixels(mask: np.ndarray, limit: int = 300) -> list[list[int]]:
    """Up to ``limit`` (x, y) mask pixels with a 4-neighbour outside, from the lower half
    of the mask (away from the label drawn above the box)."""
    p = np.pad(mask, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ys, xs = np.nonzero(mask & ~interior)
    rows = np.nonzero(mask.any(axis=1))[0]
    keep = ys >= (rows[0] + rows[-1]) / 2
    ys, xs = ys[keep], xs[keep]
    step = max(1, len(ys) // limit)
    return [[int(x), int(y)] for x, y in zip(xs[::step], ys[::step], strict=True)]


READ_PIXELS = """(points) => {
  const ctx = document.getElementById('canvas').getContext('2d');
  return points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
}"""

JS_DECODE = """(rle) => {
  const m = window.hybridgl.decodeRle(rle);
  let area = 0, weighted = 0;
  for (let i = 0; i < m.data.length; i++) if (m.data[i]) { area++; weighted += i; }
  return [m.height, m.width, area, weighted];
}"""


def fraction_with_colour(page, points, rgb) -> float:
    colours = page.evaluate(READ_PIXELS, points)
    return float(np.mean([tuple(c) == rgb for c in colours]))


@pytest.fixture(scope="module")
def page_and_server(tiny_segmenter):
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium_path()
    images = coco_images(1, min_instances=4, max_instances=8)
    seg = GivenProposals(tiny_segmenter, images)
    with (
        BackgroundServer(create_app(seg, ServerSettings(top_k=3))) as server,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, server, images[0], errors
        finally:
            browser.close()


@pytest.mark.slow
def test_demo_page_end_to_end(page_and_server):
    page, server, (image_path, gt), js_errors = page_and_server
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-info:has-text('random weights')")

    # pick the image, type a phrase, press Enter
    page.set_input_files("#file-input", str(image_path))
    page.wait_for_selector("#canvas:not([hidden])")
    page.fill("#phrase", "the person on the left")
    page.press("#phrase", "Enter")
    page.wait_for_selector("#candidates li")
    page.wait_for_selector("#canvas[data-shown='answer']")

    body = page.evaluate("window.hybridgl.state.last")
    res = body["results"][0]
    assert res["found"] and body["cache_hit"] is False
    n = gt.shape[0]
    assert page.locator("#candidates li").count() == min(3, n)
    assert page.locator("#result-expression").inner_text() == "“the person on the left”"
    assert page.locator("#parse-np").inner_text().strip() == res["parse"]["noun_phrase"]
    assert page.locator("#parse-relation").inner_text().strip() == res["parse"]["relation"]
    assert "round trip" in page.locator("#timing").inner_text()
    assert page.locator("#candidates li.selected[data-answer='true']").count() == 1

    # the JavaScript RLE decoder agrees with pycocotools on every mask it was sent
    for rle in [res["mask"]] + [c["mask"] for c in res["candidates"]]:
        mask = rle_to_mask(rle)
        h, w = mask.shape
        flat = np.flatnonzero(mask)  # row-major indices, as in the JS decoder
        assert page.evaluate(JS_DECODE, rle) == [h, w, int(mask.sum()), int(flat.sum())]

    # the overlay is on the canvas: the answer's outline pixels carry the answer colour
    answer_mask = rle_to_mask(res["mask"])
    size = page.evaluate(
        "(() => { const c = document.getElementById('canvas'); return [c.width, c.height]; })()"
    )
    assert size == [answer_mask.shape[1], answer_mask.shape[0]]
    assert fraction_with_colour(page, edge_pixels(answer_mask), ANSWER_RGB) > 0.9
    page.screenshot(path=str(ARTIFACTS / "browser-answer.png"))

    # a second phrase on the same image comes from the server's cache
    page.fill("#phrase", "the dog")
    page.press("#phrase", "Enter")
    page.wait_for_selector("#result-expression:has-text('the dog')")
    page.wait_for_selector("#timing .badge.hit")
    assert page.evaluate("window.hybridgl.state.last.cache_hit") is True

    # clicking a candidate shows that candidate's mask
    res = page.evaluate("window.hybridgl.state.last.results[0]")
    rank = next(i for i, c in enumerate(res["candidates"]) if c["index"] != res["index"])
    page.click(f"#candidates li[data-rank='{rank}']")
    page.wait_for_selector(f"#canvas[data-shown='candidate-{rank}']")
    assert page.locator(f"#candidates li[data-rank='{rank}']").get_attribute("class") == "selected"
    cand_mask = rle_to_mask(res["candidates"][rank]["mask"])
    assert np.array_equal(cand_mask, gt[res["candidates"][rank]["index"]])
    assert fraction_with_colour(page, edge_pixels(cand_mask), CANDIDATE_RGB) > 0.9
    page.screenshot(path=str(ARTIFACTS / "browser-candidate.png"))

    assert js_errors == []


def test_demo_page_reports_bad_image(page_and_server, tmp_path):
    page, server, _, js_errors = page_and_server
    page.goto(server.url + "/")
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is text, not a PNG")
    page.set_input_files("#file-input", str(fake))
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.png" in page.locator("#error").inner_text()
    page.screenshot(path=str(ARTIFACTS / "browser-bad-image.png"))
    assert js_errors == []


DROP_FILE = """([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: 'image/jpeg' }));
  const zone = document.getElementById('drop-zone');
  zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
  zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
}"""


def test_demo_page_accepts_a_dropped_image(page_and_server):
    import base64

    page, server, (image_path, gt), js_errors = page_and_server
    page.goto(server.url + "/")
    b64 = base64.b64encode(image_path.read_bytes()).decode()
    page.evaluate(DROP_FILE, [b64, image_path.name])
    page.wait_for_selector("#canvas:not([hidden])")
    h, w = gt.shape[1:]
    assert f"{w}×{h}" in page.locator("#image-info").inner_text()
    assert page.locator("#phrase").is_enabled()
    assert js_errors == []


@pytest.mark.slow
def test_page_loads_nothing_from_other_hosts_and_docs_are_off(page_and_server):
    """Offline: the page and everything it loads come from the server itself; the CDN-based
    Swagger UI / ReDoc pages are not served (the schema stays at /openapi.json)."""
    page, server, _, js_errors = page_and_server
    requested: list[str] = []

    def record(req) -> None:
        requested.append(req.url)

    page.on("request", record)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-info:has-text('random weights')")
    for path in ("/docs", "/redoc"):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 404, path
    response = page.goto(server.url + "/openapi.json")
    assert response is not None and response.status == 200
    outside = [u for u in requested if not u.startswith((server.url + "/", "data:", "blob:"))]
    assert requested and outside == []
    page.remove_listener("request", record)
    assert js_errors == []


@pytest.mark.slow
def test_page_asks_for_the_api_key(page_and_server, tiny_segmenter):
    page, _, (image_path, gt), _ = page_and_server
    seg = GivenProposals(tiny_segmenter, [(image_path, gt)])
    key = "browser-key-42"
    with BackgroundServer(create_app(seg, ServerSettings(api_key=key))) as server:
        own = page.context.browser.new_page()
        try:
            own.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            own.on("pageerror", lambda e: errors.append(str(e)))
            own.goto(server.url + "/")
            own.wait_for_selector("#key-form:not([hidden])")
            assert own.locator("#model-info").inner_text() == "API key needed"
            own.fill("#api-key", key)
            own.press("#api-key", "Enter")
            own.wait_for_selector("#model-info:has-text('random weights')")
            assert own.locator("#key-form").is_hidden()
            own.set_input_files("#file-input", str(image_path))
            own.fill("#phrase", "the person on the left")
            own.press("#phrase", "Enter")
            own.wait_for_selector("#candidates li")
            assert own.evaluate("window.hybridgl.state.last.results[0].found") is True
            assert errors == []
        finally:
            own.close()
