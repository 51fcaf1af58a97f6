"""``hybridgl index --engine ray``: images encoded on Ray actors through the jobs layer give
the same index rows as the local engine (tiny random models, a local Ray)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from hybridgl.cli.main import main

pytest.importorskip("lancedb")
ray = pytest.importorskip("ray", reason='needs the ray extra: pip install "hybridgl[ray]"')

pytestmark = pytest.mark.slow


def _rows(db: str) -> tuple[list[dict], list[dict]]:
    import lancedb

    conn = lancedb.connect(db)
    images = conn.open_table("images").to_arrow().to_pylist()
    props = conn.open_table("proposals").to_arrow().to_pylist()
    for r in images:
        r.pop("indexed_at")
    key = {r["image_id"]: r["path"] for r in images}
    return (
        sorted(images, key=lambda r: r["path"]),
        sorted(props, key=lambda r: (key[r["image_id"]], r["proposal"])),
    )


def test_index_on_ray_equals_local(ray_cluster, tmp_path, shared_tiny_segmenters):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    images, anns = [], []
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(imgs / f"{k}.png")
        images.append({"id": k, "file_name": f"{k}.png", "height": 48, "width": 64})
        for j, (x, y) in enumerate([(2, 2), (20, 10), (30, 20)]):
            poly = [x, y, x + 15, y, x + 15, y + 12, x, y + 12]
            anns.append({"id": 10 * k + j, "image_id": k, "segmentation": [poly], "iscrowd": 0})
    (imgs / "broken.png").write_bytes(b"not an image")
    images.append({"id": 9, "file_name": "broken.png", "height": 4, "width": 4})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))

    def run(*argv: str) -> int:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return main([*argv, "--device", "cpu", "--no-progress"])

    common = ["index", str(imgs), "--proposals-from", str(ann), "--gem-dtype", "float32"]
    ray_db, local_db = str(tmp_path / "ray-db"), str(tmp_path / "local-db")
    assert run(*common, "--db", ray_db, "--engine", "ray", "--ray-address", ray_cluster) == 5
    assert run(*common, "--db", local_db) == 5
    (ray_images, ray_props), (local_images, local_props) = _rows(ray_db), _rows(local_db)
    assert len(ray_images) == 2 and len(ray_props) == 6
    # everything equal; features and GEM tokens up to float rounding (a Ray worker runs
    # torch with its own thread count, which changes the order of float additions)
    gem = [(np.frombuffer(a.pop("gem"), np.float32), np.frombuffer(b.pop("gem"), np.float32))
           for a, b in zip(ray_images, local_images, strict=True)]  # fmt: skip
    vec = [(np.asarray(a.pop("vector")), np.asarray(b.pop("vector")))
           for a, b in zip(ray_props, local_props, strict=True)]  # fmt: skip
    assert ray_images == local_images and ray_props == local_props
    for a, b in gem + vec:
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5)
    # a second Ray run skips the unchanged images
    assert run(*common, "--db", ray_db, "--engine", "ray", "--ray-address", ray_cluster) == 5
    assert len(_rows(ray_db)[0]) == 2
