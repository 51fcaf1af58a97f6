"""The ``hybridgl`` command line, driven through its real entry point.

Models are the library's tiny random ones (``HYBRIDGL_RANDOM_WEIGHTS=tiny``): outputs are
meaningless but every file format, exit code and resume path is real. Ground-truth COCO
masks serve as proposals where a test needs non-empty masks.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hybridgl.cli.common import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    InputError,
    UsageError,
)
from hybridgl.cli.main import main
from hybridgl.jobs.batch import mask_filename
from hybridgl.jobs.batch_rows import read_rows
from hybridgl.masks import png_to_mask, polygons_to_mask, rle_to_mask
from hybridgl.schemas import validate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COCO = DATA / "coco-mini"
ANN = COCO / "annotations" / "instances_val2017.json"

needs_data = pytest.mark.skipif(
    not ANN.is_file(), reason=f"COCO mini data not found at {COCO} (shared/data beside the repo)"
)


@pytest.fixture(autouse=True)
def _tiny_models(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_tiny_segmenters: dict
) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYBRIDGL_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Two val images with their ground-truth masks saved as N x H x W proposals."""
    if not ANN.is_file():
        pytest.skip(f"COCO mini data not found at {COCO}")
    from pycocotools.coco import COCO as CocoApi

    with contextlib.redirect_stdout(io.StringIO()):
        coco = CocoApi(str(ANN))
    out = tmp_path_factory.mktemp("proposals")
    picked: list[tuple[Path, Path]] = []
    for img in coco.loadImgs(sorted(coco.getImgIds())):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=False))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        masks = [m for m in masks if m.sum() > 50]
        path = COCO / "val2017" / img["file_name"]
        if len(masks) < 3 or not path.is_file():
            continue
        npy = out / f"{path.stem}.npy"
        np.save(npy, np.stack(masks[:4]))  # few proposals keep the CLIP pass short
        picked.append((path, npy))
        if len(picked) == 2:
            break
    assert len(picked) == 2
    return picked


def _check_record_masks(rec: dict, proposals: np.ndarray, png: Path | None) -> None:
    """RLE, polygons and PNG all give back the chosen proposal."""
    h, w = rec["height"], rec["width"]
    expected = proposals[rec["index"]] if rec["found"] else np.zeros((h, w), bool)
    validate(rec)  # segment and batch both write Prediction.to_dict records
    np.testing.assert_array_equal(rle_to_mask(rec["mask"]), expected)
    poly = polygons_to_mask(rec["polygons"], h, w)
    assert not (expected & ~poly).any()
    if expected.any():
        assert (expected & poly).sum() / (expected | poly).sum() > 0.9
    else:
        assert not poly.any()
    if png is not None:
        np.testing.assert_array_equal(png_to_mask(png), expected)
    assert rec["area"] == int(expected.sum())
    if rec["found"]:
        ys, xs = np.nonzero(expected)
        assert rec["box"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


# --------------------------------------------------------------------------- no model


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 "):
        assert f"  {code}" in out
    for cmd in ("segment", "batch", "weights"):
        assert cmd in out
    assert main(["segment", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit codes" in out and "--proposals" in out and "out_0.png" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridgl import __version__

    assert main(["--version"]) == EXIT_OK
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "x.jpg", "a cat", "--bogus"],
        ["--bogus"],
        [],
        ["segment", "x.jpg"],
        ["segment", "x.jpg", "cat", "--top-k", "0"],
        ["segment", "x.jpg", "cat", "--sam", "vit_z"],
        ["batch", "rows.jsonl"],
        ["batch", ".", "--out", "o", "-e", ""],
        ["batch", ".", "--out", "o", "-e", "a cat", "--workers", "2"],
        ["evaluate", "--dataset", "refcoco", "--split", "val"],
        ["evaluate", "--format", "generic", "--instances", "x.json"],
        ["weights"],
        ["weights", "download", "no_such_checkpoint"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


@needs_data
def test_bad_input_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = next((COCO / "val2017").glob("*.jpg"))
    missing = tmp_path / "missing.jpg"
    assert main(["segment", str(missing), "a cat"]) == EXIT_INPUT
    assert str(missing) in capsys.readouterr().err
    assert main(["segment", str(image), "   "]) == EXIT_INPUT
    assert "empty" in capsys.readouterr().err
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(os.urandom(2000))
    assert main(["segment", str(garbage), "a cat"]) == EXIT_INPUT
    assert "cannot read image" in capsys.readouterr().err
    bad_npy = tmp_path / "p.npy"
    bad_npy.write_text("not numpy")
    assert main(["segment", str(image), "cat", "--proposals", str(bad_npy)]) == EXIT_INPUT
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 5, 5), bool))
    assert main(["segment", str(image), "cat", "--proposals", str(wrong)]) == EXIT_INPUT
    assert "proposals" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]) == EXIT_INPUT
    assert main(["segment", str(image), "cat", "--mask", str(tmp_path / "m.jpg")]) == EXIT_USAGE
    # a device this machine does not have is a usage error, found before any model loads
    assert main(["segment", str(image), "cat", "--device", "cuda:99"]) == EXIT_USAGE
    assert main(["segment", str(image), "cat", "--device", "toaster"]) == EXIT_USAGE
    assert "--device" in capsys.readouterr().err


def test_large_images_and_proposals_are_bad_input_before_models_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image
    from test_images import blank_png
    from test_masks import _npy_header_only

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(blank_png(18000, 18000))  # 39 KB claiming 324 MP
    assert main(["segment", str(bomb), "a cat"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "too large" in err and "Traceback" not in err
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 6)).save(small)
    assert main(["segment", str(small), "a cat", "--max-pixels", "47"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "8 x 6 = 48 pixels" in err and "--max-pixels" in err
    huge = tmp_path / "huge.npy"
    huge.write_bytes(_npy_header_only((10000, 6, 8)))
    assert main(["segment", str(small), "a cat", "--proposals", str(huge)]) == EXIT_INPUT
    assert "more than the limit" in capsys.readouterr().err
    assert main(["segment", str(small), "a cat", "--max-pixels", "-1"]) == EXIT_USAGE


def test_segment_output_folders_are_checked_before_models_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    import hybridgl.cli.segment as segment_cli

    def no_models(*_a: object, **_k: object) -> None:
        raise AssertionError("models must not load when an output cannot be written")

    monkeypatch.setattr(segment_cli, "build_segmenter", no_models)
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 6)).save(small)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the folder's missing permission is simulated
    monkeypatch.setattr(
        segment_cli.os,
        "access",
        lambda p, mode: False if Path(p) == locked else real_access(p, mode),
    )
    out = locked / "new" / "deeper" / "r.json"  # missing folders: checked at `locked`
    assert main(["segment", str(small), "a cat", "--json", str(out)]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert str(locked) in err and "Traceback" not in err and ".tmp" not in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert (
        main(["segment", str(small), "a cat", "--mask", str(afile / "sub" / "m.png")]) == EXIT_USAGE
    )
    assert "is not a folder" in capsys.readouterr().err


@needs_data
def test_missing_weights_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = next((COCO / "val2017").glob("*.jpg"))
    monkeypatch.delenv("HYBRIDGL_RANDOM_WEIGHTS")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    (tmp_path / "w").mkdir()
    (tmp_path / "c").mkdir()
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "c"))
    assert main(["segment", str(image), "a cat"]) == EXIT_WEIGHTS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ".pt" in err or ".pth" in err  # names the checkpoint file
    assert str(tmp_path / "w") in err


# --------------------------------------------------------------------------- weights


def test_weights_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridgl import weights

    wdir = tmp_path / "w"
    wdir.mkdir()
    ck = weights.get_checkpoint("sam_vit_b")
    (wdir / ck.filename).write_bytes(b"not the real checkpoint")

    assert main(["weights", "path", "--weights-dir", str(wdir)]) == EXIT_OK
    lines = capsys.readouterr().out.split()
    assert lines[0] == str(wdir) and lines[-1] == str(tmp_path / "cache")

    assert main(["weights", "list", "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == set(weights.REGISTRY)
    assert not any(r["present"] for r in listed)
    assert main(["weights", "list"]) == EXIT_OK
    table = capsys.readouterr().out
    assert "sam_vit_h" in table and "PRESENT" in table

    # a wrong file is reported BAD with exit 4; nothing present is fine
    assert main(["weights", "verify", "--weights-dir", str(wdir)]) == EXIT_WEIGHTS
    out = capsys.readouterr().out
    assert "BAD" in out and ck.filename in out
    assert main(["weights", "verify"]) == EXIT_OK

    # a download that cannot succeed (no such mirror) fails cleanly, leaving nothing
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_URL_BASE", (tmp_path / "mirror").as_uri())
    assert main(["weights", "download", "sam_vit_b", "--no-progress"]) == EXIT_WEIGHTS
    err = capsys.readouterr().err
    assert "sam_vit_b" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / ck.filename).exists()


# --------------------------------------------------------------------------- segment


@pytest.mark.slow
@needs_data
def test_segment_outputs_decode_to_the_predicted_mask(
    tmp_path: Path, coco_images: list[tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    image, npy = coco_images[0]
    proposals = np.load(npy)
    exprs = ["the man on the left", "a plate"]
    code = main(
        [
            "segment",
            str(image),
            *exprs,
            "--proposals",
            str(npy),
            "--mask",
            str(tmp_path / "m.png"),
            "--overlay",
            str(tmp_path / "o.jpg"),
            "--json",
            str(tmp_path / "r.json"),
            "--top-k",
            "2",
        ]
    )
    assert code == EXIT_OK
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith('[0] "the man on the left"')

    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["num_proposals"] == len(proposals)
    assert (doc["height"], doc["width"]) == proposals.shape[1:]
    assert doc["model"]["random_weights"] == "tiny"
    assert [r["expression"] for r in doc["results"]] == exprs
    for i, rec in enumerate(doc["results"]):
        assert rec["id"] == i and rec["found"]
        assert "mask" in rec and "rle" not in rec  # the one format, Prediction.to_dict
        assert 1 <= len(rec["candidates"]) <= 2
        assert 0 <= rec["index"] < len(proposals)
        assert all(0 <= c["index"] < len(proposals) for c in rec["candidates"])
        assert rec["parse"]["expression"] == exprs[i]
        _check_record_masks(rec, proposals, tmp_path / f"m_{i}.png")
        from PIL import Image

        with Image.open(tmp_path / f"o_{i}.jpg") as ov:
            assert ov.size == (doc["width"], doc["height"])
    assert not (tmp_path / "m.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m_0.png",
        "m_1.png",
        "o_0.jpg",
        "o_1.jpg",
        "r.json",
    ]


@needs_data
def test_segment_json_to_stdout(
    coco_images: list[tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    image, npy = coco_images[1]
    argv = ["segment", str(image), "the big one", "--proposals", str(npy), "--json", "-"]
    assert main(argv) == EXIT_OK
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    doc = json.loads(cap.out)  # only JSON on stdout; the summary went to stderr
    assert '[0] "the big one"' in cap.err
    _check_record_masks(doc["results"][0], np.load(npy), None)


@pytest.mark.slow
def test_process_exit_codes_and_version(tmp_path: Path) -> None:
    """The real process boundary: ``python -m hybridgl.cli.main`` prints the version, and a
    failure is one line on stderr, no traceback, the documented exit code (no model loads:
    the image is checked first)."""
    env = {
        **os.environ,
        "HYBRIDGL_RANDOM_WEIGHTS": "tiny",
        "HYBRIDGL_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cli = [sys.executable, "-m", "hybridgl.cli.main"]
    from hybridgl import __version__

    ver = subprocess.run([*cli, "--version"], capture_output=True, text=True, env=env)
    assert ver.returncode == EXIT_OK and __version__ in ver.stdout
    missing = tmp_path / "missing.jpg"
    bad = subprocess.run(
        [*cli, "segment", str(missing), "x"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == EXIT_INPUT
    assert "Traceback" not in bad.stderr and "image not found" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    usage = subprocess.run([*cli, "segment"], capture_output=True, text=True, env=env)
    assert usage.returncode == EXIT_USAGE and "Traceback" not in usage.stderr


# --------------------------------------------------------------------------- batch


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
@needs_data
def test_batch_failures_are_recorded_and_resume_skips_done_rows(
    tmp_path: Path, coco_images: list[tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    (img_a, npy_a), (img_b, npy_b) = coco_images
    work = tmp_path / "in"
    work.mkdir()
    (work / "sub").mkdir()
    (work / "sub" / "broken.jpg").write_bytes(os.urandom(3000))  # corrupt image
    rows = [
        {"image": str(img_a), "expression": "the man on the left", "proposals": str(npy_a)},
        {"image": "sub/broken.jpg", "expression": "a cat", "id": "broken"},  # relative path
        {"image": str(img_b), "expression": "the dog", "id": 7, "proposals": str(npy_b)},
        {"image": str(img_a), "expression": "a plate", "id": "plate", "proposals": str(npy_a)},
        {"image": str(img_b), "expression": " ", "id": "empty", "proposals": str(npy_b)},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n"
    (work / "rows.jsonl").write_text(text)
    out = tmp_path / "out"

    assert main(["batch", str(work / "rows.jsonl"), "--out", str(out)]) == EXIT_PARTIAL
    cap = capsys.readouterr()
    assert "done 3, skipped 0, failed 3" in cap.out
    assert "batch" in cap.err and "expr" in cap.err  # the progress bar
    assert "broken" in cap.err and "Traceback" not in cap.err
    recs = _records(out)
    by_id = {r["id"]: r for r in recs}
    assert len(recs) == 6
    assert set(by_id) == {
        f"{img_a}::the man on the left",
        "broken",
        "7",
        "plate",
        "empty",
        "line:6",
    }
    assert "cannot read image" in by_id["broken"]["error"]
    assert by_id["broken"]["error_kind"] == "bad_image"
    assert "empty" in by_id["empty"]["error"]
    assert "not JSON" in by_id["line:6"]["error"]
    for rid, npy in ((f"{img_a}::the man on the left", npy_a), ("7", npy_b), ("plate", npy_a)):
        rec = by_id[rid]
        assert "error" not in rec
        assert rec["mask_png"] == f"masks/{mask_filename(rid)}"
        _check_record_masks(rec, np.load(npy), out / rec["mask_png"])
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        mask_filename(r) for r in (f"{img_a}::the man on the left", "7", "plate")
    )
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (3, 3)

    # rerun: the three done rows are skipped, the failed ones are tried again
    assert main(["batch", str(work / "rows.jsonl"), "--out", str(out), "--no-progress"]) == (
        EXIT_PARTIAL
    )
    assert "done 0, skipped 3, failed 3" in capsys.readouterr().out
    recs = _records(out)
    assert len(recs) == 9
    ok_ids = [r["id"] for r in recs if "error" not in r]
    assert len(ok_ids) == len(set(ok_ids)) == 3

    # fix the broken row: only it runs; then everything is done and the exit code is 0
    rows[1]["proposals"] = str(npy_b)
    (work / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    (work / "sub" / "broken.jpg").unlink()
    (work / "sub" / "broken.jpg").symlink_to(img_b)
    assert main(["batch", str(work / "rows.jsonl"), "--out", str(out), "--no-progress"]) == EXIT_OK
    assert "done 1, skipped 3, failed 0" in capsys.readouterr().out
    last = _records(out)[-1]
    assert last["id"] == "broken" and "error" not in last
    assert last["image"] == "sub/broken.jpg"


@pytest.mark.slow
@needs_data
def test_batch_folder_with_expressions(
    tmp_path: Path, coco_images: list[tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "one.jpg").symlink_to(coco_images[0][0])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["batch", str(folder), "--out", str(out), "-e", "a person", "-e", "the left one"]
    assert main([*argv, "--no-progress", "--overlays"]) == EXIT_OK
    assert "done 2, skipped 0, failed 0" in capsys.readouterr().out
    recs = _records(out)
    assert [r["id"] for r in recs] == ["one.jpg::a person", "one.jpg::the left one"]
    for rec in recs:
        mask = png_to_mask(out / rec["mask_png"])
        np.testing.assert_array_equal(mask, rle_to_mask(rec["mask"]))
        assert mask.any() == rec["found"]
        assert (out / rec["overlay"]).is_file()
    assert main([*argv, "--no-progress"]) == EXIT_OK
    assert "done 0, skipped 2, failed 0" in capsys.readouterr().out


def test_read_rows_csv_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "expression"])
        w.writerow(["a", "x.jpg", "the cat, on the left"])
        w.writerow(["", "y.jpg", "a dog"])
        w.writerow(["", "y.jpg", "a dog"])  # exact repeat without id: skipped
        w.writerow(["a", "z.jpg", "other"])  # id reused: an error
    rows, bad, dups = read_rows(path, [])
    assert [r.id for r in rows] == ["a", "y.jpg::a dog"]
    assert rows[0].expression == "the cat, on the left"
    assert rows[0].image_path == tmp_path / "x.jpg"
    assert dups == 1
    # the repeated id is reported under its own row, so the first row's record keeps the id
    assert len(bad) == 1 and "duplicate id 'a' (first used on line 2)" in bad[0].error
    assert bad[0].id == "line:5" and bad[0].line == 5

    headerless = tmp_path / "h.csv"
    headerless.write_text("x.jpg,a cat\n")
    with pytest.raises(InputError, match="header"):
        read_rows(headerless, [])
    with pytest.raises(UsageError):
        read_rows(path, ["a cat"])
    with pytest.raises(UsageError):
        read_rows(tmp_path, [])
    other = tmp_path / "rows.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="unknown input"):
        read_rows(other, [])
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        read_rows(empty, [])
    (tmp_path / "imgs").mkdir()
    with pytest.raises(InputError, match="no images"):
        read_rows(tmp_path / "imgs", ["cat"])


def test_mask_filenames_are_safe_and_distinct() -> None:
    ids = ["a", "a/b", "a_b", "../../etc/passwd", "x" * 300, "über", "."]
    names = [mask_filename(i) for i in ids]
    assert len(set(names)) == len(names)
    for n in names:
        assert "/" not in n and not n.startswith(".") and n.endswith(".png") and len(n) < 120
    assert mask_filename("row-1") == "row-1.png"


def test_run_guarded_maps_errors(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from hybridgl.cli.common import run_guarded
    from hybridgl.errors import ExpressionError, ImageError, WeightsError

    def raiser(exc: BaseException):
        def fn(_args: argparse.Namespace) -> int:
            raise exc

        return fn

    quiet = argparse.Namespace(debug=False)
    cases = [
        (ImageError("bad image"), EXIT_INPUT),
        (ExpressionError("expression is empty"), EXIT_INPUT),
        (WeightsError("no ViT-B-16.pt"), EXIT_WEIGHTS),
        (UsageError("bad combination"), EXIT_USAGE),
        (RuntimeError("boom"), 1),
        (PermissionError("denied: /out"), 1),
        (KeyboardInterrupt(), 130),
    ]
    for exc, code in cases:
        assert run_guarded(raiser(exc), quiet) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert "internal error: RuntimeError: boom" in (
        run_guarded(raiser(RuntimeError("boom")), quiet) and capsys.readouterr().err
    )
    assert run_guarded(raiser(RuntimeError("boom")), argparse.Namespace(debug=True)) == 1
    assert "Traceback" in capsys.readouterr().err
    assert run_guarded(lambda _a: None, quiet) == EXIT_OK


def test_debug_flag_after_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    assert main(["batch", str(afile), "--out", str(afile), "--debug"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "not a folder" in err and "Traceback" in err
    assert main(["batch", str(afile), "--out", str(afile)]) == EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------- jobs edges


@pytest.mark.slow
@needs_data
def test_sam_none_needs_no_sam_checkpoint(
    tmp_path: Path,
    coco_images: list[tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (img, npy), (img_b, _) = coco_images
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"image": str(img), "expression": "a man", "proposals": str(npy), "id": "p"})
        + "\n"
        + json.dumps({"image": str(img_b), "expression": "a dog", "id": "nop"})
        + "\n"
    )
    # with tiny models: caller proposals work, a row without them is a failed row
    out = tmp_path / "out"
    argv = ["batch", str(rows), "--out", str(out), "--no-progress", "--sam", "none"]
    assert main(argv) == EXIT_PARTIAL
    by_id = {r["id"]: r for r in _records(out)}
    assert "error" not in by_id["p"] and by_id["p"]["found"]
    assert "--sam none" in by_id["nop"]["error"]
    assert main(["segment", str(img), "a man", "--sam", "none", "--proposals", str(npy)]) == 0
    assert main(["segment", str(img), "a man", "--sam", "none"]) == EXIT_USAGE
    # with real weights: only CLIP's checkpoint is asked for, never SAM's
    monkeypatch.delenv("HYBRIDGL_RANDOM_WEIGHTS")
    capsys.readouterr()
    argv = ["segment", str(img), "a man", "--sam", "none", "--proposals", str(npy)]
    assert main(argv) == EXIT_WEIGHTS
    err = capsys.readouterr().err
    assert "ViT-B-16" in err and "sam_vit" not in err


@needs_data
def test_batch_max_pixels_and_coco_results(
    tmp_path: Path, coco_images: list[tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    from pycocotools import mask as mask_utils

    (img, npy), _ = coco_images
    rows = tmp_path / "rows.csv"
    rows.write_text(f"id,image,expression,proposals,image_id\nr1,{img},a man,{npy},139\n")
    out = tmp_path / "out"
    # an image above --max-pixels is a failed row, found from its header (no model built)
    argv = ["batch", str(rows), "--out", str(out), "--no-progress", "--format", "coco"]
    assert main([*argv, "--max-pixels", "1000"]) == EXIT_PARTIAL
    rec = _records(out)[0]
    assert rec["error_kind"] == "image_too_large" and "too large" in rec["error"]
    assert "1,000" in rec["error"]
    assert json.loads((out / "results.coco.json").read_text()) == []
    assert main(argv) == EXIT_OK
    rec = _records(out)[-1]
    coco = json.loads((out / "results.coco.json").read_text())
    assert len(coco) == 1 and coco[0]["image_id"] == 139 and coco[0]["category_id"] == 1
    assert coco[0]["segmentation"] == rec["mask"] and coco[0]["score"] == rec["score"]
    rle = {"size": rec["mask"]["size"], "counts": rec["mask"]["counts"].encode()}
    assert coco[0]["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]


@pytest.mark.slow
@needs_data
def test_max_pixels_reaches_every_load_and_the_segmenter(
    tmp_path: Path, coco_images: list[tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--max-pixels`` above the default (44.7 MP) is the limit of every check of the run:
    the CLI's own loads (overlay reload included) and the segmenter's re-check."""
    import hybridgl.images
    from hybridgl.segmenter import Segmenter

    seen: list[object] = []
    real_load, real_encode = hybridgl.images.load_image, Segmenter.encode_image

    def load_image(image, max_pixels=hybridgl.images.DEFAULT_MAX_PIXELS):
        seen.append(("load", max_pixels))
        return real_load(image, max_pixels=max_pixels)

    def encode_image(self, image, proposals=None, **kw):
        seen.append(("encode", kw.get("max_pixels", "default")))
        return real_encode(self, image, proposals, **kw)

    monkeypatch.setattr(hybridgl.images, "load_image", load_image)
    monkeypatch.setattr(Segmenter, "encode_image", encode_image)
    (img, npy), _ = coco_images
    big = "50000000"
    assert main(["segment", str(img), "a man", "--proposals", str(npy), "--max-pixels", big]) == 0
    assert seen and set(seen) == {("load", 50_000_000), ("encode", 50_000_000)}
    seen.clear()
    rows = tmp_path / "rows.csv"
    rows.write_text(f"id,image,expression,proposals\nr1,{img},a man,{npy}\n")
    argv = ["batch", str(rows), "--out", str(tmp_path / "out"), "--no-progress", "--overlays"]
    assert main([*argv, "--max-pixels", big]) == EXIT_OK
    assert ("load", 50_000_000) in seen and ("encode", 50_000_000) in seen
    assert set(seen) == {("load", 50_000_000), ("encode", 50_000_000)}, seen
