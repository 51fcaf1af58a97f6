"""The web demo's targets (issue 19) in a real browser: Playwright drives Debian's Chromium.

With "Targets: many" the page sends ``targets=many`` and draws every target's mask in its
own colour (checked on each target's outline pixels) with a numbered legend; a phrase with
no target shows "Not found in this image" and draws no mask; "one" is the page as before.
The test double opens the thresholds (so the tiny random model returns several targets)
or shuts them (phrases with "unicorn"): the page is what is tested. Screenshots go to
``test-artifacts/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from server_support import ARTIFACTS, BackgroundServer, GivenProposals, coco_images  # noqa: E402
from test_browser import (  # noqa: E402
    ANSWER_RGB,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    chromium_path,
    edge_pixels,
    fraction_with_colour,
)

from hybridgl.masks import rle_to_mask  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402
from hybridgl.targets import TargetRules  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OPEN = TargetRules(floor=-1.0, contrast_margin=-2.0, margin=10.0, cosine_margin=2.0)
SHUT = TargetRules(floor=1.5)


class RulesByPhrase(GivenProposals):
    """Open thresholds for every phrase, shut ones for phrases naming a unicorn."""

    def predict_many(self, expressions: list[str], **kw: Any) -> Any:
        if kw.get("targets", "one") != "one" and "thresholds" not in kw:
            kw["thresholds"] = SHUT if any("unicorn" in e for e in expressions) else OPEN
        return self._seg.predict_many(expressions, **kw)


@pytest.fixture(scope="module")
def page_and_server(tiny_segmenter):
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium_path()
    images = coco_images(1, min_instances=4, max_instances=8)
    seg = RulesByPhrase(tiny_segmenter, images)
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


def ask(page, phrase: str) -> dict:
    page.fill("#phrase", phrase)
    page.press("#phrase", "Enter")
    page.wait_for_selector(f"#result-expression:has-text('{phrase}')")
    page.wait_for_selector("#canvas[data-shown='answer']")
    return page.evaluate("window.hybridgl.state.last.results[0]")


def test_many_targets_in_colours_and_not_found(page_and_server) -> None:
    page, server, (image_path, gt), js_errors = page_and_server
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-info:has-text('random weights')")
    page.set_input_files("#file-input", str(image_path))
    page.wait_for_selector("#canvas:not([hidden])")

    page.select_option("#targets-mode", "many")
    res = ask(page, "the people")
    assert res["evidence"]["mode"] == "many" and len(res["targets"]) >= 2
    page.wait_for_selector("#targets-legend[data-state='targets']:not([hidden])")
    items = page.locator("#targets-legend li")
    assert items.count() == len(res["targets"])
    palette = page.evaluate("window.hybridgl.targetColours")
    colours = [tuple(palette[k % len(palette)]) for k in range(len(res["targets"]))]
    assert len(set(colours[: len(palette)])) == min(len(colours), len(palette))  # distinct
    for k, t in enumerate(res["targets"]):
        assert f"proposal {t['index']}" in items.nth(k).inner_text()
        swatch = (
            items.nth(k).locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor")
        )
        assert swatch == f"rgb({', '.join(map(str, colours[k]))})"
    # each target's outline carries its colour where no better target (drawn after it, on
    # top: mask, box and label) covers it
    masks = [rle_to_mask(t["mask"]) for t in res["targets"]]
    checked = 0
    for k, m in enumerate(masks):
        covered = np.zeros_like(m)
        for t, later in zip(res["targets"][:k], masks[:k], strict=True):
            x, y, w, h = (int(v) for v in t["box"])
            covered |= later
            covered[max(0, y - 40) : y + h + 5, max(0, x - 4) : x + w + 5] = True
        points = [[x, y] for x, y in edge_pixels(m, limit=5000) if not covered[y, x]]
        if len(points) >= 20:
            assert fraction_with_colour(page, points, colours[k]) > 0.9, k
            checked += 1
    assert checked >= 1
    page.screenshot(path=str(ARTIFACTS / "browser-targets-many.png"))

    # nothing found: a clear state, no mask drawn
    res = ask(page, "the unicorn")
    assert res["found"] is False
    page.wait_for_selector("#targets-legend[data-state='not-found']:not([hidden])")
    assert "Not found in this image" in page.locator("#targets-legend").inner_text()
    assert page.locator("#result-score").inner_text() == "not found"
    union = np.logical_or.reduce(masks)
    assert fraction_with_colour(page, edge_pixels(union), ANSWER_RGB) < 0.05
    page.screenshot(path=str(ARTIFACTS / "browser-targets-not-found.png"))

    # back to one: the page as before (one answer in the answer colour, no legend)
    page.select_option("#targets-mode", "one")
    res = ask(page, "the people on the left")
    assert res["evidence"]["mode"] == "one"
    page.wait_for_selector("#targets-legend[data-state='one'][hidden]", state="attached")
    assert fraction_with_colour(page, edge_pixels(rle_to_mask(res["mask"])), ANSWER_RGB) > 0.9
    assert js_errors == []
