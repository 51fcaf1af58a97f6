"""Bounded load test: 50 concurrent requests, good and bad mixed, against one live server.

Every good answer must equal the answer to the same request made alone (no mixed-up
results), every bad one gets its 4xx JSON, the server stays up, and the image work is
done once per image however many requests race for it. Everything has a timeout.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from server_support import BackgroundServer, GivenProposals, coco_images, counters  # noqa: E402

from hybridgl.server import ServerSettings, create_app  # noqa: E402

N_REQUESTS = 50
REQUEST_TIMEOUT_S = 240.0
PHRASES = [
    "the person on the left",
    "a dog",
    "the biggest thing in the middle",
    "the small cup on the right",
]
SETTINGS = ServerSettings(
    max_upload_bytes=1_000_000,
    max_expressions=3,
    max_queue=N_REQUESTS + 10,
    cache_size=8,
    request_timeout_s=REQUEST_TIMEOUT_S,
)


def _strip(body: dict) -> list[dict]:
    """The parts of an answer that must not depend on concurrency (timings are left out)."""
    out = []
    for res in body["results"]:
        res = dict(res)
        res.pop("timings", None)
        out.append(res)
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal answers: same masks, boxes, parses and candidates; scores equal to float noise."""
    if len(a) != len(b):
        return False
    exact = ("expression", "found", "box", "mask", "area", "index", "pure_index", "parse")
    for x, y in zip(a, b, strict=True):
        if any(x[k] != y[k] for k in exact):
            return False
        if [c["index"] for c in x["candidates"]] != [c["index"] for c in y["candidates"]]:
            return False
        px = [x["score"]] + [c["probability"] for c in x["candidates"]]
        py = [y["score"]] + [c["probability"] for c in y["candidates"]]
        if not np.allclose(px, py, rtol=1e-5, atol=1e-6):
            return False
    return True


def _plan(images: list) -> list[dict]:
    """50 requests: good ones over 3 images and 4 phrases (single and multiple
    expressions), and bad ones of six kinds, interleaved."""
    bad_kinds = [
        ("not_image", 415),
        ("empty_expression", 422),
        ("too_many", 422),
        ("missing_image", 422),
        ("too_large", 413),
        ("bad_format", 422),
    ]
    plan = []
    for i in range(N_REQUESTS):
        if i % 3 == 2:
            kind, status = bad_kinds[(i // 3) % len(bad_kinds)]
            plan.append({"kind": kind, "status": status, "image": i % len(images)})
        else:
            img = (i + i // 3) % len(images)
            if i % 5 == 0:
                exprs = [PHRASES[i % 4], PHRASES[(i + 1) % 4]]
            else:
                exprs = [PHRASES[i % 4]]
            plan.append({"kind": "good", "status": 200, "image": img, "exprs": exprs})
    return plan


def _request_kwargs(item: dict, jpegs: list[bytes]) -> dict:
    jpeg = jpegs[item["image"]]
    kind = item["kind"]
    files = {"image": ("image.jpg", jpeg, "image/jpeg")}
    if kind == "good":
        return {"files": files, "data": {"expression": item["exprs"]}}
    if kind == "not_image":
        return {
            "files": {"image": ("x.jpg", b"GIF89a? no", "image/jpeg")},
            "data": {"expression": "a"},
        }
    if kind == "empty_expression":
        return {"files": files, "data": {"expression": " \t "}}
    if kind == "too_many":
        return {"files": files, "data": {"expression": ["a", "b", "c", "d"]}}
    if kind == "missing_image":
        return {"data": {"expression": "a"}}
    if kind == "too_large":
        return {
            "files": {"image": ("x.jpg", b"\0" * 1_200_000, "image/jpeg")},
            "data": {"expression": "a"},
        }
    if kind == "bad_format":
        return {"files": files, "data": {"expression": "a"}, "params": {"format": "bmp"}}
    raise AssertionError(kind)  # fmt: skip


@pytest.mark.slow
def test_concurrent_mixed_load(tiny_segmenter):
    images = coco_images(3)
    jpegs = [path.read_bytes() for path, _ in images]
    seg = GivenProposals(tiny_segmenter, images)
    plan = _plan(images)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)

    with BackgroundServer(create_app(seg, SETTINGS)) as server:
        url = server.url
        reference: dict[tuple[int, tuple[str, ...]], list[dict]] = {}

        def sequential(client, img: int, exprs: list[str]) -> list[dict]:
            r = client.post(
                "/v1/segment",
                files={"image": ("image.jpg", jpegs[img], "image/jpeg")},
                data={"expression": exprs},
            )
            assert r.status_code == 200, r.text
            return _strip(r.json())

        goods = sorted({(p["image"], tuple(p["exprs"])) for p in plan if p["kind"] == "good"})
        assert {img for img, _ in goods} == {0, 1, 2}
        assert len({p["kind"] for p in plan}) == 7
        with httpx.Client(base_url=url, timeout=timeout) as client:
            # answers made alone, before the burst, for images 0 and 1 (image 2 stays cold)
            for img, exprs in goods:
                if img != 2:
                    reference[(img, exprs)] = sequential(client, img, list(exprs))
        before = counters(tiny_segmenter)

        async def burst():
            limits = httpx.Limits(max_connections=N_REQUESTS + 5)
            async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as ac:

                async def one(item):
                    return await ac.post("/v1/segment", **_request_kwargs(item, jpegs))

                async def health():
                    return await ac.get("/health")

                tasks = [one(item) for item in plan] + [health() for _ in range(5)]
                return await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT_S + 60)

        responses = asyncio.run(burst())
        answers, healths = responses[: len(plan)], responses[len(plan) :]
        assert all(h.status_code == 200 for h in healths)  # the event loop kept answering

        # image work: exactly one feature/GEM pass for the one cold image, however many raced
        after = counters(tiny_segmenter)
        assert after["feature_passes"] == before["feature_passes"] + 1
        assert after["gem_passes"] == before["gem_passes"] + 1
        assert after["sam_runs"] == before["sam_runs"]

        with httpx.Client(base_url=url, timeout=timeout) as client:
            for img, exprs in goods:
                if img == 2:  # now answered from the cache, alone
                    reference[(img, exprs)] = sequential(client, img, list(exprs))

            for item, r in zip(plan, answers, strict=True):
                assert r.status_code == item["status"], (item, r.text)
                assert r.headers["content-type"].startswith("application/json")
                if item["kind"] == "good":
                    got = _strip(r.json())
                    want = reference[(item["image"], tuple(item["exprs"]))]
                    assert [g["expression"] for g in got] == item["exprs"]
                    assert _same(got, want), (item, got, want)
                else:
                    err = r.json()["error"]
                    assert err["code"] and err["message"] and "Traceback" not in r.text

            h = client.get("/health").json()
            assert h["status"] == "ok"
            assert h["queue"]["pending"] == 0
