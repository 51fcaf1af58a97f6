"""Smoke test of benchmarks/video_bench.py: tiny random models, 3- and 6-frame clips; checks
the structure of results.json and results.md (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_writes_results(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", os.environ.get("HYBRIDGL_RANDOM_WEIGHTS", ""))
    spec = importlib.util.spec_from_file_location(
        "video_bench", REPO / "benchmarks" / "video_bench.py"
    )
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["trackers"]) == {
        f"{n} {d}" for n in ("sam2.1_hiera_tiny", "edgetam") for d in ("fp32", "bf16")
    }
    for t in report["trackers"].values():
        assert t["frames_per_second"] > 0 and t["ratio_to_image_method"] > 0
    assert "load_average" in report["machine"] and "cpu_flags" in report["machine"]
    runs = report["memory"]["sam2.1_hiera_tiny"]
    assert [r["frames"] for r in runs] == [3, 6]
    assert all(r["memory_frames"] <= r["memory_limit"] for r in runs)
    assert report["reground"]["reground_seconds"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| edgetam | bf16 |" in md and "peak RSS" in md and "load average" in md
