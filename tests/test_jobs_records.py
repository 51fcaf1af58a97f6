"""The one resumable JSONL file of batch and evaluate (``hybridgl.jobs.records``), no model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridgl.jobs.records import RecordWriter, read_records


def key(rec: dict) -> str | None:
    return str(rec["id"]) if "id" in rec else None


def test_truncated_last_line_is_ignored_then_cut_before_appending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.jsonl"
    lines = [json.dumps({"id": k, "error": None if k != 1 else "boom"}) for k in range(3)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:7])
    log = read_records(path, key)
    assert [r["id"] for r in log.records] == [0, 1, 2]
    assert log.broken == 1
    assert "dropped 1 incomplete" in caplog.text
    # resume rule: failed ids are done unless retried
    assert log.todo(["0", "1", "2", "3"]) == ["3"]
    assert log.todo(["0", "1", "2", "3"], retry_failed=True) == ["1", "3"]
    with RecordWriter(path) as w:
        w.write({"id": 1, "error": None})
    assert path.read_text() == "\n".join(lines) + "\n" + json.dumps({"id": 1, "error": None}) + "\n"
    log = read_records(path, key)
    assert log.broken == 0
    # last record wins
    assert log.last["1"] == {"id": 1, "error": None}
    assert [r["id"] for r in log.current()] == [0, 2, 1]
    assert log.todo(["0", "1", "2"], retry_failed=True) == []


def test_a_file_that_is_one_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a", "sco')
    assert read_records(path, key).records == []
    with RecordWriter(path) as w:
        w.write({"id": "a"})
    assert path.read_text() == '{"id": "a"}\n'
    assert read_records(tmp_path / "missing.jsonl", key).records == []


def test_importing_the_jobs_package_imports_no_ray_or_models() -> None:
    code = (
        "import sys, hybridgl, hybridgl.jobs, hybridgl.jobs.engine, hybridgl.jobs.records, "
        "hybridgl.jobs.units; bad = [m for m in ('ray', 'torch', 'hybridgl.segmenter') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_engine_ray_without_the_extra_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridgl.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"image": "a.jpg", "expression": "a cat"}) + "\n")
    rc = main(["batch", str(rows), "--out", str(tmp_path / "out"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [t for t in err.splitlines() if "error" in t]
    assert len(lines) == 1 and 'pip install "hybridgl[ray]"' in lines[0]
    assert "Traceback" not in err
