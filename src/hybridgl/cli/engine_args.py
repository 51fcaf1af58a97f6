"""The engine options of the bulk jobs (``batch``, ``evaluate``, ``calibrate``, ``index``,
``track --list``, ``segment-volume --list``): ``--engine local|ray`` and the Ray options,
turned into one :class:`~hybridgl.jobs.engine_options.EngineOptions`."""

from __future__ import annotations

import argparse
from typing import Any

from hybridgl.cli.common import non_negative_float, positive
from hybridgl.cli.options import check_runtime, spec_from_args
from hybridgl.errors import UsageError


def add_engine_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--engine local|ray`` and the Ray options of the bulk jobs (``batch``, ``evaluate``)."""
    group = parser.add_argument_group(
        "engine", 'where the work runs (Ray needs the extra: pip install "hybridgl[ray]")'
    )
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a pool of Ray actors, one model each",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for the run)",
    )
    group.add_argument(
        "--workers",
        type=positive(int),
        default=None,
        metavar="N",
        help="Ray workers (actors), each holding one model (default: one per GPU, else 2)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=non_negative_float,
        default=None,
        metavar="G",
        help="GPUs per Ray worker, fractions allowed (default: 1 when the cluster has GPUs, else 0)",
    )
    group.add_argument(
        "--threads-per-worker",
        type=positive(int),
        default=None,
        metavar="T",
        help="torch CPU threads per Ray worker, also its Ray num_cpus (default 1, or "
        "--threads); with --engine local the same as --threads",
    )
    return group


def engine_options(args: argparse.Namespace) -> Any:
    """:class:`hybridgl.jobs.engine.EngineOptions` from :func:`add_engine_args`' options.

    Raises:
        UsageError: Ray options with ``--engine local``.
    """
    from hybridgl.jobs.engine import EngineOptions

    engine = getattr(args, "engine", "local") or "local"
    if engine == "local":
        given = [
            opt
            for opt, attr in (
                ("--ray-address", "ray_address"),
                ("--workers", "workers"),
                ("--gpus-per-worker", "gpus_per_worker"),
            )
            if getattr(args, attr, None) is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} need --engine ray")
        # locally, the one worker is this process: --threads-per-worker is --threads
        if getattr(args, "threads_per_worker", None) and not getattr(args, "threads", None):
            args.threads = args.threads_per_worker
    return EngineOptions(
        engine=engine,
        ray_address=getattr(args, "ray_address", None),
        workers=getattr(args, "workers", None),
        gpus_per_worker=getattr(args, "gpus_per_worker", None),
        threads_per_worker=getattr(args, "threads_per_worker", None),
    )


def job_spec(args: argparse.Namespace, engine: Any) -> Any:
    """A bulk job's :class:`~hybridgl.spec.ModelSpec`: the model options, with
    ``--threads-per-worker`` as the thread count when the options set none, checked
    against this runtime (:func:`~hybridgl.cli.options.check_runtime`).

    ``engine``: :func:`engine_options` of the same arguments.
    """
    spec = spec_from_args(args)
    if engine.threads_per_worker and spec.threads is None:
        spec = spec.with_options(threads=engine.threads_per_worker)
    check_runtime(spec)
    return spec
