"""One local Ray for the whole test session, started by the first test that asks for it and
shut down in a finally at the session's end.

The tests that need Ray take the ``ray_cluster`` fixture (tests/conftest.py), which gives
the address and sets this process's environment for the test; conftest also runs those
tests last and back to back, so that Ray is started once and no other test runs beside
its idle processes. Starting a Ray costs seconds and each engine run starts its own actors
anyway: one cluster for every Ray test checks the same plumbing as one per module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

#: the fixture's name; tests that take it run last (conftest.pytest_collection_modifyitems)
FIXTURE = "ray_cluster"


@contextlib.contextmanager
def start_local_ray(cache: Path, num_cpus: int = 8) -> Iterator[str]:
    """Start a local Ray and yield its address; its workers get the tiny-model settings.

    ``num_cpus`` logical CPUs (more than the machine's 2, so Ray Data's own tasks never
    starve the actors), no dashboard, a small object store. The workers inherit the
    environment Ray starts with: random tiny weights, offline, a private weights cache and
    no ``RAY_ADDRESS`` or weights folder. This process's environment is set only while Ray
    starts (each test sets its own through the fixture).
    """
    import ray

    with pytest.MonkeyPatch.context() as mp:
        set_env_for_workers(mp, cache)
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=80 * 1024**2,
            log_to_driver=False,
            logging_level="WARNING",
        )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def set_env_for_workers(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """Set (through ``mp``) the settings a test on Ray runs with: random tiny weights,
    offline, the private weights cache, no weights folder and no ``RAY_ADDRESS``."""
    mp.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    mp.setenv("HYBRIDGL_OFFLINE", "1")
    mp.setenv("HYBRIDGL_CACHE_DIR", str(cache))
    mp.delenv("HYBRIDGL_WEIGHTS_DIR", raising=False)
    mp.delenv("RAY_ADDRESS", raising=False)
