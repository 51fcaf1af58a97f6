"""gRefCOCO and PhraseCut evaluation and ``calibrate`` on the Ray engine (issue 19): the same
per-expression records, metrics and fitted thresholds as the local engine. A local Ray
started in the test and shut down in a finally (tests/ray_support.py); fixtures in the
published layouts built from coco-mini; COCO masks as proposals; tiny random weights."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from gres_fixture import COCO, build_grefcoco, build_phrasecut
from ray_support import local_ray

pytest.importorskip("ray", reason='needs the ray extra: pip install "hybridgl[ray]"')

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not COCO.is_dir(), reason="needs ../shared/data/coco-mini"),
]

VOLATILE = ("time_s", "image_time_s")


def run_cli(*argv: str) -> tuple[int, str, str]:
    from hybridgl.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--device", "cpu", "--quiet", "--threads-per-worker", "1"])
    return rc, out.getvalue(), err.getvalue()


def records(folder: Path) -> dict[str, dict]:
    out = {}
    for line in (folder / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = f"{r['dataset']}/{r['split']}/{r['sent_id']}"
        assert key not in out, f"{key} written twice"
        out[key] = {k: v for k, v in r.items() if k not in VOLATILE}
    return out


def test_gres_datasets_and_calibrate_on_ray_equal_local(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    tmp = tmp_path_factory.mktemp("gres-ray")
    root = tmp / "data"
    build_grefcoco(root, count=5)
    build_phrasecut(root)
    jobs = {
        "grefcoco": ("evaluate", "--data-root", str(root), "--dataset", "grefcoco",
                     "--split", "testA", "--proposals", "gt"),
        "phrasecut": ("evaluate", "--data-root", str(root), "--dataset", "phrasecut",
                      "--split", "test", "--proposals", "gt", "--targets", "many"),
        "calibrate": ("calibrate", "--data-root", str(root), "--dataset", "grefcoco",
                      "--split", "testA", "--proposals", "gt", "--points", "7", "--no-plot"),
    }  # fmt: skip
    for name, argv in jobs.items():
        rc, _, err = run_cli(*argv, "--out", str(tmp / f"{name}-local"))
        assert rc == 0, (name, err)
    with local_ray(tmp_path_factory):
        for name, argv in jobs.items():
            rc, _, err = run_cli(*argv, "--out", str(tmp / f"{name}-ray"), "--engine", "ray",
                                 "--workers", "2")  # fmt: skip
            assert rc == 0, (name, err)
    for name in jobs:
        a, b = tmp / f"{name}-local", tmp / f"{name}-ray"
        ra, rb = records(a), records(b)
        assert ra == rb and len(ra) == (4 if name == "phrasecut" else 6), name
        assert all(r["error"] is None for r in rb.values())
        pa = json.loads((a / "report.json").read_text())
        pb = json.loads((b / "report.json").read_text())
        assert pb["this_run"]["engine"] == "ray" and pa["this_run"]["engine"] == "local"
        for key in ("metrics", "gres", "counts"):
            assert json.dumps(pa.get(key), sort_keys=True) == json.dumps(
                pb.get(key), sort_keys=True
            )
    g = json.loads((tmp / "grefcoco-ray" / "report.json").read_text())["gres"]
    assert g["n"] == 6 and g["n_no_target"] == 2
    assert all("calibration" in r for r in records(tmp / "calibrate-ray").values())
    ta = json.loads((tmp / "calibrate-local" / "thresholds.json").read_text())
    tb = json.loads((tmp / "calibrate-ray" / "thresholds.json").read_text())
    assert ta["rules"] == tb["rules"]
    assert ta["calibration"]["metrics"] == tb["calibration"]["metrics"]
