"""Speed, storage and memory of collection search (``hybridgl index`` / ``hybridgl search``).

Usage (from the repository root, with the project's environment active):

    python benchmarks/search_bench.py                         # everything, 10k/100k/1M rows
    python benchmarks/search_bench.py --scales 10000,100000   # skip the (CPU heavy) 1M run
    python benchmarks/search_bench.py --phases index,search   # real-image phases only

Phases, each in its own subprocess (so its peak resident memory is its own):

- ``index``: index ``--images`` coco-mini val images with their COCO masks as proposals
  and full-size random CLIP ViT-B/16 (``HYBRIDGL_RANDOM_WEIGHTS=full``: compute does not
  depend on weight values); images per minute, bytes on disk per image and per proposal.
- ``search``: whole searches (parse, text, stage 1, stage 2 re-ranking ``--rerank`` images
  with their stored GEM tokens) on that index; p50/p95 of 20 real RefCOCOg phrases.
- ``scale`` (one per row count): a proposals table of N rows built from the indexed
  features (each synthetic row = a real feature + Gaussian noise of half the features'
  own spread per dimension, 8 rows an image), queried with the phrases' text embeddings: stage-1 latency
  p50/p95 exact (full scan) and through the IVF index ``hybridgl index --optimize``
  builds (IVF_FLAT, cosine), the index build time, and the ANN's recall@10 of proposal rows against exact.

Targets (reported, never asserted): stage 1 at 1M rows < 50 ms; a whole search < 1 s.
Writes ``DIR/search.json`` and ``DIR/search.md`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COCO = DATA / "coco-mini"
PHRASES_CSV = DATA / "refcoco-expressions" / "refcocog_umd_val.csv"

TARGET_STAGE1_MS = 50.0
TARGET_SEARCH_S = 1.0
ROWS_PER_IMAGE = 8
NOISE = 0.5  # synthetic row = a real feature + N(0, (NOISE * that dimension's spread)^2)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pcts(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "p50": statistics.median(s),
        "p95": s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))],
        "mean": statistics.fmean(s),
        "n": len(s),
    }


def _phrases(n: int) -> list[str]:
    out: list[str] = []
    with open(PHRASES_CSV, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = row["sent"].strip()
            if text and text not in out:
                out.append(text)
            if len(out) >= n:
                break
    return out


def _segmenter() -> Any:
    os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "full"
    import torch

    if os.environ.get("SEARCH_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SEARCH_BENCH_THREADS"]))

    from hybridgl.segmenter import Segmenter

    torch.manual_seed(0)
    return Segmenter.from_pretrained(sam=None, device="cpu")


# --------------------------------------------------------------------------- phases


def phase_index(work: Path, images: int) -> dict[str, Any]:
    from hybridgl.search import Index

    ann = COCO / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    annotated = {a["image_id"] for a in data["annotations"]}
    files = [
        COCO / "val2017" / im["file_name"]
        for im in sorted(data["images"], key=lambda im: im["id"])
        if im["id"] in annotated and (COCO / "val2017" / im["file_name"]).exists()
    ][:images]
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    seg = _segmenter()
    db = work / "db"
    idx = Index(db, segmenter=seg)
    t0 = time.perf_counter()
    report = idx.add([folder], progress=False, proposals_from=ann)
    seconds = time.perf_counter() - t0
    stats = idx.stats()
    table_bytes = {
        t: sum(f.stat().st_size for f in (db / f"{t}.lance").rglob("*") if f.is_file())
        for t in ("images", "proposals", "failures", "meta")
    }
    return {
        "images": report.indexed,
        "proposals": report.proposals,
        "seconds": seconds,
        "images_per_minute": 60.0 * report.indexed / seconds,
        "bytes_total": stats["bytes"],
        "bytes_per_image": stats["bytes"] / max(1, report.indexed),
        "bytes_per_proposal_table": table_bytes["proposals"] / max(1, report.proposals),
        "bytes_images_table_per_image": table_bytes["images"] / max(1, report.indexed),
        "table_bytes": table_bytes,
        "peak_mib": _peak_mib(),
    }


def phase_search(work: Path, rerank: int, queries: int) -> dict[str, Any]:
    from hybridgl.search import Index

    seg = _segmenter()
    import torch

    idx = Index(work / "db", segmenter=seg)
    phrases = _phrases(queries)
    idx.search("warm up the parser and the caches", top=rerank, rerank=rerank)
    totals, cpu, parts = [], [], {"text": [], "stage1": [], "fetch": [], "stage2": []}
    for p in phrases:
        t0, c0 = time.perf_counter(), time.process_time()
        found = idx.search(p, top=rerank, rerank=rerank)
        totals.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        for k in parts:
            parts[k].append(found.timings[k])
    return {
        "rerank": rerank,
        "queries": len(phrases),
        "total_s": _pcts(totals),
        "cpu_s": _pcts(cpu),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "parts_s": {k: _pcts(v) for k, v in parts.items()},
        "peak_mib": _peak_mib(),
    }


def phase_scale(work: Path, rows: int, queries: int) -> dict[str, Any]:
    import lancedb
    import pyarrow as pa
    import torch

    from hybridgl.search.rows import text_embedding
    from hybridgl.search.stages import NPROBES, ann_partitions, create_ann_index, stage1
    from hybridgl.search.tables import proposals_schema

    real = lancedb.connect(str(work / "db")).open_table("proposals").to_arrow()
    base = np.stack(real.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    dim = base.shape[1]
    spread = base.std(axis=0, keepdims=True) * NOISE  # per dimension
    seg = _segmenter()
    with torch.no_grad():
        qs = [text_embedding(seg, seg.parse(p)).numpy() for p in _phrases(queries)]
    del seg

    db = lancedb.connect(str(work / f"scale-{rows}"))
    tbl = db.create_table("proposals", schema=proposals_schema(dim), mode="overwrite")
    rng = np.random.default_rng(0)
    chunk = 100_000
    t0 = time.perf_counter()
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        pick = rng.integers(0, base.shape[0], n)
        vec = base[pick] + (rng.standard_normal((n, dim)) * spread).astype(np.float32)
        ids = [f"img{(start + i) // ROWS_PER_IMAGE:08d}" for i in range(n)]
        tbl.add(
            pa.table(
                {
                    "image_id": pa.array(ids, pa.string()),
                    "proposal": pa.array(
                        [(start + i) % ROWS_PER_IMAGE for i in range(n)], pa.int32()
                    ),
                    "rle": pa.array([""] * n, pa.string()),
                    "box": pa.array([[0.0, 0.0, 1.0, 1.0]] * n, pa.list_(pa.float64(), 4)),
                    "area": pa.array([1] * n, pa.int64()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim),
                },
                schema=proposals_schema(dim),
            )
        )
    write_s = time.perf_counter() - t0
    tbl.optimize()

    def top10(use_ann: bool, q: np.ndarray) -> list[int]:
        b = tbl.search(q).metric("cosine").select(["_distance"]).with_row_id(True).limit(10)
        b = b.nprobes(NPROBES) if use_ann else b.bypass_vector_index()
        return b.to_arrow().column("_rowid").to_pylist()

    def time_stage1(exact: bool) -> dict[str, float]:
        stage1(tbl, qs[0], 10, exact=exact)  # warm the page cache and the index
        xs = []
        for q in qs:
            t = time.perf_counter()
            stage1(tbl, q, 10, exact=exact)
            xs.append(time.perf_counter() - t)
        return _pcts(xs)

    exact = time_stage1(True)
    exact_rows = [top10(False, q) for q in qs]
    t0 = time.perf_counter()
    partitions = ann_partitions(rows)
    create_ann_index(tbl, rows)
    from lancedb.index import BTree

    tbl.create_index("image_id", config=BTree())
    build_s = time.perf_counter() - t0
    ann = time_stage1(False)
    recalls = [
        len(set(top10(True, q)) & set(want)) / max(1, len(want))
        for q, want in zip(qs, exact_rows, strict=True)
    ]
    disk = sum(f.stat().st_size for f in (work / f"scale-{rows}").rglob("*") if f.is_file())
    shutil.rmtree(work / f"scale-{rows}", ignore_errors=True)
    return {
        "rows": rows,
        "dim": dim,
        "write_s": write_s,
        "exact_s": exact,
        "ann_s": ann,
        "ann_build_s": build_s,
        "ann": {"index": "IVF_FLAT", "partitions": partitions, "nprobes": NPROBES},
        "recall_at_10": statistics.fmean(recalls),
        "recall_at_10_min": min(recalls),
        "disk_bytes": disk,
        "load_avg": os.getloadavg(),
        "peak_mib": _peak_mib(),
    }


# --------------------------------------------------------------------------- driver


def _child(args: argparse.Namespace, phase: str, extra: list[str]) -> dict[str, Any]:
    out = Path(args.work) / f"{phase}-{'-'.join(extra) or 'x'}.json"
    cmd = [sys.executable, __file__, "--child", phase, "--work", args.work, "--out-json", str(out),
           "--images", str(args.images), "--rerank", str(args.rerank), "--queries", str(args.queries),
           *extra]  # fmt: skip
    print(f"[search_bench] {phase} {' '.join(extra)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def _markdown(res: dict[str, Any]) -> str:
    lines = [f"Machine: {res['machine']}; {res['date']}.", ""]
    ix = res.get("index")
    if ix:
        lines += [
            f"Indexing {ix['images']} coco-mini images ({ix['proposals']} COCO masks as proposals), "
            f"full-size random CLIP ViT-B/16 on CPU: **{ix['images_per_minute']:.1f} images/minute** "
            f"({ix['seconds']:.0f} s); on disk {ix['bytes_per_image'] / 1024:.0f} KiB per image "
            f"(images table {ix['bytes_images_table_per_image'] / 1024:.0f} KiB per image, "
            f"proposals table {ix['bytes_per_proposal_table'] / 1024:.1f} KiB per proposal); "
            f"peak RSS {ix['peak_mib']:.0f} MiB.",
            "",
        ]
    se = res.get("search")
    if se:
        t = se["total_s"]
        p = se["parts_s"]
        lines += [
            f"Whole search (re-ranking {se['rerank']} images, {se['queries']} RefCOCOg phrases): "
            f"p50 **{t['p50'] * 1000:.0f} ms**, p95 {t['p95'] * 1000:.0f} ms "
            f"(text {p['text']['p50'] * 1000:.0f}, stage 1 {p['stage1']['p50'] * 1000:.0f}, "
            f"fetch {p['fetch']['p50'] * 1000:.0f}, stage 2 {p['stage2']['p50'] * 1000:.0f} ms at p50); "
            f"CPU time p50 {se['cpu_s']['p50'] * 1000:.0f} ms; torch threads {se['torch_threads']}, "
            f"load average {se['load_avg'][0]:.1f} on {os.cpu_count()} CPUs; "
            f"peak RSS {se['peak_mib']:.0f} MiB.",
            "",
        ]
    if res.get("scale"):
        lines += [
            f"| proposal rows | exact p50 / p95 (ms) | {res['scale'][0]['ann']['index']} p50 / p95 (ms) | recall@10 (min) | "
            "index build (s) | on disk (MiB) | peak RSS (MiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in res["scale"]:
            lines.append(
                f"| {s['rows']:,} | {s['exact_s']['p50'] * 1000:.1f} / {s['exact_s']['p95'] * 1000:.1f} | "
                f"{s['ann_s']['p50'] * 1000:.1f} / {s['ann_s']['p95'] * 1000:.1f} | "
                f"{s['recall_at_10']:.3f} ({s['recall_at_10_min']:.1f}) | {s['ann_build_s']:.1f} | "
                f"{s['disk_bytes'] / 2**20:.0f} | {s['peak_mib']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", default="index,search,scale")
    ap.add_argument("--scales", default="10000,100000,1000000")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rerank", type=int, default=10)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the model phases")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--out", default="benchmark-results", help="folder for search.json/.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        work = Path(args.work)
        if args.child == "index":
            res = phase_index(work, args.images)
        elif args.child == "search":
            res = phase_search(work, args.rerank, args.queries)
        else:
            res = phase_scale(work, args.rows, args.queries)
        Path(args.out_json).write_text(json.dumps(res, indent=2))
        return 0

    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="hybridgl-search-bench-")
        args.work = tmp
    if args.threads:
        os.environ["SEARCH_BENCH_THREADS"] = str(args.threads)
    phases = args.phases.split(",")
    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "targets": {"stage1_ms_at_1M": TARGET_STAGE1_MS, "search_s": TARGET_SEARCH_S},
    }
    try:
        if "index" in phases or not (Path(args.work) / "db").exists():
            res["index"] = _child(args, "index", [])
        if "search" in phases:
            res["search"] = _child(args, "search", [])
        if "scale" in phases:
            res["scale"] = [
                _child(args, "scale", ["--rows", s]) for s in args.scales.split(",") if s
            ]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    from hybridgl.fileio import atomic_write_json, atomic_write_text

    out = Path(args.out)
    atomic_write_json(out / "search.json", res)
    md = _markdown(res)
    atomic_write_text(out / "search.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
