"""Zero, one or many targets on the HTTP API (issue 19): ``targets`` and ``thresholds`` on
``POST /v1/segment``, every target and the evidence in the answer, the union as PNG, a
not-found answer that is not an error, and 422 ``invalid_parameter`` for bad values.

A real tiny Segmenter with COCO instance masks as proposals over real HTTP; the choices
mean nothing, the contracts are real."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from server_support import BackgroundServer, GivenProposals, coco_images  # noqa: E402

from hybridgl.masks import png_to_mask, rle_to_mask  # noqa: E402
from hybridgl.schemas import validate  # noqa: E402
from hybridgl.server import ServerSettings, create_app  # noqa: E402
from hybridgl.server.errors import ERROR_CODES  # noqa: E402
from hybridgl.targets import TargetRules  # noqa: E402

OPEN = TargetRules(floor=-1.0, contrast_margin=-2.0, margin=10.0, cosine_margin=2.0)
OPEN_JSON = json.dumps({"rules": OPEN.to_dict()})
SHUT_JSON = json.dumps({"floor": 1.5})


@pytest.fixture(scope="module")
def images():
    return coco_images(1, min_instances=4, max_instances=8)


@pytest.fixture(scope="module")
def client(tiny_segmenter, images):
    seg = GivenProposals(tiny_segmenter, images)
    with (
        BackgroundServer(create_app(seg, ServerSettings(top_k=3))) as server,
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(300.0, connect=10.0)) as c,
    ):
        yield c


def post(client, images, params=None, expression="the people"):
    path, _ = images[0]
    return client.post(
        "/v1/segment",
        files={"image": ("im.jpg", path.read_bytes(), "image/jpeg")},
        data={"expression": expression},
        params=params or {},
    )


def stable(body: dict) -> dict:
    body = dict(body)
    body.pop("timings")
    body.pop("cache_hit")
    body["results"] = [{k: v for k, v in r.items() if k != "timings"} for r in body["results"]]
    return body


def test_targets_many_answers_every_target(client, images) -> None:
    _, gt = images[0]
    r = post(client, images, {"targets": "many", "thresholds": OPEN_JSON})
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    validate(res)
    assert res["found"] and res["evidence"]["mode"] == "many" and res["evidence"]["several"]
    # COCO instances do not overlap much: with open thresholds every one is a target
    assert 2 <= len(res["targets"]) <= gt.shape[0]
    union = np.zeros(gt.shape[1:], bool)
    for t in res["targets"]:
        m = rle_to_mask(t["mask"])
        np.testing.assert_array_equal(m, gt[t["index"]])
        union |= m
    np.testing.assert_array_equal(rle_to_mask(res["mask"]), union)
    assert res["targets"][0]["index"] == res["index"]
    png = post(client, images, {"targets": "many", "thresholds": OPEN_JSON, "format": "png_mask"})
    assert png.status_code == 200 and png.headers["x-targets"] == str(len(res["targets"]))
    np.testing.assert_array_equal(png_to_mask(png.content), union)


def test_default_is_targets_one(client, images) -> None:
    a, b = post(client, images), post(client, images, {"targets": "one", "thresholds": OPEN_JSON})
    assert a.status_code == b.status_code == 200
    assert stable(a.json()) == stable(b.json())
    [res] = a.json()["results"]
    assert res["evidence"]["mode"] == "one" and [t["index"] for t in res["targets"]] == [
        res["index"]
    ]
    assert a.headers["x-targets"] == "1"


def test_not_found_is_an_answer(client, images) -> None:
    r = post(client, images, {"targets": "auto", "thresholds": SHUT_JSON}, "a red car")
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    validate(res)
    assert res["found"] is False and res["targets"] == [] and res["index"] is None
    assert res["evidence"]["rule"] == "below_floor" and res["evidence"]["floor"] == 1.5
    assert not rle_to_mask(res["mask"]).any()
    png = post(client, images, {"targets": "auto", "thresholds": SHUT_JSON, "format": "png_mask"})
    assert png.headers["x-found"] == "false" and png.headers["x-targets"] == "0"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"targets": "all"}, "targets must be one of"),
        ({"targets": "many", "thresholds": "{floor: 1"}, "thresholds is not JSON"),
        ({"targets": "many", "thresholds": '{"flor": 0.2}'}, "unknown keys ['flor']"),
        ({"targets": "many", "thresholds": '{"floor": "low"}'}, "floor must be a finite number"),
        ({"targets": "many", "thresholds": "[1, 2]"}, "expected an object"),
        ({"targets": "many", "thresholds": "{" + " " * 5000 + "}"}, "longer than"),
    ],
)
def test_bad_values_are_422_invalid_parameter(client, images, params, needle) -> None:
    r = post(client, images, params)
    assert r.status_code == ERROR_CODES["invalid_parameter"] == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter" and needle in err["message"], err
    assert "Traceback" not in r.text


def test_server_thresholds_file_is_the_default(tiny_segmenter, images, tmp_path) -> None:
    """``serve --thresholds FILE``: requests with targets many/auto and no thresholds of
    their own use the file; a request's own thresholds win; targets one ignores it."""
    shut = tmp_path / "shut.json"
    shut.write_text(SHUT_JSON)
    seg = GivenProposals(tiny_segmenter, images)
    settings = ServerSettings(top_k=3, thresholds=str(shut))
    with (
        BackgroundServer(create_app(seg, settings)) as server,
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(300.0, connect=10.0)) as c,
    ):
        [res] = post(c, images, {"targets": "auto"}).json()["results"]
        assert res["found"] is False and res["evidence"]["floor"] == 1.5
        [res] = post(c, images, {"targets": "many", "thresholds": OPEN_JSON}).json()["results"]
        assert res["found"] is True and res["evidence"]["floor"] == -1.0
        [res] = post(c, images).json()["results"]
        assert res["found"] is True and res["evidence"]["mode"] == "one"
        assert "thresholds" not in c.get("/v1/models").json()["limits"]  # a server-side path


def test_serve_refuses_a_bad_thresholds_file(tmp_path, capsys) -> None:
    from hybridgl.cli.main import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"flor": 1}')
    assert main(["serve", "--thresholds", str(bad), "--port", "0"]) == 3
    err = capsys.readouterr().err
    assert "--thresholds" in err and "unknown keys ['flor']" in err and "Traceback" not in err
