"""Volumes as work units (segment-volume --list): one folder and one flat record per volume,
failures recorded and the run going on, resume, and the Ray engine giving the local
engine's records, on files pydicom and nibabel ship (read in place) and a series built
from one of them."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from medical_support import dicom_file, nibabel, write_series

from hybridgl.cli.common import EXIT_INPUT, EXIT_PARTIAL, EXIT_USAGE
from hybridgl.cli.main import main
from hybridgl.errors import ERROR_KINDS
from hybridgl.jobs.volumes import read_volume_list, volume_folder


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--device", "cpu"])
    return rc, out.getvalue(), err.getvalue()


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines() if t.strip()]


@pytest.fixture
def tiny_env(monkeypatch, tmp_path, shared_tiny_segmenters):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def volume_list(tmp_path) -> Path:
    """CT_small (one DICOM file, read where pydicom keeps it), a 3-slice series built from
    it, a missing file and a row without an expression."""
    write_series(tmp_path / "series", n=3, spacing=2.0)
    rows = [
        {"id": "ct", "volume": dicom_file("CT_small.dcm"), "expression": "the body"},
        {"id": "series", "volume": "series", "expression": "the bright part"},
        {"id": "gone", "volume": "missing.nii.gz", "expression": "x"},
        {"id": "noexpr", "volume": "series"},
    ]
    path = tmp_path / "volumes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_list_rows_paths_ids_and_refusals(tmp_path, volume_list) -> None:
    rows = read_volume_list(volume_list)
    assert [r.id for r in rows] == ["ct", "series", "gone", "noexpr"]
    assert rows[1].volume == str(tmp_path / "series") and rows[3].error == "no 'expression'"
    csv_file = tmp_path / "v.csv"
    csv_file.write_text("volume,expression\nseries,the top\n,x\n")
    rows = read_volume_list(csv_file)
    assert [(r.id, r.error) for r in rows] == [("2", None), ("3", "no 'volume' path")]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "volume": "x", "expression": "y"}\n' * 2)
    from hybridgl.errors import InputError

    with pytest.raises(InputError, match="appears twice"):
        read_volume_list(dup)
    assert volume_folder("ct") == "volumes/ct" and volume_folder("../x y").startswith("volumes/")
    assert "/" not in volume_folder("../x y").removeprefix("volumes/")


@pytest.mark.slow
def test_local_run_records_folders_and_resume(tmp_path, volume_list, tiny_env) -> None:
    out = tmp_path / "out"
    common = ("--list", str(volume_list), "--out", str(out), "--keyslice", "0", "--no-progress")
    rc, stdout, err = run_cli("segment-volume", *common, "--window", "abdomen", "--seg-each")
    assert rc == EXIT_PARTIAL, err
    assert "Traceback" not in err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert (res["done"], res["failed"], res["skipped"], res["engine"]) == (2, 2, 0, "local")
    recs = {r["id"]: r for r in lines(out / "volumes.jsonl")}
    assert recs["gone"]["error_kind"] in ERROR_KINDS and "missing.nii.gz" in recs["gone"]["error"]
    assert recs["noexpr"]["error_kind"] == "bad_record"
    for rid, n in (("ct", 1), ("series", 3)):
        rec = recs[rid]
        assert all(not isinstance(v, (dict, list)) or k == "shape" for k, v in rec.items())
        folder = out / rec["folder"]
        doc = json.loads((folder / "summary.json").read_text())
        assert doc["shape"][2] == n and rec["voxels"] == doc["voxels"] == int(
            np.asarray(nibabel.load(folder / "labels.nii.gz").dataobj).sum()
        )
        assert rec["window_source"] == "preset:abdomen" and rec["key_slice"] == 0
        assert (folder / "seg.dcm").is_file() == (rec["voxels"] > 0)
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["window"] == "abdomen" and "spec" in run
    # resume: the two done volumes are skipped, the failed ones tried again
    rc, stdout, err = run_cli("segment-volume", *common, "--window", "abdomen", "--seg-each")
    res = json.loads(stdout.strip().splitlines()[-1])
    assert rc == EXIT_PARTIAL and (res["done"], res["failed"], res["skipped"]) == (0, 2, 2)
    # other options into the same folder: refused, naming the option
    rc, _, err = run_cli("segment-volume", *common, "--window", "lung", "--seg-each")
    assert rc == EXIT_INPUT and "window" in err
    rc, _, err = run_cli("segment-volume", "a.nii", "x", "--out", str(out), "--engine", "ray")
    assert rc == EXIT_USAGE and "--list" in err


@pytest.mark.slow
def test_ray_engine_gives_the_local_records(
    ray_cluster, tmp_path, volume_list, shared_tiny_segmenters
) -> None:
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        extra = ("--engine", "ray", "--workers", "1") if engine == "ray" else ()
        rc, stdout, err = run_cli(
            "segment-volume", "--list", str(volume_list), "--out", str(out),
            "--keyslice", "0", "--no-progress", "--threads-per-worker", "1", *extra,
        )  # fmt: skip
        assert rc == EXIT_PARTIAL, err
        assert json.loads(stdout.strip().splitlines()[-1])["engine"] == engine
        outs[engine] = out

    def stable(out: Path) -> dict:
        return {r["id"]: {k: v for k, v in r.items() if k != "seconds"}
                for r in lines(out / "volumes.jsonl")}  # fmt: skip

    a, b = stable(outs["local"]), stable(outs["ray"])
    assert a == b and len(a) == 4
    for rid in ("ct", "series"):
        la = nibabel.load(outs["local"] / a[rid]["folder"] / "labels.nii.gz")
        lb = nibabel.load(outs["ray"] / b[rid]["folder"] / "labels.nii.gz")
        np.testing.assert_array_equal(np.asarray(la.dataobj), np.asarray(lb.dataobj))
        np.testing.assert_allclose(la.affine, lb.affine)
