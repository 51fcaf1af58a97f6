"""Speed and memory of HybridGL: per stage, against the reference implementation's schedule,
and per proposal backend, precision and peer pipeline.

Usage (from the repository root, with the project's environment active):

    python benchmarks/run.py                       # schedule suite: SAM ViT-H and ViT-B, fp32 and bf16
    python benchmarks/run.py --quick               # ViT-B only, 1 image, small workload
    python benchmarks/run.py --sam vit_h --dtype fp32 --images 4 --objects 3 --expressions 3
    python benchmarks/run.py --suite backends      # proposal backends, dtypes, peers (issue 13)
    python benchmarks/run.py --suite backends --items hybridgl:slimsam_77:bf16:4,micro

Models are built with random weights (``HYBRIDGL_RANDOM_WEIGHTS=full``, full-size SAM and
CLIP ViT-B/16) unless ``--weights real``: compute does not depend on weight values, so the
timings hold for the released checkpoints, the choices do not. ``--tiny`` uses the tiny test
models instead (a smoke test of this script, not a benchmark).

Every configuration runs in its own subprocess, so that its peak resident memory and its
count of loaded CLIP models are its own. Ratios are measured side by side in one run;
absolute times only hold on the machine that made them.

The code: ``hybridgl_bench/workload.py`` (images and expressions), ``measure.py`` (stage
times through the Segmenter's public stages, our schedule), ``reference.py`` (the reference
schedule), ``backends.py`` (backends, peers, FLOP/s), ``report.py`` (tables). Writes
``DIR/results.json`` and ``DIR/results.md`` (``backends.json``/``backends.md`` for the
backends suite) with ``hybridgl.fileio`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybridgl_bench.measure import machine_info, run_worker  # noqa: E402
from hybridgl_bench.report import (  # noqa: E402
    check_targets,
    render_backends,
    render_markdown,
    summarise,
)
from hybridgl_bench.stages import count_clip_models  # noqa: E402
from hybridgl_bench.workload import REPO, BenchmarkError, build_workload  # noqa: E402

from hybridgl.cli.common import positive
from hybridgl.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from hybridgl.models.backends import BACKENDS as PROPOSAL_BACKENDS  # noqa: E402

__all__ = ["build_workload", "count_clip_models", "main"]

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_FAILED = 0, 2, 3, 5
DTYPES = ("fp32", "bf16", "fp16")

# The backends suite's default plan: the paper's configuration, the candidates for a fast
# CPU answer, the peers, and the micro-benchmarks (docs/PERFORMANCE.md).
BACKEND_PLANS: dict[str, list[str]] = {
    "default": [
        "micro",
        "agreement:bf16",
        "hybridgl:vit_h:fp32:8",
        "hybridgl:vit_h:bf16:8",
        "hybridgl:vit_b:bf16:8",
        "hybridgl:sam2.1_hiera_tiny:bf16:8",
        "hybridgl:slimsam_77:bf16:8",
        "hybridgl:slimsam_77:bf16:4",
        "gdino_sam:vit_h:bf16",
        "gdino_sam:sam2.1_hiera_large:bf16",
        "clipseg:bf16",
    ],
    "cuda": [
        "micro",
        "agreement:fp16",
        *(f"hybridgl:{s}:{d}:8" for s in ("vit_h", "sam2.1_hiera_large") for d in DTYPES),
        "gdino_sam:vit_h:fp16",
        "gdino_sam:sam2.1_hiera_large:fp16",
        "clipseg:fp16",
    ],
}


def _item(text: str) -> dict[str, Any]:
    parts = text.strip().split(":")
    kind = parts[0]
    try:
        if kind == "hybridgl":
            sam, dtype = parts[1], parts[2]
            pps = int(parts[3]) if len(parts) > 3 else 8
            if sam not in PROPOSAL_BACKENDS or dtype not in DTYPES or pps < 1:
                raise ValueError
            return {"kind": kind, "sam": sam, "dtype": dtype, "pps": pps}
        if kind == "gdino_sam":
            if parts[1] not in PROPOSAL_BACKENDS or parts[2] not in DTYPES:
                raise ValueError
            return {"kind": kind, "sam": parts[1], "dtype": parts[2]}
        if kind == "clipseg":
            if parts[1] not in DTYPES:
                raise ValueError
            return {"kind": kind, "dtype": parts[1]}
        if kind == "micro" and len(parts) == 1:
            return {"kind": kind}
        if kind == "agreement":
            low = parts[1] if len(parts) > 1 else "bf16"
            if low not in ("bf16", "fp16"):
                raise ValueError
            return {"kind": kind, "low": low}
    except (IndexError, ValueError):
        pass
    raise argparse.ArgumentTypeError(
        f"--items: {text!r} is not hybridgl:BACKEND:DTYPE[:POINTS], gdino_sam:BACKEND:DTYPE, "
        "clipseg:DTYPE, agreement[:bf16|fp16] or micro"
    )


def _items(value: str) -> list[dict[str, Any]]:
    if value in BACKEND_PLANS:
        return [_item(v) for v in BACKEND_PLANS[value]]
    return [_item(v) for v in value.split(",") if v.strip()]


def _csv_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"{what}: expected a comma-separated list of {', '.join(allowed)}, got {value!r}"
        )
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Speed and memory of HybridGL per stage and against the reference schedule.",
    )
    p.add_argument(
        "--sam",
        type=lambda v: _csv_list(v, PROPOSAL_BACKENDS, "--sam"),
        default=None,
        help="proposal backends, comma-separated (default vit_h,vit_b; --quick: vit_b)",
    )
    p.add_argument(
        "--dtype",
        type=lambda v: _csv_list(v, ("fp32", "bf16", "fp16"), "--dtype"),
        default=None,
        help="dtypes, comma-separated (default fp32,bf16)",
    )
    p.add_argument("--images", type=positive(int), default=None, help="images (default 4; quick 1)")
    p.add_argument(
        "--objects", type=positive(int), default=None, help="referred objects per image (3)"
    )
    p.add_argument(
        "--expressions", type=positive(int), default=None, help="expressions per object (3)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench-results",
        help="output folder (default bench-results/, git-ignored)",
    )
    p.add_argument("--quick", action="store_true", help="ViT-B, 1 image, 2 objects x 2 expressions")
    p.add_argument("--tiny", action="store_true", help="tiny random models (smoke test only)")
    p.add_argument(
        "--weights",
        choices=("random", "real"),
        default="random",
        help="random (default, HYBRIDGL_RANDOM_WEIGHTS=full) or real checkpoints",
    )
    p.add_argument("--weights-dir", default=None, help="checkpoint folder with --weights real")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--threads", type=positive(int), default=None, help="torch threads (default torch's)"
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference schedule (only our path is timed)",
    )
    p.add_argument(
        "--configs",
        type=_parse_configs,
        default=None,
        help="explicit SAM:dtype list instead of --sam x --dtype, e.g. vit_h:fp32,vit_b:bf16",
    )
    p.add_argument(
        "--workloads",
        type=lambda v: [] if v == "none" else _csv_list(v, ("sam", "gt"), "--workloads"),
        default=["sam", "gt"],
        help="workload comparisons to run: sam (SAM proposals), gt (COCO masks), both "
        "(default) or none",
    )
    p.add_argument(
        "--sam-images",
        type=positive(int),
        default=None,
        help="images of the SAM-path workload comparison (default: all; SAM is slow on CPU)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the configurations in this process (faster start; memory figures shared)",
    )
    p.add_argument(
        "--points-per-side",
        type=positive(int),
        default=None,
        help="SAM point grid (default: the paper's 8); smaller only for smoke tests",
    )
    p.add_argument(
        "--suite",
        choices=("schedule", "backends"),
        default="schedule",
        help="schedule (default): stages and the reference schedule; backends: proposal "
        "backends, dtypes, peers and FLOP/s (issue 13)",
    )
    p.add_argument(
        "--items",
        type=_items,
        default=None,
        help="backends suite: default | cuda | a comma-separated list of "
        "hybridgl:BACKEND:DTYPE[:POINTS_PER_SIDE], gdino_sam:BACKEND:DTYPE, clipseg:DTYPE, "
        "agreement[:LOW_DTYPE], micro",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend-worker", default=None, help=argparse.SUPPRESS)
    return p


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        res = run_worker(spec, partial=lambda r: _partial(spec, r))
    except Exception as e:  # reported by the parent as a failed configuration
        import traceback

        res = {
            "sam": spec["sam"],
            "dtype": spec["dtype"],
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
    atomic_write_json(Path(spec["result"]), res, indent=None)
    return EXIT_OK


def _partial(spec: dict[str, Any], res: dict[str, Any]) -> None:
    """Write what is measured so far (a killed worker still reports its finished parts)."""
    from hybridgl_bench.stages import peak_rss_gib

    part = dict(res, partial=True, peak_rss_gib=peak_rss_gib())
    atomic_write_json(Path(spec["result"]), part, indent=None)


def _backend_worker_main(spec_path: str) -> int:
    from hybridgl_bench.backends import run_item

    spec = json.loads(Path(spec_path).read_text())
    try:
        res = run_item(spec)
    except Exception as e:  # reported by the parent as a failed item
        import traceback

        res = {**spec, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    atomic_write_json(Path(spec["result"]), res, indent=None)
    return EXIT_OK


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _parse_configs(value: str) -> list[tuple[str, str]]:
    out = []
    for item in value.split(","):
        sam, _, dtype = item.strip().partition(":")
        if sam not in PROPOSAL_BACKENDS or dtype not in DTYPES:
            raise argparse.ArgumentTypeError(
                f"--configs: expected items like vit_h:fp32,vit_b:bf16, got {item!r}"
            )
        out.append((sam, dtype))
    return out


def _run_config(spec: dict[str, Any], tmp: str, in_process: bool) -> dict[str, Any]:
    sam, dtype = spec["sam"], spec["dtype"]
    if in_process:
        try:
            return run_worker(spec)
        except Exception as e:
            return {"sam": sam, "dtype": dtype, "error": f"{type(e).__name__}: {e}"}
    spec_path = Path(tmp) / f"{sam}-{dtype}.spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
        cwd=str(REPO),
    )
    rpath = Path(spec["result"])
    res = json.loads(rpath.read_text()) if rpath.exists() else {"sam": sam, "dtype": dtype}
    if proc.returncode != 0 or res.get("partial"):
        if "stats" not in res and "error" not in res:
            res["error"] = f"worker exited with status {proc.returncode} (killed for memory?)"
    return res


def build_report(
    command: str, weights: str | None, dims: tuple[int, int, int], work: list[dict], configs: list
) -> dict[str, Any]:
    n_img, n_obj, n_expr = dims
    report: dict[str, Any] = {
        "command": command,
        "machine": machine_info(),
        "weights": {"tiny": "tiny random", "full": "random, full size", None: "real"}[weights],
        "workload": {
            "images": n_img,
            "objects": n_obj,
            "expressions": n_expr,
            "total": n_img * n_obj * n_expr,
            "real": sum(w["real"] for w in work),
            "image_ids": [w["image_id"] for w in work],
            "items": work,
        },
    }
    report["summary"] = summarise(configs)
    report["configs"] = [{k: v for k, v in c.items() if k != "gt_features"} for c in configs]
    report["targets"] = check_targets(report["configs"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    if args.backend_worker:
        return _backend_worker_main(args.backend_worker)
    if args.suite == "backends":
        return run_backends_suite(args, argv)

    if args.configs:
        pairs = args.configs
    else:
        sams = args.sam or (["vit_b"] if args.quick else ["vit_h", "vit_b"])
        dtypes = args.dtype or ["fp32", "bf16"]
        pairs = [(s, d) for s in sams for d in dtypes]
    n_img = args.images or (1 if args.quick else 4)
    n_obj = args.objects or (2 if args.quick else 3)
    n_expr = args.expressions or (2 if args.quick else 3)
    weights = "tiny" if args.tiny else ("full" if args.weights == "random" else None)
    if args.tiny and args.weights == "real":
        parser.error("--tiny and --weights real exclude each other")

    try:
        work = build_workload(n_img, n_obj, n_expr)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT

    shown = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/run.py", *shown])
    out = Path(args.out)
    configs: list[dict[str, Any]] = []
    gt_reference_done = False
    sam_reference_done: set[str] = set()
    with _env("HYBRIDGL_RANDOM_WEIGHTS", weights), tempfile.TemporaryDirectory() as tmp:
        for sam, dtype in pairs:
            # The comparison with the reference schedule runs once per SAM size (SAM path)
            # and once in all (COCO masks: it does not involve SAM); the other
            # configurations run our path on the COCO masks for the dtype agreement.
            sam_ref = not args.no_reference and sam not in sam_reference_done
            gt_ref = not args.no_reference and not gt_reference_done
            spec = {
                "sam": sam,
                "dtype": dtype,
                "work": work,
                "device": args.device,
                "threads": args.threads,
                "weights_dir": args.weights_dir,
                "sam_workload": "sam" in args.workloads and (sam_ref or args.no_reference),
                "gt_workload": "gt" in args.workloads,
                "sam_reference": sam_ref,
                "sam_images": args.sam_images,
                "points_per_side": args.points_per_side,
                "gt_reference": gt_ref,
                "result": str(Path(tmp) / f"{sam}-{dtype}.json"),
            }
            sam_reference_done.add(sam)
            gt_reference_done = True
            print(f"[benchmark] {sam} {dtype} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            res = _run_config(spec, tmp, args.in_process)
            res["wall_seconds"] = time.perf_counter() - t
            note = f": {res['error']}" if "error" in res else ""
            print(
                f"[benchmark] {sam} {dtype} done in {res['wall_seconds']:.0f} s{note}",
                file=sys.stderr,
                flush=True,
            )
            configs.append(res)
            # write after every configuration, so a long run leaves usable results
            report = build_report(command, weights, (n_img, n_obj, n_expr), work, configs)
            md = render_markdown(report)
            atomic_write_json(out / "results.json", report)
            atomic_write_text(out / "results.md", md)
    print(md)
    return EXIT_FAILED if any("error" in c for c in configs) else EXIT_OK


def run_backends_suite(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Each item in its own subprocess (its peak memory is its own); results rewritten
    after every item."""
    items = args.items or _items("default")
    shown = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/run.py", *shown])
    out = Path(args.out)
    done: list[dict[str, Any]] = []
    md = ""
    with _env("HYBRIDGL_RANDOM_WEIGHTS", "tiny" if args.tiny else "full"):
        machine = machine_info()
        with tempfile.TemporaryDirectory() as tmp:
            for n, item in enumerate(items):
                spec = {
                    **item,
                    "device": args.device,
                    "threads": args.threads,
                    "result": str(Path(tmp) / f"item{n}.json"),
                }
                label = ":".join(str(v) for k, v in item.items() if k != "kind")
                print(f"[benchmark] {item['kind']} {label} ...", file=sys.stderr, flush=True)
                t = time.perf_counter()
                spec_path = Path(tmp) / f"item{n}.spec.json"
                spec_path.write_text(json.dumps(spec))
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--backend-worker",
                     str(spec_path)],
                    cwd=str(REPO),
                )  # fmt: skip
                rpath = Path(spec["result"])
                res = json.loads(rpath.read_text()) if rpath.exists() else dict(item)
                if proc.returncode != 0 and "error" not in res:
                    res["error"] = f"worker exited with status {proc.returncode}"
                res["wall_seconds"] = time.perf_counter() - t
                res.pop("result", None)
                note = f": {res['error']}" if "error" in res else ""
                print(
                    f"[benchmark] {item['kind']} {label} done in {res['wall_seconds']:.0f} s{note}",
                    file=sys.stderr,
                    flush=True,
                )
                done.append(res)
                report = {"command": command, "machine": machine, "items": done}
                md = render_backends(report)
                atomic_write_json(out / "backends.json", report)
                atomic_write_text(out / "backends.md", md)
    print(md)
    return EXIT_FAILED if any("error" in c for c in done) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
