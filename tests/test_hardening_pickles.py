"""REFER refs pickles that would exhaust memory or time (issue 17, second round).

The restricted unpickler already refuses code; these files use only the allowed builtins
and still attack: shared references describing a tree of 2**60 values in a few hundred
bytes, ``bytearray(n)`` / ``bytes(n)`` allocating what the file says, nesting 100,000
deep. Each is refused with one line naming the file (exit 3), before the memory is taken.
"""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import pytest

import hybridgl.eval.pickles as pickles
from hybridgl.cli.common import exit_code_for
from hybridgl.errors import DataError
from hybridgl.eval.pickles import PickleLimitError, load_refs_pickle


def _ref(sentences: object) -> dict:
    return {"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "sentences": sentences}


def _refused(tmp_path: Path, blob: bytes, match: str) -> PickleLimitError:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(blob)
    t0 = time.perf_counter()
    with pytest.raises(PickleLimitError, match=match) as e:
        load_refs_pickle(path)
    assert time.perf_counter() - t0 < 5.0
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    assert exit_code_for(e.value) == 3
    return e.value


def test_shared_references_are_counted_as_the_tree_they_describe(tmp_path: Path) -> None:
    x: list = [{"sent_id": 1, "raw": "the dog"}]
    for _ in range(60):
        x = [x, x]  # 2**60 sentences once expanded; a few hundred bytes as a pickle
    blob = pickle.dumps([_ref(x)], protocol=2)
    assert len(blob) < 1000
    _refused(tmp_path, blob, "values once its shared references are expanded")


def test_a_shared_ref_within_the_limits_is_read_once(tmp_path: Path) -> None:
    """Sharing itself is fine (Python 2 pickles share strings): normalised as a DAG."""
    sent = {"sent_id": 7, "raw": "the cat"}
    shared = [sent, sent]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_ref(shared), _ref(shared)], protocol=2))
    refs, problem = load_refs_pickle(path)
    assert problem is None and len(refs) == 2
    memo: dict = {}
    a, b = (pickles._norm(r, memo) for r in refs)
    assert a["sentences"] is b["sentences"] and a["sentences"][0]["raw"] == "the cat"


@pytest.mark.parametrize("kind", [b"bytearray", b"bytes"])
def test_sized_bytes_constructors_are_refused(tmp_path: Path, kind: bytes) -> None:
    n = 1 << 28  # 256 MB from a 30-byte file
    blob = b"\x80\x02cbuiltins\n" + kind + b"\nJ" + struct.pack("<i", n) + b"\x85R."
    _refused(tmp_path, blob, f"{kind.decode()}\\({n}\\) would allocate")


def test_bytes_from_data_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_ref([{"sent_id": 1, "raw": bytearray(b"a dog")}])], 3))
    refs, _ = load_refs_pickle(path)
    assert refs[0]["sentences"][0]["raw"] == bytearray(b"a dog")


def test_deep_nesting_is_refused_without_recursion(tmp_path: Path) -> None:
    depth = 100_000
    blob = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    _refused(tmp_path, blob, f"nested more than {pickles.MAX_REFS_DEPTH} levels")


def test_a_reference_cycle_is_refused(tmp_path: Path) -> None:
    loop: list = []
    loop.append(loop)
    _refused(tmp_path, pickle.dumps([_ref(loop)], protocol=2), "contains itself")


def test_operation_and_file_size_limits(tmp_path: Path, monkeypatch) -> None:
    blob = pickle.dumps([_ref([{"sent_id": i, "raw": "x"} for i in range(50)])], protocol=2)
    monkeypatch.setattr(pickles, "MAX_PICKLE_OPS", 100)
    _refused(tmp_path, blob, "more than 100 pickle operations")
    monkeypatch.setattr(pickles, "MAX_PICKLE_OPS", 10_000)
    monkeypatch.setattr(pickles, "MAX_REFS_PICKLE_BYTES", 100)
    err = _refused(tmp_path, blob, "the limit is 100")
    assert isinstance(err, DataError)
