"""Collection search (issue 12): the LanceDB index, stage 1 + stage 2, the CLI commands.

Tiny random weights (outputs meaningless, but deterministic): the tests check that stored
state reproduces the method exactly, that readers see whole commits, and the error paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COCO, REPO, coco_masks
from PIL import Image

pytest.importorskip("lancedb")

from hybridgl.cli.main import main  # noqa: E402
from hybridgl.search import FingerprintMismatch, IndexBusyError, IndexStoreError  # noqa: E402
from hybridgl.search.index import Index  # noqa: E402
from hybridgl.search.rows import state_from_rows  # noqa: E402
from hybridgl.search.store import Store  # noqa: E402
from hybridgl.search.tables import IMAGES, PROPOSALS  # noqa: E402

PHRASES = ["the person on the left", "a dog next to the car", "the big thing"]


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")


@pytest.fixture(scope="module")
def coco_pick(coco_val):
    """Two real coco-mini images with 3-6 COCO instances each (few masks: quick)."""
    picked = []
    for image_id in sorted(coco_val["anns"]):
        if 3 <= len(coco_val["anns"][image_id]) <= 6:
            path = COCO / "val2017" / coco_val["images"][image_id]["file_name"]
            if path.exists():
                picked.append((image_id, path))
        if len(picked) == 2:
            break
    if len(picked) < 2:
        pytest.skip("coco-mini lacks two images with 3-6 instances")
    return picked


@pytest.fixture(scope="module")
def coco_index(tmp_path_factory, coco_pick, tiny_segmenter):
    """An index of the two images (copied to a temp folder), COCO masks, float32 GEM."""
    root = tmp_path_factory.mktemp("search")
    images = root / "images"
    images.mkdir()
    for _, path in coco_pick:
        shutil.copy(path, images / path.name)
    ann = COCO / "annotations" / "instances_val2017.json"
    idx = Index(root / "db", segmenter=tiny_segmenter, gem_dtype="float32")
    report = idx.add([images], progress=False, proposals_from=ann)
    assert report.indexed == 2 and not report.failed
    return idx, images, ann


def test_import_hybridgl_does_not_import_lancedb():
    code = (
        "import sys, hybridgl, hybridgl.search, hybridgl.cli.main as m; m.build_parser(); "
        "hybridgl.Index; assert 'lancedb' not in sys.modules and 'pyarrow' not in sys.modules, "
        "sorted(k for k in sys.modules if k.startswith(('lancedb', 'pyarrow')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_missing_extra_is_one_line(tmp_path):
    code = (
        "import sys; sys.modules['lancedb'] = None\n"
        "from hybridgl.cli.main import main\n"
        "rc = main(['search', 'a dog', '--db', sys.argv[1]])\n"
        "from hybridgl.search import Index, MissingExtraError\n"
        "try:\n"
        "    Index(sys.argv[1]).stats()\n"
        "except MissingExtraError as e:\n"
        "    print('API:', e)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2  # a missing extra: exit 2 in every command
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert 'pip install "hybridgl[search]"' in lines[0]
    assert "API:" in r.stdout and 'pip install "hybridgl[search]"' in r.stdout


@pytest.mark.slow
def test_stage2_equals_predict(coco_index, coco_pick, coco_val, tiny_segmenter):
    """For every indexed image and phrase, the re-ranked prediction IS Segmenter.predict's:
    same chosen proposal, same score bit for bit, same candidates."""
    idx, images, _ = coco_index
    snap = idx._store().snapshot()
    for image_id, path in coco_pick:
        masks = coco_masks(coco_val, image_id)
        direct = tiny_segmenter.set_image(Image.open(path), proposals=masks)
        # the stored state is the computed one, exactly
        row = (
            snap[IMAGES].search().where(f"path = '{images / path.name}'").to_arrow().to_pylist()[0]
        )
        props = snap[PROPOSALS].search().where(f"image_id = '{row['image_id']}'").to_arrow()
        state = state_from_rows(row, props.to_pylist())
        assert np.array_equal(state.masks, direct.masks)
        assert np.array_equal(state.boxes, direct.boxes) and state.boxes.dtype == np.float64
        assert torch.equal(state.features, direct.features.cpu())
        assert torch.equal(state.gem_tokens, direct.gem_tokens.cpu())
        assert state.image.shape == direct.image.shape
        # float16 GEM tokens (the default, half the bytes) round only the coherence term
        half = dict(row, gem_dtype="float16")
        tokens = np.frombuffer(row["gem"], dtype=np.float32)
        half["gem"] = tokens.astype(np.float16).tobytes()
        state16 = state_from_rows(half, props.to_pylist())
        assert torch.equal(state16.features, direct.features.cpu())
        assert (state16.gem_tokens - direct.gem_tokens).abs().max() < 1e-3
        for phrase in PHRASES:
            want = tiny_segmenter.predict(phrase)
            hits = idx.search(phrase, top=2, rerank=2)
            assert len(hits) == 2
            (hit,) = [h for h in hits if h.path == str(images / path.name)]
            got = hit.prediction
            assert got.index == want.index and got.pure_index == want.pure_index
            assert got.score == want.score
            assert got.candidates == want.candidates
            assert np.array_equal(got.mask, want.mask) and got.box == want.box
            # the ranking score is the cosine of the chosen proposal
            c = next(x for x in want.candidates if x.index == want.index)
            assert hit.similarity == pytest.approx(
                c.clip_score / tiny_segmenter.logit_scale, abs=1e-6
            )
            assert hit.stage1_similarity >= hit.similarity


def test_min_score_and_top(coco_index):
    idx = coco_index[0]
    hits = idx.search("a dog next to the car", top=5)
    assert [h.rank for h in hits] == [1, 2]
    assert hits[0].similarity >= hits[1].similarity
    assert idx.search("a dog next to the car", top=1)[0].path == hits[0].path
    assert idx.search("a dog next to the car", min_score=hits[0].similarity + 1e-6) == []
    kept = idx.search("a dog next to the car", min_score=hits[1].similarity + 1e-7)
    assert [h.path for h in kept] == [hits[0].path]


def test_search_sees_only_committed_batches(coco_index, tmp_path):
    """A writer's table changes are invisible until its meta commit, then visible whole."""
    _, images, ann = coco_index
    db = tmp_path / "db"
    shutil.copytree(coco_index[0].db, db)
    idx = Index(db, segmenter=coco_index[0]._seg)
    before = [(h.path, h.similarity) for h in idx.search("the big thing")]
    assert len(before) == 2
    with Store(db, writer=True) as w:
        victim = w.snapshot()[IMAGES].to_arrow().to_pylist()[0]["image_id"]
        # half a batch: proposals gone, image row still there, nothing committed yet
        w.latest(PROPOSALS).delete(f"image_id = '{victim}'")
        assert [(h.path, h.similarity) for h in idx.search("the big thing")] == before
        w.latest(IMAGES).delete(f"image_id = '{victim}'")
        assert [(h.path, h.similarity) for h in idx.search("the big thing")] == before
        w.commit()
        after = idx.search("the big thing")
    assert len(after) == 1 and after[0].image_id != victim


def test_second_writer_is_refused(coco_index, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(coco_index[0].db, db)
    _, images, ann = coco_index
    with Store(db, writer=True):
        with pytest.raises(IndexBusyError, match="another index run"):
            Store(db, writer=True)
        rc = main(["index", str(images), "--db", str(db), "--proposals-from", str(ann)])
        assert rc == 3
        # readers are not blocked
        assert len(Index(db, segmenter=coco_index[0]._seg).search("a dog")) == 2
    with Store(db, writer=True):  # released
        pass


def test_object_store_uri_lease(tmp_path):
    """The same code on an object-store URI (Lance's local object store): no flock there,
    a lease in meta refuses a second writer."""
    uri = f"file-object-store://{tmp_path}/db"
    fp = {"dim": 4, "sam": "vit_h"}
    with Store(uri, create=True, writer=True, fingerprint=fp) as a:
        assert a.remote
        with pytest.raises(IndexBusyError, match="another index run"):
            Store(uri, writer=True)
        a.commit()
    with Store(uri, writer=True):
        pass
    assert Store(uri).fingerprint == fp
    with pytest.raises(IndexStoreError, match="not a hybridgl index"):
        Store(f"file-object-store://{tmp_path}/nothing")


def _run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.slow
def test_cli_bad_input(coco_index, tmp_path, capsys):
    db = coco_index[0].db
    rc, _, err = _run(capsys, "search", "a dog", "--db", str(tmp_path / "missing"))
    assert rc == 3 and len(err.strip().splitlines()) == 1 and "no index at" in err
    assert not (tmp_path / "missing").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    rc, _, err = _run(capsys, "search", "a dog", "--db", str(tmp_path / "other"))
    assert rc == 3 and len(err.strip().splitlines()) == 1 and "not a hybridgl index" in err
    rc, _, err = _run(capsys, "search", "   ", "--db", str(db))
    assert rc == 3 and len(err.strip().splitlines()) == 1 and "empty" in err
    rc, _, err = _run(capsys, "index", "--db", str(tmp_path / "other"), str(tmp_path))
    assert rc == 3 and "not a hybridgl index" in err


def test_cli_fingerprint_mismatch_names_both(coco_index, capsys, monkeypatch):
    db = str(coco_index[0].db)
    rc, _, err = _run(capsys, "search", "a dog", "--db", db, "--preset", "fixed")
    lines = [ln for ln in err.strip().splitlines() if "WARNING" not in ln]
    assert rc == 3 and len(lines) == 1
    assert "preset=paper" in lines[0] and "preset=fixed" in lines[0]
    monkeypatch.delenv("HYBRIDGL_RANDOM_WEIGHTS")
    rc, _, err = _run(capsys, "search", "a dog", "--db", db)
    assert rc == 3 and "weights=random-tiny" in err and "weights=pretrained" in err
    with pytest.raises(FingerprintMismatch):
        Index(db, preset="fixed").search("a dog")


def test_cli_search_outputs(coco_index, tmp_path, capsys):
    from hybridgl.masks import rle_to_mask

    db = str(coco_index[0].db)
    out, page = tmp_path / "hits.json", tmp_path / "hits.html"
    rc, stdout, _ = _run(
        capsys, "search", "the person on the left", "--db", db, "--json", str(out),
        "--html", str(page), "--top", "2", "--rerank", "2",
    )  # fmt: skip
    assert rc == 0 and len(stdout.strip().splitlines()) == 2
    doc = json.loads(out.read_text())
    assert [h["rank"] for h in doc["hits"]] == [1, 2]
    want = coco_index[0].search("the person on the left", top=2)
    for h, w in zip(doc["hits"], want, strict=True):
        assert h["path"] == w.path and h["similarity"] == w.similarity
        assert np.array_equal(rle_to_mask(h["mask"]), w.prediction.mask)
        assert h["index"] == w.prediction.index
    html = page.read_text()
    assert html.count("<img") == 2 and "data:image/jpeg;base64," in html


# --------------------------------------------------------------------------- small synthetic


def _write_images(folder: Path, n: int, seed: int = 0) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for i in range(n):
        h, w = 48 + 8 * i, 64
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        sizes[f"im{i}.png"] = (h, w)
    return sizes


def _coco_json(path: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    images, anns = [], []
    for k, (name, (h, w)) in enumerate(sorted(sizes.items())):
        images.append({"id": k, "file_name": name, "height": h, "width": w})
        for j, (x, y) in enumerate([(2, 2), (20, 10), (30, 20)]):
            poly = [x, y, x + 15, y, x + 15, y + 12, x, y + 12]
            anns.append({"id": 10 * k + j, "image_id": k, "segmentation": [poly], "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return path


@pytest.mark.slow
def test_incremental_failures_prune_and_resume(tmp_path, capsys, monkeypatch, tiny_segmenter):
    imgs = tmp_path / "imgs"
    sizes = _write_images(imgs, 2)
    (imgs / "broken.png").write_bytes(b"not an image")
    sizes["broken.png"] = (10, 10)
    ann = _coco_json(tmp_path / "ann.json", sizes)
    db = str(tmp_path / "db")
    args = ["index", str(imgs), "--db", db, "--proposals-from", str(ann), "--no-progress"]
    rc, out, err = _run(capsys, *args)
    assert rc == 5 and "indexed 2" in out and "failed 1" in out and "broken.png" in err
    stats = Index(db).stats()
    assert stats["images"] == 2 and stats["proposals"] == 6 and stats["failures"] == 1
    assert stats["failed"][0]["path"].endswith("broken.png")

    # unchanged: skipped; changed bytes: re-encoded; fixed file: failure cleared
    _write_images(tmp_path / "new", 1, seed=7)
    shutil.copy(tmp_path / "new" / "im0.png", imgs / "im0.png")
    shutil.copy(imgs / "im1.png", imgs / "broken.png")
    sizes["broken.png"] = sizes["im1.png"]
    _coco_json(ann, sizes)
    idx = Index(db, segmenter=tiny_segmenter)
    report = idx.add([imgs], progress=False, proposals_from=ann)
    assert (report.indexed, report.skipped, report.failed) == (2, 1, [])
    stats = idx.stats()
    assert (stats["images"], stats["proposals"], stats["failures"]) == (3, 9, 0)

    # --prune drops entries whose file is gone
    (imgs / "im1.png").unlink()
    assert idx.add([], progress=False, prune=True).pruned == 1
    assert idx.stats()["images"] == 2

    # an interrupted run keeps what it finished; the next run resumes after it
    more = tmp_path / "more"
    sizes2 = _write_images(more, 2, seed=3)
    ann2 = _coco_json(tmp_path / "ann2.json", sizes2)
    import hybridgl.search.rows as mod  # where images are encoded

    real = mod._encode_image
    calls = {"n": 0}

    def flaky(seg, image, proposals):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(seg, image, proposals)

    monkeypatch.setattr(mod, "_encode_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        idx.add([more], progress=False, proposals_from=ann2)
    assert idx.stats()["images"] == 3
    monkeypatch.setattr(mod, "_encode_image", real)
    report = idx.add([more], progress=False, proposals_from=ann2)
    assert (report.indexed, report.skipped) == (1, 1)
    assert idx.stats()["images"] == 4


@pytest.mark.slow
def test_list_file_and_remove(tmp_path, tiny_segmenter):
    imgs = tmp_path / "imgs"
    sizes = _write_images(imgs, 2)
    ann = _coco_json(tmp_path / "ann.json", sizes)
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# two images and a missing one\nimgs/im0.png\nimgs/im1.png\nimgs/gone.png\n"
    )
    idx = Index(tmp_path / "db", segmenter=tiny_segmenter)
    report = idx.add([listing], progress=False, proposals_from=ann)
    assert report.indexed == 2 and len(report.failed) == 1 and "gone.png" in report.failed[0][0]
    assert idx.remove([imgs / "im0.png"]) == 1
    assert [h.path for h in idx.search("a thing")] == [str(imgs / "im1.png")]
    assert idx.stats()["images"] == 1


def test_sam_proposals_path(tmp_path, tiny_segmenter):
    """Without --proposals-from the index runs SAM (tiny random SAM here)."""
    imgs = tmp_path / "imgs"
    _write_images(imgs, 1)
    idx = Index(tmp_path / "db", segmenter=tiny_segmenter)
    report = idx.add([imgs], progress=False)
    assert report.indexed == 1 and not report.failed
    assert idx.stats()["proposals"] == report.proposals
    rows = idx._store().snapshot()[IMAGES].to_arrow().to_pylist()
    assert [(r["source"], r["proposals_key"]) for r in rows] == [("sam", "sam")]


@pytest.mark.slow
def test_optimize_builds_the_ivf_index(tmp_path, tiny_segmenter, monkeypatch):
    """--optimize compacts and builds the IVF index; with every partition probed, stage 1
    through it finds what the exact scan finds."""
    import hybridgl.search.index as mod

    imgs = tmp_path / "imgs"
    sizes = _write_images(imgs, 3)
    ann = _coco_json(tmp_path / "ann.json", sizes)
    idx = Index(tmp_path / "db", segmenter=tiny_segmenter)
    idx.add([imgs], progress=False, proposals_from=ann)
    before = [(h.image_id, h.similarity) for h in idx.search("a square")]
    with pytest.raises(IndexStoreError, match="needs at least"):
        idx.optimize(ann=True)
    assert idx.optimize() == {"ann_built": False, "proposals": 9}
    monkeypatch.setattr(mod, "MIN_ANN_ROWS", 4)
    assert idx.optimize() == {"ann_built": True, "proposals": 9}
    assert idx.stats()["ann_index"] is True
    assert [(h.image_id, h.similarity) for h in idx.search("a square")] == before
    # an index run builds it by itself past AUTO_ANN_ROWS, and readers see it
    import hybridgl.search.writer as writer_mod  # where an index run reads it

    monkeypatch.setattr(writer_mod, "AUTO_ANN_ROWS", 4)
    idx2 = Index(tmp_path / "db2", segmenter=tiny_segmenter)
    assert idx2.add([imgs], progress=False, proposals_from=ann).ann_built is True
    assert idx2.stats()["ann_index"] is True
    assert [(h.image_id, h.similarity) for h in idx2.search("a square")] == before


@pytest.mark.slow
def test_index_sam_none(tmp_path, capsys, tiny_segmenter):
    """``--sam none`` indexes with --proposals-from; without it, a usage error (exit 2)
    before any model or index is touched."""
    imgs = tmp_path / "imgs"
    sizes = _write_images(imgs, 2)
    ann = _coco_json(tmp_path / "ann.json", sizes)
    db = tmp_path / "db"
    rc, _, err = _run(capsys, "index", str(imgs), "--db", str(db), "--sam", "none")
    assert rc == 2 and "--sam none" in err and "--proposals-from" in err
    assert len(err.strip().splitlines()) == 1 and not db.exists()
    args = ["index", str(imgs), "--db", str(db), "--sam", "none", "--no-progress"]
    rc, out, err = _run(capsys, *args, "--proposals-from", str(ann))
    assert rc == 0, err
    assert "indexed 2" in out and "failed 0" in out
    assert Index(db).stats()["proposals"] == 6


@pytest.mark.slow
def test_index_and_search_take_the_one_model_option_group(coco_index, tmp_path, capsys):
    """Options not given come from the index; one that changes stored features is refused
    naming it; a scoring-only option applies to the search (issue 16)."""
    _, images, ann = coco_index
    db = str(tmp_path / "l2g")
    args = ["index", str(images), "--db", db, "--proposals-from", str(ann), "--no-progress"]
    rc, _, err = _run(capsys, *args, "--fusion", "L2G", "--device", "cpu")
    assert rc == 0, err
    rc, _, err = _run(capsys, "search", "a dog", "--db", db, "--fusion", "G2L")
    assert rc == 3 and "fusion: 'L2G' -> 'G2L'" in err
    rc, _, err = _run(capsys, "search", "a dog", "--db", db, "--method-option", "k1=4")
    assert rc == 0, err
    idx = Index(db, device="cpu")
    assert len(idx.search("a dog")) == 2
    assert idx._seg.config.fusion == "L2G" and idx._seg.spec.config().fusion == "L2G"
    # a conflicting option on a further index run is refused before anything is written
    rc, _, err = _run(capsys, *args, "--fusion", "crop")
    assert rc == 3 and "fusion: 'L2G' -> 'crop'" in err


def test_index_takes_the_pixel_limit(coco_index, tmp_path, capsys, tiny_segmenter):
    """index --max-pixels: an image above the limit is a recorded failure naming its size;
    0 (no limit of ours) indexes it (issue 17's pointer to the shared options)."""
    _, images, ann = coco_index
    idx = Index(tmp_path / "db", segmenter=tiny_segmenter)
    report = idx.add([images], progress=False, proposals_from=ann, max_pixels=1000)
    assert report.indexed == 0 and len(report.failed) == 2
    assert all("too large" in e and "1,000" in e for _, e in report.failed)
    report = idx.add([images], progress=False, proposals_from=ann, max_pixels=None)
    assert report.indexed == 2 and not report.failed
    rc, _, err = _run(capsys, "index", str(images), "--db", str(tmp_path / "cli"),
                      "--proposals-from", str(ann), "--max-pixels", "1000", "--no-progress")  # fmt: skip
    assert rc == 5 and "too large" in err, err
