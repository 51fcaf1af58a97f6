"""Throughput of the bulk-job engines on one workload: local vs Ray (issue 11).

Usage (from the repository root, with the project's environment and the ray extra):

    python benchmarks/ray_throughput.py --out bench-ray            # the three configurations
    python benchmarks/ray_throughput.py --images 12 --tiny         # smoke run (tiny models)

Runs, in one process and on the same work units (coco-mini images, their COCO masks as
proposals, three expressions each, i.e. the ``--proposals gt`` setting of ``evaluate``):

1. the local engine with 2 torch threads;
2. Ray with 1 worker x 2 threads;
3. Ray with 2 workers x 1 thread.

Models are built with random weights (``HYBRIDGL_RANDOM_WEIGHTS=full``: full-size CLIP
ViT-B/16; compute does not depend on weight values) unless ``--tiny``. For each
configuration it reports the wall time end to end (model loading and Ray actor start
included), the steady-state rate (images/minute between the first and the last image to
arrive at the driver) and, for Ray, the overhead per image against the local engine at the
same total threads. Writes ``DIR/ray_throughput.json`` and ``.md`` with hybridgl.fileio and
prints the Markdown. A benchmark, not a test: absolute numbers hold only for the machine
(and its load, recorded) that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco-mini"
EXPRESSIONS = ("the person on the left", "a small object near the middle", "the biggest thing")


def build_workload(n_images: int, work: Path) -> Path:
    """A batch input of ``n_images`` coco-mini images with their COCO masks as proposals."""
    import numpy as np

    from hybridgl.eval.annotations import annotation_to_mask

    ann = json.loads((COCO / "annotations" / "instances_val2017.json").read_text())
    by_image: dict[int, list] = {}
    for a in ann["annotations"]:
        if not a.get("iscrowd"):
            by_image.setdefault(a["image_id"], []).append(a)
    rows = []
    work.mkdir(parents=True, exist_ok=True)
    for im in sorted(ann["images"], key=lambda x: x["id"]):
        anns = by_image.get(im["id"], [])
        path = COCO / "val2017" / im["file_name"]
        if len(anns) < 3 or not path.is_file():
            continue
        masks = np.stack([annotation_to_mask(a, im["height"], im["width"]) for a in anns[:12]])
        npy = work / f"{path.stem}.npy"
        np.save(npy, masks)
        for k, text in enumerate(EXPRESSIONS):
            rows.append({"image": str(path), "expression": text, "proposals": str(npy),
                         "id": f"{path.stem}-{k}"})  # fmt: skip
        if len(rows) >= n_images * len(EXPRESSIONS):
            break
    out = work / "rows.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run_config(name: str, units: list, engine: str, workers: int, threads: int) -> dict[str, Any]:
    from hybridgl.jobs.batch import BatchTask
    from hybridgl.jobs.engine import EngineOptions, run_units
    from hybridgl.spec import ModelSpec

    arrivals: list[float] = []
    failed = 0

    def sink(unit: Any, records: list[dict]) -> None:
        nonlocal failed
        arrivals.append(time.perf_counter())
        failed += sum(1 for r in records if r.get("error"))

    spec = ModelSpec(
        sam=None,
        device="cpu",
        threads=threads,
        env=(("HYBRIDGL_RANDOM_WEIGHTS", os.environ["HYBRIDGL_RANDOM_WEIGHTS"]),),
    )
    opts = EngineOptions(
        engine=engine,
        workers=workers if engine == "ray" else None,
        gpus_per_worker=0.0 if engine == "ray" else None,
        threads_per_worker=threads,
    )
    t0 = time.perf_counter()
    run_units(units, BatchTask(polygons=False), sink, spec=spec, options=opts)
    wall = time.perf_counter() - t0
    n = len(arrivals)
    steady = (arrivals[-1] - arrivals[0]) / (n - 1) if n > 1 else None
    return {
        "config": name,
        "engine": engine,
        "workers": workers,
        "threads_per_worker": threads,
        "images": n,
        "rows": sum(len(u.rows) for u in units),
        "failed_rows": failed,
        "wall_s": wall,
        "first_result_s": arrivals[0] - t0 if arrivals else None,
        "steady_s_per_image": steady,
        "steady_images_per_min": 60.0 / steady if steady else None,
        "end_to_end_images_per_min": 60.0 * n / wall if wall else None,
    }


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# Bulk-job engines: local vs Ray",
        "",
        f"- machine: {doc['machine']['cpus']} CPUs, load average {doc['machine']['load_before']} "
        f"before / {doc['machine']['load_after']} after; python {doc['machine']['python']}; "
        f"ray {doc['machine']['ray']}",
        f"- workload: {doc['workload']['images']} coco-mini images, COCO masks as proposals "
        f"(up to 12), {doc['workload']['expressions_per_image']} expressions each; models: "
        f"{doc['workload']['models']}",
        "",
        "| configuration | images | wall (s) | first result (s) | steady s/image | steady images/min "
        "| end-to-end images/min | overhead per image vs local |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = doc["results"][0]["steady_s_per_image"]
    for r in doc["results"]:
        over = "-"
        if r["engine"] == "ray" and base and r["steady_s_per_image"]:
            d = r["steady_s_per_image"] - base
            over = f"{d:+.3f} s ({100 * d / base:+.1f}%)"
        lines.append(
            f"| {r['config']} | {r['images']} | {r['wall_s']:.1f} | {r['first_result_s']:.1f} | "
            f"{r['steady_s_per_image']:.3f} | {r['steady_images_per_min']:.1f} | "
            f"{r['end_to_end_images_per_min']:.1f} | {over} |"
        )
    o = doc.get("overhead")
    if o:
        lines += [
            "",
            f"Ray's own cost per image, measured with a task that does no model work "
            f"({o['units']} units, 2 workers): {1000 * o['s_per_unit']:.1f} ms per unit "
            f"(dispatch, transfer of the unit and its records, the driver's sink), "
            f"{o['first_result_s']:.1f} s until the first result (actor start).",
        ]
    lines += [
        "",
        "Steady = between the first and the last image to reach the driver (model loading and "
        "actor start excluded); end to end includes them. Overhead = Ray's steady time per "
        "image minus the local engine's, at the same total threads (2).",
    ]
    return "\n".join(lines) + "\n"


CONFIGS = {
    "local": ("local, 2 threads", "local", 1, 2),
    "ray1x2": ("Ray, 1 worker x 2 threads", "ray", 1, 2),
    "ray2x1": ("Ray, 2 workers x 1 thread", "ray", 2, 1),
}


class NoopTask:
    """A task that does no model work: what is left is the engine's own cost per unit."""

    def run(self, worker: Any, unit: Any) -> list[dict[str, Any]]:
        return [{"id": r["id"], "expression": r["expression"]} for r in unit.rows]

    def failed(self, unit: Any, error: BaseException) -> list[dict[str, Any]]:
        return [{"id": r["id"], "error": str(error)} for r in unit.rows]


def engine_overhead(n_units: int = 200) -> dict[str, Any]:
    """Ray's per-unit cost with a no-op task (2 workers, tiny models built once per actor)."""
    import ray

    from hybridgl.jobs.engine import EngineOptions, run_units
    from hybridgl.jobs.units import WorkUnit
    from hybridgl.spec import ModelSpec

    units = [
        WorkUnit(key=f"u{k}", rows=[{"id": f"r{k}", "expression": "x"}], data={})
        for k in range(n_units)
    ]
    arrivals: list[float] = []
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        spec = ModelSpec(sam=None, device="cpu", env=(("HYBRIDGL_RANDOM_WEIGHTS", "tiny"),))
        opts = EngineOptions(engine="ray", workers=2, gpus_per_worker=0.0, threads_per_worker=1)
        t0 = time.perf_counter()
        run_units(
            units, NoopTask(), lambda u, r: arrivals.append(time.perf_counter()),
            spec=spec, options=opts,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    per_unit = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    return {"config": "Ray no-op task, 2 workers", "units": n_units, "wall_s": wall,
            "first_result_s": arrivals[0] - t0, "s_per_unit": per_unit}  # fmt: skip


def child(config: str, rows_path: Path) -> dict[str, Any]:
    """One configuration in this (fresh) process."""
    from hybridgl.jobs.batch import make_units
    from hybridgl.jobs.batch_rows import read_rows

    name, engine, workers, threads = CONFIGS[config]
    rows, _, _ = read_rows(rows_path, [])
    units = make_units(rows)
    if engine == "local":
        return run_config(name, units, engine, workers, threads)
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        return run_config(name, units, engine, workers, threads)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", default="bench-ray", help="output folder")
    ap.add_argument("--images", type=int, default=8, help="images in the workload (default 8)")
    ap.add_argument("--tiny", action="store_true", help="tiny models (a smoke run)")
    ap.add_argument("--child", choices=[*sorted(CONFIGS), "overhead"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny" if args.tiny else "full"
    out = Path(args.out)
    rows_path = out / "work" / "rows.jsonl"
    if args.child == "overhead":
        (out / "overhead.json").write_text(json.dumps(engine_overhead()))
        return 0
    if args.child:
        result = child(args.child, rows_path)
        (out / f"{args.child}.json").write_text(json.dumps(result))
        return 0

    import ray

    from hybridgl.fileio import atomic_write_json, atomic_write_text

    build_workload(args.images, out / "work")
    load_before = os.getloadavg()[0]
    results = []
    for config, (_, _, _, threads) in CONFIGS.items():
        # each configuration in its own process; BLAS/OpenMP threads capped like Ray's
        # workers cap theirs (OMP_NUM_THREADS = num_cpus), so every thread count is honest
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "OPENBLAS_NUM_THREADS": str(threads)}  # fmt: skip
        cmd = [sys.executable, __file__, "--out", str(out), "--child", config]
        if args.tiny:
            cmd.append("--tiny")
        subprocess.run(cmd, env=env, check=True)
        results.append(json.loads((out / f"{config}.json").read_text()))
    subprocess.run(
        [sys.executable, __file__, "--out", str(out), "--child", "overhead"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    overhead = json.loads((out / "overhead.json").read_text())
    doc = {
        "overhead": overhead,
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "ray": ray.__version__,
        },
        "workload": {
            "images": results[0]["images"],
            "expressions_per_image": len(EXPRESSIONS),
            "models": "tiny random (smoke run)"
            if args.tiny
            else "full-size CLIP ViT-B/16, random weights; no SAM (COCO masks)",
        },
        "results": results,
    }
    atomic_write_json(out / "ray_throughput.json", doc)
    md = render(doc)
    atomic_write_text(out / "ray_throughput.md", md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
