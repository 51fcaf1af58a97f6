"""The Ray engine (issue 11) on a local Ray started inside the test.

The session's one local Ray (``ray_cluster``, tests/ray_support.py: 8 logical CPUs so Ray
Data's own tasks never starve the actors on a 2-core machine, no dashboard, a small object
store), shut down in a finally.
Models are tiny and random (``HYBRIDGL_RANDOM_WEIGHTS=tiny``) and COCO masks are the
proposals, so the runs are short; what is checked is the plumbing: the same records and
metrics as the local engine, and no row lost or written twice when a worker or the
driver is killed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from eval_fixture import SKIP_REASON, build_refer_fixture, data_available

from hybridgl.cli.main import main

ray = pytest.importorskip("ray", reason='needs the ray extra: pip install "hybridgl[ray]"')

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not data_available(), reason=SKIP_REASON)]

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco-mini"
VOLATILE = ("timings", "time_s", "image_time_s")


@pytest.fixture
def cluster(ray_cluster, tmp_path_factory):
    """The session's Ray, and a factory of folders shared by the module's tests."""
    return {"address": ray_cluster, "tmp": tmp_path_factory}


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--device", "cpu"])
    return rc, out.getvalue(), err.getvalue()


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines() if t.strip()]


def stable(records: list[dict], key: str) -> dict:
    """Records by id, without the timings (the only fields allowed to differ)."""
    out = {}
    for r in records:
        assert r[key] not in out or r.get("error"), f"{r[key]} written twice"
        out[str(r[key])] = {k: v for k, v in r.items() if k not in VOLATILE}
    return out


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory):
    """A batch of good rows on 6 images (COCO masks as proposals) and bad rows."""
    from pycocotools.coco import COCO as CocoApi

    with contextlib.redirect_stdout(io.StringIO()):
        coco = CocoApi(str(COCO / "annotations" / "instances_val2017.json"))
    work = tmp_path_factory.mktemp("batch-in")
    rows = []
    for img in coco.loadImgs(sorted(coco.getImgIds())):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=False))
        masks = [m for m in (coco.annToMask(a).astype(bool) for a in anns) if m.sum() > 50]
        path = COCO / "val2017" / img["file_name"]
        if len(masks) < 2 or not path.is_file():
            continue
        npy = work / f"{path.stem}.npy"
        np.save(npy, np.stack(masks[:3]))
        for k, text in enumerate(("the man on the left", "a small thing")):
            rows.append({"image": str(path), "expression": text, "proposals": str(npy),
                         "id": f"{path.stem}-{k}"})  # fmt: skip
        if len(rows) == 12:
            break
    (work / "broken.jpg").write_bytes(os.urandom(2000))
    bad = [
        {"image": "broken.jpg", "expression": "a cat", "id": "broken"},
        {"image": "missing.jpg", "expression": "a dog", "id": "missing"},
        {"image": rows[0]["image"], "expression": " ", "id": "empty", "proposals": rows[0]["proposals"]},
        {"image": rows[0]["image"], "expression": "x", "id": "badnpy", "proposals": str(work / "broken.jpg")},
    ]  # fmt: skip
    path = work / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    return {"path": path, "good": [r["id"] for r in rows], "bad": [r["id"] for r in bad]}


def _workers_of_this_session() -> list:
    import psutil

    me = psutil.Process(os.getpid())
    found = []
    for p in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "RayUnitWorker" in " ".join(p.cmdline()):
                found.append(p)
    return found


def test_batch_on_ray_equals_local_even_when_a_worker_is_killed(
    cluster, batch_input, shared_tiny_segmenters
):
    """Same records as the local engine; one worker SIGKILLed mid-run (after the first
    image arrives) is restarted by Ray and its unfinished image retried: every good id
    has exactly one successful record, every bad one its error record."""
    from hybridgl.jobs import batch as batch_cli

    tmp = cluster["tmp"]
    local, on_ray = tmp.mktemp("b-local"), tmp.mktemp("b-ray")
    common = ("--no-progress", "--threads-per-worker", "1")
    rc, out, err = run_cli("batch", str(batch_input["path"]), "--out", str(local), *common)
    assert rc == 5, err

    killed: list[int] = []
    real_call = batch_cli.BatchSink.__call__

    def call(self, unit, records):
        real_call(self, unit, records)
        if not killed:
            procs = _workers_of_this_session()
            assert procs, "no Ray worker process found"
            killed.append(procs[0].pid)
            os.kill(procs[0].pid, signal.SIGKILL)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_cli.BatchSink, "__call__", call)
        rc2, out2, err2 = run_cli(
            "batch", str(batch_input["path"]), "--out", str(on_ray), *common,
            "--engine", "ray", "--workers", "2",
        )  # fmt: skip
    assert killed and rc2 == 5, err2
    assert "Traceback" not in err2
    n_good, n_bad = len(batch_input["good"]), len(batch_input["bad"])
    assert f"done {n_good}, skipped 0, failed {n_bad}" in out2
    a, b = lines(local / "results.jsonl"), lines(on_ray / "results.jsonl")
    assert len(a) == len(b) == n_good + n_bad  # nothing lost, nothing written twice
    assert sorted(r["id"] for r in b if not r.get("error")) == sorted(batch_input["good"])
    assert stable(a, "id") == stable(b, "id")
    for r in b:
        if not r.get("error"):
            assert (on_ray / r["mask_png"]).read_bytes() == (local / r["mask_png"]).read_bytes()


def test_the_address_check_accepts_a_real_ray_head(cluster):
    """The gRPC handshake of ``check_reachable`` passes against Ray's own GCS."""
    from hybridgl.jobs.ray_engine import check_reachable

    check_reachable(cluster["address"], timeout=5)


def test_evaluate_suite_on_ray_gives_the_same_records_and_metrics(cluster):
    """RefCOCO and RefCOCO+ val in one run: each shared image encoded once, the same
    per-split metrics (byte for byte) and records as the local engine."""
    tmp = cluster["tmp"]
    root = tmp.mktemp("refer")
    build_refer_fixture(root, ("refcoco", "refcoco+"))
    local, on_ray = tmp.mktemp("e-local"), tmp.mktemp("e-ray")
    args = ("evaluate", "--data-root", str(root), "--dataset", "refcoco,refcoco+",
            "--split", "val", "--proposals", "gt", "--quiet", "--threads-per-worker", "1")  # fmt: skip
    rc, _, err = run_cli(*args, "--out", str(local))
    assert rc == 0, err
    rc, stdout, err = run_cli(*args, "--out", str(on_ray), "--engine", "ray", "--workers", "2")
    assert rc == 0, err
    ra = json.loads((local / "report.json").read_text())
    rb = json.loads((on_ray / "report.json").read_text())
    assert set(rb["splits"]) == {"refcoco/val", "refcoco+/val"}
    for name in rb["splits"]:
        ma, mb = ra["splits"][name]["metrics"], rb["splits"][name]["metrics"]
        assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)
        assert ra["splits"][name]["counts"] == rb["splits"][name]["counts"]
    assert rb["this_run"]["engine"] == "ray" and rb["this_run"]["workers"] == 2
    # RefCOCO and RefCOCO+ share their images: each is encoded once for both datasets
    per_split = sum(r["counts"]["images"] for r in rb["splits"].values())
    assert rb["this_run"]["images_encoded"] == rb["counts"]["images"] < per_split
    assert ra["this_run"]["images_encoded"] == rb["this_run"]["images_encoded"]
    assert "| refcoco/val | refcoco+/val |" in stdout  # the paper's table layout
    a, b = lines(local / "predictions.jsonl"), lines(on_ray / "predictions.jsonl")
    key = lambda r: f"{r['dataset']}/{r['sent_id']}"  # noqa: E731
    assert stable([{**r, "k": key(r)} for r in a], "k") == stable(
        [{**r, "k": key(r)} for r in b], "k"
    )


def test_a_killed_driver_leaves_a_file_the_rerun_completes(
    cluster, batch_input, shared_tiny_segmenters
):
    out = cluster["tmp"].mktemp("b-driver")
    results = out / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cmd = [sys.executable, "-m", "hybridgl.cli.main", "batch", str(batch_input["path"]),
           "--out", str(out), "--no-progress", "--engine", "ray", "--workers", "1",
           "--threads-per-worker", "1", "--ray-address", cluster["address"], "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # wait for the first image's records to be written, then kill the driver
        while proc.poll() is None:
            if results.is_file() and any(
                not json.loads(t).get("error") for t in results.read_text().splitlines()[:-1]
            ):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = [r["id"] for r in lines_tolerant(results) if not r.get("error")]
    assert 0 < len(before) < len(batch_input["good"])  # it really died mid-run
    # the rerun resumes (here on the local engine: resuming is the driver's, the same
    # file and rule for both engines)
    rc, stdout, err = run_cli(
        "batch", str(batch_input["path"]), "--out", str(out), "--no-progress",
        "--threads-per-worker", "1",
    )  # fmt: skip
    assert rc == 5, err
    assert f"skipped {len(before)}" in stdout
    recs = lines(results)
    ok = [r["id"] for r in recs if not r.get("error")]
    assert sorted(ok) == sorted(batch_input["good"])  # nothing lost, nothing twice


def lines_tolerant(path: Path) -> list[dict]:
    out = []
    for t in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(t))
    return out


def test_missing_weights_on_a_node_fail_early_naming_it(cluster, batch_input, monkeypatch):
    monkeypatch.delenv("HYBRIDGL_RANDOM_WEIGHTS")
    out = cluster["tmp"].mktemp("b-weights")
    rc, _, err = run_cli(
        "batch", str(batch_input["path"]), "--out", str(out), "--no-progress",
        "--engine", "ray", "--workers", "1", "--sam", "vit_b",
    )  # fmt: skip
    assert rc == 4, err
    # the usual missing-weights message (every missing file), prefixed with the node
    first = [t for t in err.splitlines() if "hybridgl: error" in t]
    assert len(first) == 1 and first[0].startswith("hybridgl: error: on node ")
    assert "clip_vit_b16_openai" in err and "sam_vit_b" in err and "Traceback" not in err
    assert not [r for r in lines(out / "results.jsonl") if not r.get("error")]
