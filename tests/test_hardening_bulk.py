"""Bad images and odd file names in every command and bulk job (issue 17, second round).

- a 30-byte WebP bomb (Pillow raises its DecompressionBombError from the header read) is
  the project's bad-input error: ``segment`` exit 3 with one line naming the file, one
  failure record in ``index`` (local and the Ray task), ``batch`` and ``evaluate``;
- file names that are not UTF-8 are items like any other: processed (``batch``) or
  recorded as a failure naming the file with its bytes escaped (``index``), and every
  JSON output stays valid UTF-8;
- control characters in names never reach the terminal raw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile_images as hi  # noqa: E402

from hybridgl.cli.main import main  # noqa: E402
from hybridgl.jobs.units import WorkUnit  # noqa: E402
from hybridgl.names import safe_text, show  # noqa: E402

RAW_NAME = b"caf\xc3\xa9-\xff.png"  # UTF-8 "cafe" with an accent, then a Latin-1 byte
ESCAPED = "café-\\xff.png"


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")


def _png(path: Path | bytes, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    with open(path, "wb") as f:
        img.save(f, format="PNG")


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A folder with a good image, a WebP bomb and an image whose name is not UTF-8."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "good.png")
    (folder / "bomb.webp").write_bytes(hi.webp_canvas(16384, 16384))
    _png(os.fsencode(folder) + b"/" + RAW_NAME, seed=1)
    return folder


def test_names_escape_rules() -> None:
    name = os.fsdecode(RAW_NAME)
    assert safe_text(name) == ESCAPED and show(name) == ESCAPED
    assert safe_text("line\nbreak") == "line\nbreak"  # JSON escapes it itself
    assert (
        show("a\nb\rc\td\x1b[31m\x7f\u202eE\u2028") == "a\\nb\\rc\\td\\x1b[31m\\x7f\\u202eE\\u2028"
    )
    assert show("plain name é 字.png") == "plain name é 字.png"


# ------------------------------------------------------------------ segment


def test_segment_bomb_is_exit_3_naming_the_file(messy: Path, capsys) -> None:
    bomb = messy / "bomb.webp"
    assert main(["segment", str(bomb), "the dog"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bomb) in err[0] and "too large" in err[0]
    assert main(["segment", str(bomb), "the dog", "--max-pixels", "0"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bomb) in err[0] and "internal" not in err[0]


class HalvesSegmenter:
    """The session's tiny segmenter with two fixed proposals (left, right half) instead of
    SAM: these tests are about names and records, not about proposals."""

    def __init__(self, seg) -> None:
        self._seg = seg

    @staticmethod
    def _halves(image) -> np.ndarray:
        h, w = np.asarray(image).shape[:2]
        masks = np.zeros((2, h, w), dtype=bool)
        masks[0, :, : w // 2] = masks[1, :, w // 2 :] = True
        return masks

    def encode_image(self, image, proposals=None, **kw):
        proposals = self._halves(image) if proposals is None else proposals
        return self._seg.encode_image(image, proposals=proposals, **kw)

    def set_image(self, image, proposals=None, **kw):
        proposals = self._halves(image) if proposals is None else proposals
        return self._seg.set_image(image, proposals=proposals, **kw)

    def __getattr__(self, name):
        return getattr(self._seg, name)


@pytest.fixture
def shared_model(monkeypatch, tiny_segmenter):
    """The CLI commands use the session's tiny segmenter instead of building one."""
    import hybridgl.cli.segment as segment_mod
    import hybridgl.jobs.engine as engine_mod

    seg = HalvesSegmenter(tiny_segmenter)
    monkeypatch.setattr(segment_mod, "build_segmenter", lambda args: seg)
    monkeypatch.setattr(engine_mod, "build_from_spec", lambda spec: seg)


@pytest.mark.slow
def test_segment_json_of_a_non_utf8_name_is_valid(messy: Path, capsys, shared_model) -> None:
    path = os.fsdecode(os.fsencode(messy) + b"/" + RAW_NAME)
    assert main(["segment", path, "the left thing", "--json", "-"]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # no lone surrogates: valid UTF-8 once written
    doc = json.loads(out)
    assert doc["image"].endswith(ESCAPED)


def test_error_lines_escape_control_characters(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "two\nlines\x1b[2J.png"
    bad.write_bytes(b"not an image")
    assert main(["segment", str(bad), "the dog"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "two\\nlines\\x1b[2J.png" in err


# ------------------------------------------------------------------ batch


@pytest.mark.slow
def test_batch_folder_processes_odd_names_and_records_the_bomb(
    messy: Path, tmp_path: Path, capsys, shared_model
) -> None:
    out = tmp_path / "out"
    rc = main(["batch", str(messy), "--out", str(out), "--expression", "a thing", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 5, err
    raw = (out / "results.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    records = {r["image"]: r for r in map(json.loads, raw.splitlines())}
    assert set(records) == {"good.png", "bomb.webp", ESCAPED}
    assert "error" not in records["good.png"] and "error" not in records[ESCAPED]
    assert "too large" in records["bomb.webp"]["error"]
    assert "bomb.webp" in err and "\udcff" not in err


# ------------------------------------------------------------------ index

lancedb = pytest.importorskip("lancedb")


def _coco(tmp_path: Path, names: list[str]) -> Path:
    """A COCO instances JSON with two boxes per image (no SAM run needed)."""
    images, anns = [], []
    for k, name in enumerate(names):
        images.append({"id": k, "file_name": name, "height": 48, "width": 64})
        for j, (x, y) in enumerate([(2, 2), (30, 20)]):
            poly = [x, y, x + 15, y, x + 15, y + 12, x, y + 12]
            anns.append({"id": 10 * k + j, "image_id": k, "segmentation": [poly], "iscrowd": 0})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return path


def test_index_records_the_bomb_and_the_odd_name_and_goes_on(
    messy: Path, tmp_path: Path, tiny_segmenter, capsys
) -> None:
    from hybridgl.search.index import Index

    idx = Index(tmp_path / "db", segmenter=tiny_segmenter)
    report = idx.add(
        [messy], progress=False, proposals_from=_coco(tmp_path, ["good.png", "bomb.webp"])
    )
    failed = dict(report.failed)
    assert report.indexed == 1
    assert set(failed) == {str(messy / "bomb.webp"), safe_text(str(messy)) + "/" + ESCAPED}
    assert "too large" in failed[str(messy / "bomb.webp")]
    assert "not valid UTF-8" in failed[safe_text(str(messy)) + "/" + ESCAPED]
    stats = idx.stats()
    assert stats["images"] == 1 and stats["failures"] == 2
    assert "\udcff" not in capsys.readouterr().err


def test_index_records_an_unreadable_subfolder(tmp_path: Path, tiny_segmenter, monkeypatch) -> None:
    from hybridgl.search.index import Index
    from hybridgl.search.inputs import collect_images

    root = tmp_path / "imgs"
    (root / "locked").mkdir(parents=True)
    _png(root / "a.png")
    _png(root / "locked" / "b.png")
    real = os.scandir

    def scandir(path):  # root can read anything: simulate a folder without permission
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, failures = collect_images([root])
    assert files == [root / "a.png"]
    assert failures == [(str(root / "locked"), "cannot read folder: Permission denied")]
    coco = _coco(tmp_path, ["a.png"])
    report = Index(tmp_path / "db", segmenter=tiny_segmenter).add(
        [root], progress=False, proposals_from=coco
    )
    assert report.indexed == 1 and [p for p, _ in report.failed] == [str(root / "locked")]


def test_ray_index_task_records_a_bomb(messy: Path) -> None:
    """The task a Ray worker runs: a bomb is a failure record, the worker untouched."""
    from hybridgl.search.rows import IndexTask

    class NoWorker:
        @property
        def segmenter(self):
            raise AssertionError("a bad image must not reach the model")

    path = str(messy / "bomb.webp")
    unit = WorkUnit(key=path, rows=[{"path": path}], data={"path": path, "image_id": "x"})
    [rec] = IndexTask(None, "sam").run(NoWorker(), unit)
    assert path in rec["error"] and "too large" in rec["error"]


# ------------------------------------------------------------------ evaluate


def test_evaluate_records_a_bomb_as_a_bad_image(messy: Path) -> None:
    from hybridgl.eval.task import _ImageFailure, _load

    unit = WorkUnit(key="1", rows=[], data={"image_path": str(messy / "bomb.webp")})
    with pytest.raises(_ImageFailure) as e:
        _load(unit)
    assert "bomb.webp" in str(e.value) and "too large" in str(e.value)
