"""A local Ray for the tests that need one, started by the test and shut down in a finally."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def local_ray(tmp_path_factory: pytest.TempPathFactory, num_cpus: int = 8) -> Iterator[str]:
    """Start a local Ray and yield its address; workers inherit the tiny-model settings.

    ``num_cpus`` logical CPUs (more than the machine's 2, so Ray Data's own tasks never
    starve the actors), no dashboard, a small object store. Random tiny weights, offline, a
    private weights cache and no ``RAY_ADDRESS`` while it runs; torch's thread count is
    restored afterwards (the local engine sets it in this process).
    """
    import ray
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
        mp.setenv("HYBRIDGL_OFFLINE", "1")
        mp.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("HYBRIDGL_WEIGHTS_DIR", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
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
            torch.set_num_threads(threads)
