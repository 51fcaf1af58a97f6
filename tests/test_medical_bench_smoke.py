"""Smoke test of benchmarks/medical.py: tiny models, a 48 x 48 x 4 synthetic CT; checks the
report's structure and table (no timings are asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("pydicom", reason='needs the medical extra: pip install "hybridgl[medical]"')
pytest.importorskip("psutil", reason="the benchmark samples memory with psutil (hybridgl[dev])")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_writes_its_report(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "medical_bench", REPO / "benchmarks" / "medical.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    before = os.environ.get("HYBRIDGL_RANDOM_WEIGHTS")
    assert (
        mod.main(["--smoke", "--points-per-side", "2", "--device", "cpu", "--out", str(tmp_path)])
        == 0
    )
    assert os.environ.get("HYBRIDGL_RANDOM_WEIGHTS") == before
    report = json.loads((tmp_path / "medical.json").read_text())
    assert report["smoke"] is True and [r["volume"][2] for r in report["runs"]] == [2, 4]
    assert report["model"]["sam"] == "slimsam_77" and "cpu_flags" in report["machine"]
    printed = capsys.readouterr().out
    assert "load average" in printed and "s/slice mean" in printed
    assert "48 x 48 x 4" in printed
    for run in report["runs"]:
        assert run["volume"][:2] == [48, 48] and run["visited_slices"] >= 1
        assert set(run["seconds_per_slice"]) == {"mean", "median", "max"}
        assert isinstance(run["rss_growth_beyond_labels_mb"], float)
    vol = mod.synthetic_ct(32, 10)
    assert vol.shape == (32, 32, 10) and float(vol.data.min()) == -1000.0
