"""The Ray engine: work units on a pool of Ray actors, one segmenter each.

Needs the optional extra (``pip install "hybridgl[ray]"``); imported only when
``--engine ray`` is asked for, never by ``import hybridgl``.

Data flow: the driver turns the units (one image with its rows) into a Ray Dataset of one
JSON row per unit; ``map_batches`` with a callable class (:class:`RayUnitWorker`) and
``compute=ray.data.ActorPoolStrategy(size=workers)`` runs them, each actor holding one
:class:`~hybridgl.segmenter.Segmenter` built once; the records of each unit stream back to
the driver (``iter_rows``), where the same sink as the local engine writes them with the
one resumable writer. Ray Data restarts an actor that dies (``max_restarts=-1``) and
retries its unfinished units (``max_task_retries=-1``); the sink writes a unit that
arrives twice only once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from hybridgl.errors import MissingExtraError, UsageError, WeightsError
from hybridgl.jobs.engine_options import EngineOptions, Sink
from hybridgl.jobs.records import dumps
from hybridgl.jobs.units import Task, UnitWorker, WorkUnit, build_from_spec
from hybridgl.spec import ModelSpec

__all__ = ["RayUnitWorker", "import_ray", "run_ray"]

log = logging.getLogger("hybridgl.jobs")


def import_ray() -> Any:
    """``import ray`` (with Ray Data), or the one-line error naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("--engine ray", "ray", detail=str(e)) from None
    return ray


def _node_name() -> str:
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


class RayUnitWorker:
    """The callable class of ``map_batches``: one segmenter per actor, built at start.

    Building at start makes a node without weights fail early, with the usual one-line
    error naming the node.
    """

    def __init__(self, task: Task, spec: ModelSpec) -> None:
        spec.apply_env()
        self.worker = UnitWorker(task, partial(build_from_spec, spec))
        try:
            self.worker.ensure_segmenter()
        except WeightsError as e:
            raise WeightsError(f"on node {_node_name()}: {e}") from None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        keys: list[str] = []
        outs: list[str] = []
        built: list[str] = []
        for text in batch["unit"]:
            unit = WorkUnit.from_json(json.loads(str(text)))
            records = self.worker.process(unit)
            keys.append(unit.key)
            outs.append("[" + ",".join(dumps(r) for r in records) + "]")
            built.append(json.dumps(self.worker.built()))
        return {
            "key": np.array(keys, dtype=object),
            "records": np.array(outs, dtype=object),
            "built": np.array(built, dtype=object),
        }


def _check_weights_on_nodes(ray: Any, spec: ModelSpec) -> None:
    """Resolve the checkpoints on every alive node before any work (one task per node)."""
    if not spec.checkpoints():
        return  # random weights: nothing to find
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def check(s: ModelSpec) -> str | None:
        try:
            s.check_weights()
        except WeightsError as e:
            return f"on node {_node_name()}: {e}"
        return None

    refs = [
        check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(spec)
        for node in ray.nodes()
        if node.get("Alive")
    ]
    problems = [p for p in ray.get(refs) if p]
    if problems:
        raise WeightsError("\n\n".join(problems))


#: Seconds to wait for a TCP connection to ``--ray-address`` before giving up.
RAY_CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail at once, in one line, when nothing listens at a ``host:port`` Ray address
    (``ray.init`` itself would wait without bound). ``auto`` and addresses without a port
    are left to Ray.

    Raises:
        InputError: the host does not resolve or refuses / does not answer within
            ``timeout`` seconds, or what answers there does not speak gRPC (HTTP/2), as a
            web server or another service on that port would not (CLI exit 3).
    """
    from hybridgl.errors import InputError

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    host = host.strip("[]")
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise InputError(
            f"--ray-address {address}: cannot reach a Ray cluster there ({reason} within "
            f"{timeout:g} s); start it (`ray start --head`) or fix the address"
        ) from None
    with conn:
        try:
            speaks_grpc = _answers_http2(conn)
        except OSError:
            speaks_grpc = False
    if not speaks_grpc:
        raise InputError(
            f"--ray-address {address}: something listens there but it is not a Ray cluster "
            f"(no gRPC answer within {timeout:g} s); give the head node's GCS address "
            "(`ray start --head` prints it)"
        )


#: The HTTP/2 client preface followed by an empty SETTINGS frame (RFC 9113, section 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(conn: Any) -> bool:
    """True when the peer answers an HTTP/2 preface with a SETTINGS frame, as the gRPC
    server of Ray's GCS does. A plain TCP or HTTP/1 service answers otherwise or not at
    all, where ``ray.init`` would wait without bound. A timeout raises OSError."""
    conn.sendall(_H2_PREFACE)
    head = b""
    while len(head) < 9:
        chunk = conn.recv(9 - len(head))
        if not chunk:
            return False
        head += chunk
    return head[3] == 4  # frame type 0x4: SETTINGS


def _connect(ray: Any, opts: EngineOptions) -> bool:
    """Join the cluster (``--ray-address``, ``$RAY_ADDRESS``) or start a local one.

    Returns True when this run started Ray (and must shut it down).
    """
    if ray.is_initialized():
        return False
    address = opts.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address:
        check_reachable(address)
        ray.init(address=address, **kwargs)
        return True
    if opts.object_store_memory:
        kwargs["object_store_memory"] = int(opts.object_store_memory)
    ray.init(**kwargs)
    return True


def _plan(ray: Any, opts: EngineOptions, n_units: int, spec: ModelSpec) -> tuple[int, float, int]:
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 1.0))
    gpw = opts.gpus_per_worker
    if gpw is None:
        gpw = 1.0 if gpus > 0 else 0.0
    if gpw > 0 and gpus <= 0:
        raise UsageError(f"--gpus-per-worker {gpw:g}: the Ray cluster has no GPU")
    threads = int(opts.threads_per_worker or spec.threads or 1)  # also the actor's num_cpus
    workers = opts.workers
    if workers is None:
        workers = int(gpus // gpw) if gpw > 0 else max(1, min(2, int(cpus // threads)))
    workers = max(1, min(int(workers), max(n_units, 1)))
    return workers, float(gpw), threads


def run_ray(
    units: list[WorkUnit],
    task: Task,
    sink: Sink,
    spec: ModelSpec,
    opts: EngineOptions,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the units on Ray actors; records stream back and go to ``sink`` in this process."""
    ray = import_ray()
    started = _connect(ray, opts)
    try:
        facts = _run(ray, units, task, sink, spec, opts, on_start)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the Ray workers")
        raise
    finally:
        if started:
            ray.shutdown()  # a local cluster started here leaves no processes behind
    return facts


def _run(
    ray: Any,
    units: list[WorkUnit],
    task: Task,
    sink: Sink,
    spec: ModelSpec,
    opts: EngineOptions,
    on_start: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    workers, gpw, threads = _plan(ray, opts, len(units), spec)
    if spec.threads is None:
        spec = dataclasses.replace(spec, threads=threads)
    facts: dict[str, Any] = {
        "engine": "ray",
        "workers": workers,
        "gpus_per_worker": gpw,
        "threads_per_worker": threads,
        "units": len(units),
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
    }
    if on_start is not None:
        on_start(facts)
    if not units:
        return facts
    _check_weights_on_nodes(ray, spec)

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own bar reports progress
    ctx.execution_options.preserve_order = False  # stream results as they finish
    ctx.execution_options.verbose_progress = False
    by_key = {u.key: u for u in units}
    ds = ray.data.from_items(
        [{"unit": json.dumps(u.to_json())} for u in units], override_num_blocks=len(units)
    )
    resources: dict[str, Any] = {"num_cpus": threads}
    if gpw > 0:
        resources["num_gpus"] = gpw
    out = ds.map_batches(
        RayUnitWorker,
        fn_constructor_args=(task, spec),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        **resources,
    )
    built: list[Any] = []
    for row in out.iter_rows():
        unit = by_key[str(row["key"])]
        sink(unit, json.loads(str(row["records"])))
        facts_of_worker = json.loads(str(row["built"]))
        if facts_of_worker is not None and facts_of_worker not in built:
            built.append(facts_of_worker)
    facts["built"] = built
    return facts
