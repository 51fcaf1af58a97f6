"""How a bulk job runs: the engine's name and options, and the sink type (no engine code).

Kept apart from :mod:`hybridgl.jobs.engine` so that the Ray engine, which the local one
dispatches to, and the engine dispatcher both read them without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridgl.jobs.units import WorkUnit

__all__ = ["ENGINES", "EngineOptions", "Sink"]

ENGINES = ("local", "ray")

#: sink(unit, records): write one unit's records (and commit them) in the driver
Sink = Callable[["WorkUnit", list[dict[str, Any]]], None]


@dataclass
class EngineOptions:
    """How to run: the engine and, for Ray, where and with how many workers."""

    engine: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    object_store_memory: int | None = None  # only for a local Ray started by the run
