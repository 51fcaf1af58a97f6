"""Collection search with ``targets`` (issue 19): images where the phrase has no target are
dropped and counted (Python, CLI text and JSON, HTTP), hits carry every target, and the
default stays the method's single answer. Two coco-mini images, COCO masks as proposals,
tiny random weights."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import COCO

pytest.importorskip("lancedb")

from hybridgl.cli.main import main  # noqa: E402
from hybridgl.search.index import Index  # noqa: E402
from hybridgl.targets import TargetRules  # noqa: E402

OPEN = TargetRules(floor=-1.0, contrast_margin=-2.0, margin=10.0, cosine_margin=2.0)
SHUT = TargetRules(floor=1.5)


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")


@pytest.fixture(scope="module")
def index(tmp_path_factory, coco_val, tiny_segmenter):
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
    root = tmp_path_factory.mktemp("search-targets")
    (root / "images").mkdir()
    for p in picked:
        shutil.copy(p, root / "images" / p.name)
    idx = Index(root / "db", segmenter=tiny_segmenter, gem_dtype="float32")
    ann = COCO / "annotations" / "instances_val2017.json"
    assert idx.add([root / "images"], progress=False, proposals_from=ann).indexed == 2
    return idx


def test_search_drops_images_without_a_target(index) -> None:
    one = index.search("the people", top=5)
    assert len(one) == 2 and one.no_target == 0 and one.info()["no_target"] == 0
    assert all(len(h.prediction.targets) == 1 for h in one)
    same = index.search("the people", top=5, targets="one", thresholds=SHUT)
    assert [(h.image_id, h.similarity) for h in same] == [(h.image_id, h.similarity) for h in one]
    none = index.search("the people", top=5, targets="auto", thresholds=SHUT)
    assert list(none) == [] and none.no_target == 2 and none.reranked == 2
    many = index.search("the people", top=5, targets="many", thresholds=OPEN)
    assert many.no_target == 0 and len(many) == 2
    by_id = {h.image_id: h for h in one}
    for h in many:  # the best target is the "one" answer: the same ranking cosine
        assert h.prediction.index == by_id[h.image_id].prediction.index
        assert h.similarity == by_id[h.image_id].similarity
        assert len(h.prediction.targets) >= 2 and h.to_dict()["evidence"]["mode"] == "many"
    with pytest.raises(ValueError, match="targets must be one of"):
        index.search("the people", targets="all")


@pytest.mark.slow
def test_search_cli_and_http_say_how_many_were_dropped(index, tiny_segmenter, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from hybridgl.server import ServerSettings, create_app

    shut = tmp_path / "shut.json"
    shut.write_text(json.dumps({"rules": SHUT.to_dict()}))
    out = tmp_path / "hits.json"
    rc = main(["search", "the people", "--db", str(index.db), "--targets", "auto",
               "--thresholds", str(shut), "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "dropped 2 images where the phrase has no target" in text and "nothing found" in text
    doc = json.loads(out.read_text())
    assert doc["no_target"] == 2 and doc["hits"] == []
    (tmp_path / "bad.json").write_text('{"flor": 1}')
    rc = main(["search", "the people", "--db", str(index.db), "--targets", "auto",
               "--thresholds", str(tmp_path / "bad.json")])  # fmt: skip
    assert rc == 3 and "unknown keys ['flor']" in capsys.readouterr().err

    app = create_app(tiny_segmenter, ServerSettings(search_db=str(index.db)))
    with TestClient(app) as client:
        r = client.post("/v1/search", json={"expression": "the people", "targets": "auto",
                                            "thresholds": {"floor": 1.5}})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["hits"] == [] and r.json()["no_target"] == 2
        r = client.post("/v1/search", json={"expression": "the people"})
        assert r.json()["no_target"] == 0 and len(r.json()["hits"]) == 2
        for body, needle in (
            ({"targets": "all"}, "targets must be one of"),
            ({"targets": "many", "thresholds": {"floor": "x"}}, "floor must be a finite number"),
        ):
            r = client.post("/v1/search", json={"expression": "the people", **body})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
            assert needle in r.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.browser
def test_search_tab_says_how_many_were_dropped(index, tiny_segmenter, tmp_path) -> None:
    """The page's Search tab with Targets auto, on a server whose thresholds file
    (``serve --thresholds``) shuts the no-target test: every image is dropped, and the page
    says so; with Targets one the same search shows both images."""
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("fastapi")
    from server_support import ARTIFACTS, BackgroundServer
    from test_browser import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path

    from hybridgl.server import ServerSettings, create_app

    exe = chromium_path()
    shut = tmp_path / "shut.json"
    shut.write_text(json.dumps({"rules": SHUT.to_dict()}))
    settings = ServerSettings(search_db=str(index.db), thresholds=str(shut))
    with (
        BackgroundServer(create_app(tiny_segmenter, settings)) as server,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_selector("#tabs:not([hidden])")
            page.click("#tab-search")
            page.select_option("#search-targets-mode", "auto")
            page.fill("#search-phrase", "the people")
            page.press("#search-phrase", "Enter")
            page.wait_for_selector("#search-no-target:not([hidden])")
            text = page.locator("#search-no-target").inner_text()
            assert text == "Dropped 2 images where the phrase has no target."
            assert page.evaluate("window.hybridglSearch.state.last.hits") == []
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-search-no-target.png"))
            page.select_option("#search-targets-mode", "one")
            page.press("#search-phrase", "Enter")
            page.wait_for_selector(".hit >> nth=1")
            assert page.locator("#search-no-target").is_hidden()
            assert errors == []
        finally:
            browser.close()
