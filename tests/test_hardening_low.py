"""The small items of the second hardening round (issue 17, "Low")."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridgl.cli.main import main
from hybridgl.errors import ImageError
from hybridgl.images import load_image
from hybridgl.masks import mask_to_rle, rle_to_mask


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")


# ------------------------------------------------------------------ RLE


def _overflowing_rle() -> dict:
    """A compressed RLE whose counts describe 64 x 64 pixels but whose size says 4 x 4
    (pycocotools' decoder would write past its 16-byte buffer)."""
    rle = mask_to_rle(np.ones((64, 64), dtype=bool))
    return {"size": [4, 4], "counts": rle["counts"]}


BAD_RLES = {
    "overflowing-string": _overflowing_rle(),
    "none-count": {"size": [4, 4], "counts": [None, 16]},
    "float-count": {"size": [4, 4], "counts": [0.5, 15.5]},
    "huge-count": {"size": [4, 4], "counts": [2**70]},
    "negative-count": {"size": [4, 4], "counts": [20, -4]},
    "short-sum": {"size": [4, 4], "counts": [3, 3]},
    "garbage-string": {"size": [4, 4], "counts": "\x7f\x7f"},
    "cut-string": {"size": [4, 4], "counts": "P"},
    "text-size": {"size": ["4", 4], "counts": [16]},
    "dict-counts": {"size": [4, 4], "counts": {"a": 1}},
}


@pytest.mark.parametrize("kind", sorted(BAD_RLES))
def test_malformed_rles_are_value_errors(kind: str) -> None:
    with pytest.raises(ValueError):
        rle_to_mask(BAD_RLES[kind])


def test_valid_rles_round_trip() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.random()
        assert np.array_equal(rle_to_mask(mask_to_rle(m)), m)
        counts = [
            int(c) for c in rle_to_mask.__globals__["_compressed_counts"](mask_to_rle(m)["counts"])
        ]
        assert np.array_equal(rle_to_mask({"size": [h, w], "counts": counts}), m)


def test_malformed_rle_proposals_over_http_are_422(tiny_segmenter) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hybridgl.server import ServerSettings, create_app

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buf, format="PNG")
    app = create_app(tiny_segmenter, ServerSettings())
    with TestClient(app, raise_server_exceptions=False) as client:
        for kind, rle in BAD_RLES.items():
            if kind == "text-size":
                continue  # a size other than the image's: the existing size check
            r = client.post(
                "/v1/segment",
                files={
                    "image": ("x.png", buf.getvalue(), "image/png"),
                    "proposals": ("p.json", json.dumps([rle]).encode(), "application/json"),
                },
                data={"expression": "the thing"},
            )
            assert r.status_code == 422, (kind, r.text)
            assert r.json()["error"]["code"] == "invalid_proposals"


# ------------------------------------------------------------------ images and inputs


def test_wide_integer_arrays_in_0_255_are_refused_as_ambiguous() -> None:
    arr = np.full((4, 4, 3), 200, dtype=np.int64)
    with pytest.raises(ImageError, match="ambiguous.*uint8"):
        load_image(arr)
    assert load_image(arr.astype(np.uint8))[0, 0, 0] == 200
    assert load_image((arr * 257).astype(np.int64))[0, 0, 0] == 200  # clearly 16-bit


def test_one_long_csv_field_fails_its_row_only(tmp_path: Path) -> None:
    from hybridgl.jobs.batch_rows import BadRow, read_rows

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = ["image,expression", "a.png,the left one", f"a.png,{'x' * 200_000}", "a.png,a dog"]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    good, bad, _ = read_rows(tmp_path / "in.csv", [])
    assert [r.expression for r in good] == ["the left one", "a dog"]
    assert len(bad) == 1 and isinstance(bad[0], BadRow) and "longer than 128 KB" in bad[0].error
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is put back


# ------------------------------------------------------------------ search and index CLI


@pytest.mark.parametrize(
    "argv",
    [["--min-score", "nan"], ["--min-score", "inf"], ["--top-k", "0"]],
    ids=["nan", "inf", "top-k-0"],
)
def test_search_options_are_usage_errors_before_any_model(argv, tmp_path, capsys) -> None:
    pytest.importorskip("lancedb")
    rc = main(["search", "a dog", "--db", str(tmp_path / "none"), *argv])
    assert rc == 2 and len(capsys.readouterr().err.strip().splitlines()) >= 1


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny_segmenter):
    pytest.importorskip("lancedb")
    from hybridgl.search.index import Index

    root = tmp_path_factory.mktemp("low-index")
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    images, anns = [], []
    for k, name in enumerate(["a.png", "sub/b.png"]):
        Image.new("RGB", (32, 24), (40 * k, 90, 160)).save(folder / name)
        images.append({"id": k, "file_name": Path(name).name, "height": 24, "width": 32})
        poly = [2, 2, 20, 2, 20, 12, 2, 12]
        anns.append({"id": k, "image_id": k, "segmentation": [poly], "iscrowd": 0})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    idx = Index(root / "db", segmenter=tiny_segmenter)
    assert idx.add([folder], progress=False, proposals_from=ann).indexed == 2
    return root, folder


def test_remove_refuses_everything_arguments_and_has_a_dry_run(
    small_index, tmp_path, capsys, monkeypatch
) -> None:
    from hybridgl.search.index import Index

    root, folder = small_index
    db = tmp_path / "db"
    shutil.copytree(root / "db", db)
    monkeypatch.chdir(folder)
    idx = Index(db)
    for bad in ["", ".", "./", "..", "sub/..", "/"]:
        with pytest.raises(ValueError, match="refusing"):
            idx.remove([bad])
    assert main(["index", "--db", str(db), "--remove", "."]) == 2
    assert "refusing" in capsys.readouterr().err
    assert main(["index", "--db", str(db), "--remove", "sub", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "b.png" in out and "a.png" not in out
    assert Index(db).stats()["images"] == 2  # nothing removed
    assert main(["index", "--db", str(db), "--remove", "sub"]) == 0
    assert "removed 1 image" in capsys.readouterr().out
    assert Index(db).stats()["images"] == 1


def test_a_damaged_index_is_exit_3_naming_it_and_the_way_out(small_index, tmp_path, capsys):
    root, _ = small_index
    db = tmp_path / "db"
    shutil.copytree(root / "db", db)
    shutil.rmtree(db / "images.lance" / "_versions")  # tampered with
    rc = main(["search", "a dog", "--db", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1, err
    assert str(db) in err[0] and "--check" in err[0] and "--rebuild" in err[0]
    assert "internal error" not in err[0]


# ------------------------------------------------------------------ Ray address


@pytest.mark.parametrize("answer", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_a_ray_address_where_another_service_listens_fails_in_one_line(answer) -> None:
    """A port that accepts but never answers, or answers HTTP/1 (a web server), would
    leave ``ray.init`` waiting without bound: refused at the gRPC handshake instead."""
    import socket
    import threading

    from hybridgl.errors import InputError
    from hybridgl.jobs.ray_engine import check_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if answer:
                conn.sendall(answer)
            else:
                conn.recv(64)  # silent until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(InputError, match=f"127.0.0.1:{port}.*not a Ray cluster") as e:
            check_reachable(f"127.0.0.1:{port}", timeout=0.5)
        assert "\n" not in str(e.value)
    finally:
        thread.join(5)
        server.close()


def test_a_ray_address_where_nothing_listens_fails_fast_in_one_line() -> None:
    import socket
    import time

    from hybridgl.cli.common import exit_code_for
    from hybridgl.errors import InputError
    from hybridgl.jobs.engine import EngineOptions
    from hybridgl.jobs.ray_engine import _connect

    with socket.socket() as s:  # a free port on 127.0.0.1, closed again
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class NoRay:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kw):
            raise AssertionError("ray.init must not be reached")

    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"127.0.0.1:{port}.*cannot reach") as e:
        _connect(NoRay, EngineOptions(engine="ray", ray_address=f"127.0.0.1:{port}"))
    assert time.perf_counter() - t0 < 5 and exit_code_for(e.value) == 3
    assert "\n" not in str(e.value)
