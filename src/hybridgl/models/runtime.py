"""Where and how the models run: the device, precision (``dtype="auto"``) and CPU threads.

The device: :func:`pick_device` (None picks cuda, then mps, then cpu). The dtype table:
:data:`DTYPES` and :func:`resolve_dtype`.

``auto`` picks the fastest precision the hardware runs natively:

- CUDA: bfloat16 where the device supports it (compute capability 8.0 and later),
  float16 on older CUDA devices;
- CPU: bfloat16 when the CPU has native bf16 instructions (the ``avx512_bf16`` or
  ``amx_bf16`` flags of ``/proc/cpuinfo``, or an AMX capability reported by torch),
  float32 otherwise (emulated bf16 is many times slower than float32 there);
- anything else (MPS): float32.

Threads: :func:`configure_threads` is the one place the CLI, the server worker and Ray
workers set ``torch.set_num_threads`` (see its docstring for the rule).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES: dict[str | None, torch.dtype | None] = {
    None: None,
    "fp32": None,
    "float32": None,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
"""Accepted dtype names -> autocast dtype (None: no autocast, float32)."""

DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")

THREADS_ENV = "HYBRIDGL_NUM_THREADS"

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16)."""
    if any(f in cpu_flags() for f in _BF16_FLAGS):
        return True
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return False
    return "AMX" in capability.upper()


def auto_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype ``auto`` means on ``device`` (None: float32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device | str
) -> torch.dtype | None:
    """A dtype argument (``None``, ``"auto"``, ``"fp32"``, ``"bf16"``, ``torch.float16``...)
    -> the autocast dtype, None for float32. ``auto`` logs what it chose and why."""
    if isinstance(dtype, torch.dtype):
        return None if dtype == torch.float32 else dtype
    if dtype == "auto":
        chosen = auto_dtype(device)
        dev = torch.device(device)
        why = (
            "CUDA bf16 support"
            if dev.type == "cuda" and chosen == torch.bfloat16
            else "CUDA without bf16"
            if dev.type == "cuda"
            else "native bf16 instructions"
            if chosen == torch.bfloat16
            else "no native bf16 on this device"
        )
        log.info("dtype auto on %s: %s (%s)", dev, dtype_name(chosen), why)
        return chosen
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    return DTYPES[dtype]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`; None picks cuda, then mps, then cpu."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and Ray set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """``$HYBRIDGL_NUM_THREADS``, else ``$OMP_NUM_THREADS`` (Ray sets it to a task's
    ``num_cpus``), else every CPU this process may use."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                log.warning("ignoring %s=%r: not an integer", name, value)
                continue
            if n >= 1:
                return n
    return available_cpus()


def configure_threads(threads: int | None = None) -> int:
    """Set ``torch.set_num_threads`` for a process that runs the models; return the count.

    Rule: an explicit ``threads`` (``--threads``), else :func:`default_num_threads`. One
    process per machine (CLI, a single server worker) uses every allowed CPU; a process
    that shares the machine with others of its kind (several server workers, Ray workers)
    should get its share, which Ray does by setting ``OMP_NUM_THREADS`` to the task's
    ``num_cpus`` and the caller does by passing ``threads``. Interop threads are left alone
    (torch allows setting them only before the first parallel work).
    """
    n = int(threads) if threads is not None else default_num_threads()
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch threads: %d", n)
    return n
