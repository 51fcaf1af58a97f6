"""Time and memory of ``segment_volume`` per slice and per volume on a synthetic CT.

Usage (from the repository root, with the project's environment and the medical extra):

    python benchmarks/medical.py                      # 512 x 512 x 200, the fastest config
    python benchmarks/medical.py --tracker sam2.1_hiera_tiny   # slices followed by a tracker
    python benchmarks/medical.py --smoke --out /tmp/mv         # a smoke test only (seconds)

The default configuration is the fastest one the documentation names for CPUs
(docs/PERFORMANCE.md): proposals by ``slimsam_77`` with ``--points-per-side 4``, per-slice
grounding; ``--dtype bf16`` on CPUs with native bf16 (the printed flags say) is faster still.
Any model option overrides it. Before the table, the CPU, its flags (avx2/avx512/amx) and the
load average are printed: timings taken on a loaded machine are not comparable.

The volume is a synthetic CT (air, an elliptic body of soft tissue, a liver-like region
and a spine-like rod, in HU) of ``--size`` x ``--size`` x ``--slices`` voxels, windowed
with the abdomen preset; the phrase is grounded by per-slice grounding (no tracker).
Models have random weights (``HYBRIDGL_RANDOM_WEIGHTS=full``) unless ``--weights real``:
compute does not depend on weight values, the choices do. ``--smoke`` uses the tiny test
models on a 48 x 48 x 4 volume (a smoke test of this script, not a benchmark).

Prints a table, one row per volume: seconds per visited slice (mean, median, max), the
whole volume, and how far resident memory grew during the segmentation beyond the uint8
labels (peak, sampled every 20 ms; the input volume is built before), at ``--slices`` and
at a quarter and a half of it: equal growth means memory flat in the number of slices
(beyond the output). Then the process's peak resident memory. Needs psutil
(``hybridgl[dev]``). Writes ``DIR/medical.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from hybridgl_bench.measure import machine_info  # noqa: E402

from hybridgl.cli.common import positive  # noqa: E402
from hybridgl.cli.options import add_model_args, build_segmenter  # noqa: E402
from hybridgl.fileio import atomic_write_json  # noqa: E402


def synthetic_ct(size: int, slices: int) -> Any:
    """A CT-like volume in HU with a liver-like region through the middle slices."""
    from hybridgl.medical.volume import Volume

    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    c = size / 2
    body = ((i - c) / (0.42 * size)) ** 2 + ((j - c) / (0.32 * size)) ** 2 <= 1
    rod = (i - c) ** 2 + (j - c - 0.2 * size) ** 2 <= (0.04 * size) ** 2
    data = np.full((size, size, slices), -1000.0, dtype=np.float32)
    for k in range(slices):
        plane = data[:, :, k]
        plane[body] = 40.0
        r = 0.16 * size * max(0.0, 1 - ((k - slices / 2) / (0.35 * slices)) ** 2) ** 0.5
        liver = (i - c + 0.15 * size) ** 2 + (j - c) ** 2 <= r**2
        plane[liver & body] = 60.0
        plane[rod] = 700.0
    return Volume.from_array(data, spacing=(0.7, 0.7, 1.5), modality="CT")


class RssPeak:
    """The process's resident memory sampled every 20 ms in a thread: the peak above start."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def run_once(seg: Any, size: int, slices: int, tracker: Any = None) -> dict[str, Any]:
    from hybridgl.medical.propagate import segment_volume

    vol = synthetic_ct(size, slices)
    with RssPeak() as rss:
        t0 = time.perf_counter()
        res = segment_volume(
            seg, vol, "the liver", window="abdomen", keyslice=slices // 2, tracker=tracker
        )
        total = time.perf_counter() - t0
    per = [r.seconds for r in res.slices]
    return {
        "volume": [size, size, slices],
        "visited_slices": len(res.slices),
        "extent": list(res.extent) if res.extent else None,
        "seconds_total": round(total, 3),
        "seconds_per_slice": {
            "mean": round(statistics.fmean(per), 4) if per else None,
            "median": round(statistics.median(per), 4) if per else None,
            "max": round(max(per), 4) if per else None,
        },
        "rss_growth_beyond_labels_mb": round((rss.peak - rss.start - res.labels.nbytes) / 2**20, 2),
        "input_volume_mb": round(vol.data.nbytes / 2**20, 2),
    }


def table(runs: list[dict[str, Any]]) -> str:
    """The report as a fixed-width text table, one row per volume size."""
    head = ("volume", "visited", "s/slice mean", "median", "max", "s/volume", "RSS growth MB")
    rows = [
        (
            " x ".join(map(str, r["volume"])),
            str(r["visited_slices"]),
            *(str(r["seconds_per_slice"][k]) for k in ("mean", "median", "max")),
            str(r["seconds_total"]),
            str(r["rss_growth_beyond_labels_mb"]),
        )
        for r in runs
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [
        "  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)) for row in (head, *rows)
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=positive(int), default=512)
    p.add_argument("--slices", type=positive(int), default=200)
    p.add_argument("--weights", choices=("random", "real"), default="random")
    p.add_argument(
        "--tracker", default=None, metavar="NAME", help="follow slices with this video tracker"
    )
    p.add_argument("--smoke", action="store_true", help="tiny models, 48 x 48 x 4: a smoke test")
    p.add_argument("--out", default="benchmark-results", metavar="DIR")
    add_model_args(p)
    args = p.parse_args(argv)
    if args.sam is None:  # the fastest documented configuration
        args.sam = "slimsam_77"
        if args.points_per_side is None:
            args.points_per_side = 4
    old = os.environ.get("HYBRIDGL_RANDOM_WEIGHTS")
    if args.smoke:
        os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny"
        args.size, args.slices = 48, 4
    elif args.weights == "random":
        os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "full"
    machine = machine_info()
    print(
        f"CPU: {machine['cpu']} ({machine['cpus']} logical), flags: "
        f"{' '.join(machine['cpu_flags']) or 'none of avx2/avx512/amx/fma'}; bf16 native: "
        f"{machine['bf16_native']}; torch threads {machine['threads']}; load average "
        f"{machine['load_average']}",
        flush=True,
    )
    try:
        t0 = time.perf_counter()
        seg = build_segmenter(args)
        load = time.perf_counter() - t0
        counts = sorted({max(2, args.slices // 4), max(2, args.slices // 2), args.slices})
        runs = [run_once(seg, args.size, n, args.tracker) for n in counts]
    finally:
        if old is None:
            os.environ.pop("HYBRIDGL_RANDOM_WEIGHTS", None)
        else:
            os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = old
    report = {
        "command": "python benchmarks/medical.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "load_average_after": list(os.getloadavg()),
        "tracker": args.tracker,
        "smoke": bool(args.smoke),
        "model": dict(seg.model_info),
        "load_models_s": round(load, 3),
        "runs": runs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out = atomic_write_json(Path(args.out) / "medical.json", report)
    print(table(runs))
    print(f"model load {report['load_models_s']} s; peak RSS {report['peak_rss_mb']} MB; {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
