"""gRefCOCO evaluation through ``calibrate`` on the Ray engine (issue 19): the same
per-expression records, metrics and fitted thresholds as the local engine. (PhraseCut's
``--targets many`` records travel the same way: ``batch --targets many`` on Ray is checked
in test_targets_batch, PhraseCut itself in test_grefcoco.) A local Ray
for the session, shut down in a finally (tests/ray_support.py); fixtures in the
published layouts built from coco-mini; COCO masks as proposals; tiny random weights."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from gres_fixture import COCO, build_grefcoco

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


def test_grefcoco_calibration_on_ray_equals_local(ray_cluster, tmp_path_factory) -> None:
    tmp = tmp_path_factory.mktemp("gres-ray")
    root = tmp / "data"
    build_grefcoco(root, count=5)
    # calibrate evaluates gRefCOCO (the same task, with the calibration fields added):
    # its run on Ray checks the gRefCOCO records and report as a plain evaluate would
    argv = ("calibrate", "--data-root", str(root), "--dataset", "grefcoco", "--split", "testA",
            "--proposals", "gt", "--points", "7", "--no-plot")  # fmt: skip
    a, b = tmp / "local", tmp / "ray"
    rc, _, err = run_cli(*argv, "--out", str(a))
    assert rc == 0, err
    rc, _, err = run_cli(*argv, "--out", str(b), "--engine", "ray", "--workers", "1")
    assert rc == 0, err
    ra, rb = records(a), records(b)
    assert ra == rb and len(ra) == 6
    assert all(r["error"] is None for r in rb.values())
    assert all("calibration" in r for r in rb.values())
    pa = json.loads((a / "report.json").read_text())
    pb = json.loads((b / "report.json").read_text())
    assert pb["this_run"]["engine"] == "ray" and pa["this_run"]["engine"] == "local"
    for key in ("metrics", "gres", "counts"):
        assert json.dumps(pa.get(key), sort_keys=True) == json.dumps(pb.get(key), sort_keys=True)
    g = pb["gres"]
    assert g["n"] == 6 and g["n_no_target"] == 2
    ta = json.loads((a / "thresholds.json").read_text())
    tb = json.loads((b / "thresholds.json").read_text())
    assert ta["rules"] == tb["rules"]
    assert ta["calibration"]["metrics"] == tb["calibration"]["metrics"]
