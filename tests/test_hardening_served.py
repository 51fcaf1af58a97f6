"""Indexed files are served back only as they were indexed (issue 17, second round).

``GET /v1/search/images/{id}`` and ``hybridgl search --html`` read what the stored path
points to *now*; a photo later replaced (by other bytes, or by a symbolic link to a secret
file outside the indexed folders) must not be served: 410 for changed bytes, 404 for a
file that is gone or leads outside the indexed folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")

from fastapi.testclient import TestClient  # noqa: E402

from hybridgl.search import Index  # noqa: E402
from hybridgl.search.gallery import render_gallery  # noqa: E402
from hybridgl.search.inputs import image_id_for  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")


@pytest.fixture
def indexed(tmp_path: Path, tiny_segmenter):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(11)
    images, anns = [], []
    for k in range(3):
        name = f"p{k}.png"
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": k, "file_name": name, "height": 40, "width": 56})
        poly = [2, 2, 30, 2, 30, 20, 2, 20]
        anns.append({"id": k, "image_id": k, "segmentation": [poly], "iscrowd": 0})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    idx = Index(tmp_path / "db", segmenter=tiny_segmenter)
    assert idx.add([folder], progress=False, proposals_from=ann).indexed == 3
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password=hunter2\n")
    return idx, folder, secret


def _url(path: Path) -> str:
    return f"/v1/search/images/{image_id_for(str(path))}"


@pytest.mark.slow
def test_changed_or_swapped_files_are_not_served(indexed, tiny_segmenter) -> None:
    idx, folder, secret = indexed
    assert idx._store().roots == [os.path.realpath(folder)]
    p0, p1, p2 = (folder / f"p{k}.png" for k in range(3))
    original = p2.read_bytes()
    app = create_app(tiny_segmenter, ServerSettings(search_db=str(idx.db)))
    with TestClient(app) as client:
        r = client.get(_url(p2))
        assert r.status_code == 200 and r.content == original
        assert r.headers["content-type"] == "image/png"
        # a photo replaced by a symbolic link to a file outside the indexed folder
        p0.unlink()
        p0.symlink_to(secret)
        r = client.get(_url(p0))
        assert r.status_code == 404 and b"hunter2" not in r.content, r.text
        # the same bytes count, not the name: other bytes of the same size are a 410
        data = bytearray(p1.read_bytes())
        data[-20] ^= 0xFF
        p1.write_bytes(bytes(data))
        r = client.get(_url(p1))
        assert r.status_code == 410 and r.json()["error"]["code"] == "image_changed"
        # a link inside the folder to another indexed photo: other bytes, 410
        p1.unlink()
        p1.symlink_to(p2)
        assert client.get(_url(p1)).status_code == 410
        p2.unlink()
        assert client.get(_url(p2)).status_code == 404
        p2.write_bytes(original)  # put back exactly: served again
        assert client.get(_url(p2)).content == original


@pytest.mark.slow
def test_html_gallery_shows_only_indexed_bytes(indexed) -> None:
    idx, folder, secret = indexed
    hits = idx.search("a thing", top=3)
    assert len(hits) == 3
    page = render_gallery("a thing", hits, {"db": idx.db})
    assert page.count("data:image/jpeg;base64,") == 3
    by_name = {Path(h.path).name: h for h in hits}
    (folder / "p0.png").unlink()
    (folder / "p0.png").symlink_to(secret)
    data = bytearray((folder / "p1.png").read_bytes())
    data[-20] ^= 0xFF
    (folder / "p1.png").write_bytes(bytes(data))
    page = render_gallery("a thing", list(by_name.values()), {"db": idx.db})
    assert page.count("data:image/jpeg;base64,") == 1
    assert "image changed since it was indexed" in page
    assert "outside the indexed folders" in page
