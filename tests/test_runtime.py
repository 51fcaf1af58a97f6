"""dtype="auto" and the thread default (hybridgl.models.runtime)."""

from __future__ import annotations

import pytest
import torch

from hybridgl.models import runtime


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"avx2", "amx_bf16", "amx_tile"}, torch.bfloat16),
        ({"avx2", "avx512f"}, None),  # emulated bf16 is many times slower than fp32 there
    ],
)
def test_auto_on_cpu_follows_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert runtime.auto_dtype("cpu") is expected
    assert runtime.resolve_dtype("auto", torch.device("cpu")) is expected


def test_auto_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.auto_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.auto_dtype("cuda:0") is torch.float16
    assert runtime.auto_dtype("mps") is None


def test_resolve_dtype_names_and_errors(caplog):
    assert runtime.resolve_dtype(None, "cpu") is None
    assert runtime.resolve_dtype("fp32", "cpu") is None
    assert runtime.resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert runtime.resolve_dtype(torch.float16, "cpu") is torch.float16
    assert runtime.resolve_dtype(torch.float32, "cpu") is None
    with pytest.raises(ValueError, match="auto"):
        runtime.resolve_dtype("fp64", "cpu")
    with caplog.at_level("INFO", logger="hybridgl.models.runtime"):
        runtime.resolve_dtype("auto", "cpu")
    assert "dtype auto on cpu" in caplog.text  # the choice is logged


def test_this_cpu_flags_are_read():
    flags = runtime.cpu_flags()
    assert isinstance(flags, frozenset)
    assert runtime.cpu_has_native_bf16() == (
        bool({"avx512_bf16", "amx_bf16"} & flags)
        or "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()
    )


def test_thread_default_and_configure(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert runtime.default_num_threads() == runtime.available_cpus()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for a 1-CPU task
        assert runtime.default_num_threads() == 1
        monkeypatch.setenv(runtime.THREADS_ENV, "3")  # ours wins over OMP's
        assert runtime.default_num_threads() == 3
        monkeypatch.setenv(runtime.THREADS_ENV, "lots")  # ignored with a warning
        assert runtime.default_num_threads() == 1
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError):
            runtime.configure_threads(0)
    finally:
        torch.set_num_threads(before)
