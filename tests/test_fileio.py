"""hybridgl.fileio: the one atomic-write helper."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from hybridgl import fileio
from hybridgl.fileio import (
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_replace_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    assert atomic_write_bytes(target, b"one") == target
    atomic_write_bytes(str(target), b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "h\u00e9\n")
    assert (tmp_path / "t.txt").read_bytes() == "h\u00e9\n".encode()
    atomic_write_json(tmp_path / "d.json", {"a": [1, 2.5, None]})
    assert json.loads((tmp_path / "d.json").read_text()) == {"a": [1, 2.5, None]}
    assert (tmp_path / "d.json").read_text().endswith("}\n")
    assert _names(tmp_path) == ["d.json", "out.bin", "t.txt"]


def test_creates_parent_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    atomic_write_text(target, "x")
    assert target.read_text() == "x"


def test_new_files_get_ordinary_permissions(tmp_path: Path) -> None:
    # mkstemp creates 0600 files; a mask or a JSON report must be as readable as one
    # written with open(): 0666 minus the umask (the old copies left 0600)
    old = os.umask(0o022)
    try:
        fileio._umask = None  # read it afresh under the umask set here
        atomic_write_bytes(tmp_path / "a.png", b"x")
        with atomic_path(tmp_path / "b.npy") as tmp:
            np.save(tmp, np.zeros(2))
    finally:
        os.umask(old)
        fileio._umask = None
    for name in ("a.png", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_json_refuses_nan_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"score": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _names(tmp_path) == ["r.json"]


def test_atomic_path_keeps_suffix_for_format_sniffing_writers(tmp_path: Path) -> None:
    target = tmp_path / "masks.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".")
        np.save(tmp, np.arange(3))  # np.save would append .npy to any other name
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert _names(tmp_path) == ["masks.npy"]


def test_atomic_path_error_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["out.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_errors_name_the_target_not_the_temp_file(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        target = folder / "out.json"
        for write in (
            lambda: atomic_write_bytes(target, b"x"),
            lambda: atomic_write_json(target, {}),
        ):
            with pytest.raises(PermissionError) as info:
                write()
            assert str(target) in str(info.value)
            assert ".tmp" not in str(info.value)
        with pytest.raises(PermissionError) as info, atomic_path(target):
            pass
        assert str(target) in str(info.value) and ".tmp" not in str(info.value)
    finally:
        folder.chmod(0o700)


def test_rename_error_names_the_target_and_leaves_no_temp(tmp_path: Path) -> None:
    # os.replace onto a folder fails with both names in the message; the caller must see
    # only the file it asked for, never the hidden temporary name
    target = tmp_path / "out.json"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_json(target, {"a": 1})
    assert str(target) in str(info.value)
    assert ".tmp" not in str(info.value)
    assert _names(tmp_path) == ["out.json"]


def test_atomic_path_rewords_writer_errors_on_the_temp_only(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    class Mine(FileNotFoundError):
        pass

    with pytest.raises(Mine), atomic_path(target):
        raise Mine("the caller's own error passes unchanged")
    with pytest.raises(OSError) as info, atomic_path(target) as tmp:
        raise OSError(28, "No space left on device", str(tmp))
    assert info.value.errno == 28 and str(target) in str(info.value)
    assert ".tmp" not in str(info.value)
    assert _names(tmp_path) == []


def test_atomic_dir_fills_then_renames_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "snapshot"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        assert not target.exists()  # nothing under the final name while filling
        (tmp / "a.json").write_text("1")
    assert _names(target) == ["a.json"] and _names(tmp_path) == ["snapshot"]
    with atomic_dir(target) as tmp:
        (tmp / "b.json").write_text("2")
    assert _names(target) == ["b.json"] and _names(tmp_path) == ["snapshot"]


def test_atomic_dir_error_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "snapshot"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ConnectionError), atomic_dir(target) as tmp:
        (tmp / "half").write_text("x")
        raise ConnectionError("network down")
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["snapshot"]
