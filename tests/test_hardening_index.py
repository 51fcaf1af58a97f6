"""Index commits survive a writer stopped at any step (issue 17, second round).

A fault hook (``hybridgl.search.store.commit_hook``) stops the writer right after each
step of a commit: by an exception no code catches (what a kill leaves on disk: the table
writes done so far, no commit record), or by Ctrl-C (``KeyboardInterrupt``, after which
the run commits what it finished). Either way the next writer publishes each image once,
``verify`` (``hybridgl index --check``) finds the leftovers, and ``--repair`` removes them
without re-encoding.

Encoding is the real tiny segmenter's, computed once per image and reused (the commit is
under test, not the models).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lancedb")

import hybridgl.search.rows as index_mod  # noqa: E402 - where images are encoded
import hybridgl.search.store as store_mod  # noqa: E402
from hybridgl.cli.main import main  # noqa: E402
from hybridgl.search.index import Index  # noqa: E402
from hybridgl.search.store import Store  # noqa: E402
from hybridgl.search.tables import IMAGES, PROPOSALS  # noqa: E402

N = 4  # images; commit_every=2 makes two data commits
STEPS = ("delete", "clear_failures", "add_proposals", "add_images", "add_failures", "meta")


class Killed(BaseException):
    """Stands for a kill: nothing in the index code catches it."""


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")


_STATES: dict[str, object] = {}


@pytest.fixture(autouse=True)
def cached_encoding(monkeypatch):
    real = index_mod._encode_image

    def encode(seg, image, proposals):
        key = hashlib.sha256(image.tobytes() + np.asarray(proposals).tobytes()).hexdigest()
        if key not in _STATES:
            _STATES[key] = real(seg, image, proposals)
        return _STATES[key]

    monkeypatch.setattr(index_mod, "_encode_image", encode)


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(5)
    images, anns = [], []
    for k in range(N):
        name = f"im{k}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": k, "file_name": name, "height": 48, "width": 64})
        for j, (x, y) in enumerate([(2, 2), (20, 10), (30, 20)]):
            poly = [x, y, x + 15, y, x + 15, y + 12, x, y + 12]
            anns.append({"id": 10 * k + j, "image_id": k, "segmentation": [poly], "iscrowd": 0})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return folder, ann


def _rows(db: Path) -> tuple[list[str], int]:
    with Store(db) as store:
        snap = store.snapshot()
        paths = [r["path"] for r in snap[IMAGES].to_arrow().select(["path"]).to_pylist()]
        return sorted(paths), int(snap[PROPOSALS].count_rows())


def _stop_at(monkeypatch, step: str, error: type[BaseException], occurrence: int = 2) -> None:
    """Raise ``error`` right after the ``occurrence``-th time a commit reaches ``step``."""
    seen = {"n": 0}

    def hook(name: str) -> None:
        if name == step:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise error()

    monkeypatch.setattr(store_mod, "commit_hook", hook)


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_a_writer_killed_at_any_commit_step_leaves_nothing_published_twice(
    step, photos, tmp_path, tiny_segmenter, monkeypatch
):
    folder, ann = photos
    db = tmp_path / "db"
    _stop_at(monkeypatch, step, Killed)
    with pytest.raises(Killed):
        Index(db, segmenter=tiny_segmenter).add(
            [folder], progress=False, proposals_from=ann, commit_every=2
        )
    monkeypatch.setattr(store_mod, "commit_hook", None)
    paths, props = _rows(db)
    committed = N if step == "meta" else 2  # the first batch, or both
    assert (len(paths), props) == (committed, 3 * committed)
    # the next writer starts from the last committed versions
    report = Index(db, segmenter=tiny_segmenter).add([folder], progress=False, proposals_from=ann)
    assert (report.indexed, report.skipped) == (N - committed, committed)
    paths, props = _rows(db)
    assert paths == sorted(str(folder / f"im{k}.png") for k in range(N)) and props == 3 * N
    assert Index(db).verify()["ok"]


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_inside_a_commit_publishes_the_batch_once(
    step, photos, tmp_path, tiny_segmenter, monkeypatch
):
    folder, ann = photos
    db = tmp_path / "db"
    _stop_at(monkeypatch, step, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        Index(db, segmenter=tiny_segmenter).add(
            [folder], progress=False, proposals_from=ann, commit_every=2
        )
    monkeypatch.setattr(store_mod, "commit_hook", None)
    # the interrupted batch was committed again on the way out, exactly once
    paths, props = _rows(db)
    assert paths == sorted(str(folder / f"im{k}.png") for k in range(N)) and props == 3 * N
    check = Index(db).verify()
    assert check["ok"], check


def test_killed_before_the_commit_record_then_check_and_repair(
    photos, tmp_path, tiny_segmenter, monkeypatch, capsys
):
    """The issue's case: killed between the table appends and the commit record. The
    leftovers are found by ``--check`` (exit 3) and rolled back by ``--repair``."""
    folder, ann = photos
    db = tmp_path / "db"
    real = Store._write_meta
    calls = {"n": 0}

    def write_meta(self, meta):
        if "commit" in meta and int(meta["commit"].get("seq", 0)) == 2:
            calls["n"] += 1
            raise Killed()  # the second batch's rows are written, its commit is not
        return real(self, meta)

    monkeypatch.setattr(Store, "_write_meta", write_meta)
    with pytest.raises(Killed):
        Index(db, segmenter=tiny_segmenter).add(
            [folder], progress=False, proposals_from=ann, commit_every=2
        )
    monkeypatch.setattr(Store, "_write_meta", real)
    assert calls["n"] == 1 and _rows(db)[1] == 6
    assert main(["index", "--db", str(db), "--check"]) == 3
    out, err = capsys.readouterr()
    assert "writes past the last commit" in out and "--repair" in err
    assert main(["index", "--db", str(db), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "rolled back images" in out and "consistent" in out
    assert main(["index", "--db", str(db), "--check"]) == 0
    capsys.readouterr()
    report = Index(db, segmenter=tiny_segmenter).add([folder], progress=False, proposals_from=ann)
    assert (report.indexed, report.skipped) == (2, 2)
    assert _rows(db) == (sorted(str(folder / f"im{k}.png") for k in range(N)), 3 * N)


def test_repair_removes_duplicates_without_re_encoding(
    photos, tmp_path, tiny_segmenter, monkeypatch
):
    """An index holding an image twice (what the old commit could publish) is repaired
    from its own rows: no encoding happens."""
    folder, ann = photos
    db = tmp_path / "db"
    Index(db, segmenter=tiny_segmenter).add([folder], progress=False, proposals_from=ann)
    with Store(db, writer=True) as store:
        snap = store.snapshot()
        one = str(folder / "im1.png")
        import pyarrow.compute as pc

        table = snap[IMAGES].to_arrow()
        img = table.filter(pc.equal(table["path"], one))
        image_id = img["image_id"][0].as_py()
        props = snap[PROPOSALS].search().where(f"image_id = '{image_id}'").limit(None).to_arrow()
        store.commit(images=img, proposals=props)  # publish its rows a second time
    check = Index(db).verify()
    assert not check["ok"] and any("has 2 rows" in p for p in check["problems"])

    def no_encoding(*a, **kw):
        raise AssertionError("repair must not re-encode")

    monkeypatch.setattr(index_mod, "_encode_image", no_encoding)
    fixed = Index(db).verify(repair=True)
    assert fixed["repair"]["fixed"] == [image_id] and fixed["ok_after_repair"]
    assert _rows(db) == (sorted(str(folder / f"im{k}.png") for k in range(N)), 3 * N)
    hits = Index(db, segmenter=tiny_segmenter).search("a thing", top=10)
    assert sorted(h.path for h in hits) == sorted(set(h.path for h in hits))
