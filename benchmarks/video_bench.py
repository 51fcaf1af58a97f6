"""Video benchmark: tracker frames/s, re-grounding cost, memory against video length, and the
ratio to running the image method on every frame.

    python benchmarks/video_bench.py --out bench-video/                 # the real models
    python benchmarks/video_bench.py --random full --out bench-video/   # full-size, random
    python benchmarks/video_bench.py --smoke --out /tmp/v               # tiny random models

Measured (results.json and results.md in --out), with the machine (CPU, its bf16 / AVX-512 /
AMX flags, threads) and the load average before and after:

- ``trackers``: per tracker (SAM 2.1 tiny, small, base_plus, large and EdgeTAM by default)
  and dtype (fp32, and bf16 where the CPU has native bf16 or on CUDA), seconds per frame and
  frames/s of tracking one object on a synthetic ``--height`` p clip (a coco-mini photo seen
  by a panning camera; grey noise without the data), first frame (seeding) excluded;
- ``reground``: seconds of one re-grounding (the HybridGL method on a frame with the tracked
  mask as an extra proposal) and of the image method alone on a frame;
- ``ratio_to_image_method``: the image method's seconds per frame divided by the video
  method's (tracking every frame plus one re-grounding every ``--reground-every`` frames);
- ``memory``: per video length (``--lengths``, 100 / 1,000 / 10,000), the peak resident
  memory of a process that tracks that many frames with ``--memory-tracker`` (the fastest:
  the sweep must finish; each length in a fresh process, frames generated on the fly:
  nothing is stored), and the frames the tracker session holds at the end: flat if the
  memory is bounded.

Timings depend on the machine and its load; the smoke mode only proves the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "coco-mini"


def clip_source(height: int, length: int, seed: int = 0):
    """``(first_mask, frames generator)`` of a synthetic panning clip ``height`` p (4:3)."""
    from hybridgl.video.synthetic import camera_frames

    size = (height, height * 4 // 3)
    image, mask = _photo(seed)
    frames = camera_frames(image, mask, length, size, "pan")
    first_frame, first_mask = next(frames)

    def gen():
        yield first_frame
        for f, _ in frames:
            yield f

    if not first_mask.any():  # the object left the view: seed a central box instead
        first_mask = np.zeros(size, bool)
        first_mask[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = True
    return first_mask, gen()


def _photo(seed: int):
    ann = DATA / "annotations" / "instances_val2017.json"
    if ann.exists():
        from hybridgl.eval.annotations import annotation_to_mask
        from hybridgl.images import load_image

        data = json.loads(ann.read_text())
        im = sorted(data["images"], key=lambda i: i["id"])[seed % len(data["images"])]
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        if anns and (DATA / "val2017" / im["file_name"]).exists():
            a = max(anns, key=lambda a: a["area"])
            return (
                load_image(DATA / "val2017" / im["file_name"]),
                annotation_to_mask(a, im["height"], im["width"]),
            )
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, (480, 640, 3), dtype=np.uint8)
    mask = np.zeros((480, 640), bool)
    mask[150:330, 200:440] = True
    return image, mask


def track_frames(tracker, height: int, length: int) -> dict:
    mask, frames = clip_source(height, length)
    tracker.reset()
    times = []
    for i, f in enumerate(frames):
        t = time.perf_counter()
        tracker.step(f, {1: mask} if i == 0 else None)
        times.append(time.perf_counter() - t)
    steady = times[1:] or times
    return {
        "frames": length,
        "seconds_per_frame": float(np.median(steady)),
        "frames_per_second": float(1.0 / np.median(steady)),
        "memory_frames": tracker.memory_frames(),
        "memory_limit": tracker.memory_limit,
    }


def measure_memory(args, tracker_name: str, length: int) -> dict:
    """Peak RSS of tracking ``length`` frames, in a fresh process unless --in-process."""
    if args.in_process:
        from hybridgl.video.hf_trackers import build_tracker

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = track_frames(build_tracker(tracker_name, device=args.device), args.height, length)
        r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        r["note"] = f"in-process (peak before: {before / 1024:.0f} MB)"
        return r
    cmd = [sys.executable, __file__, "--child", tracker_name, str(length),
           "--height", str(args.height)] + (["--device", args.device] if args.device else [])  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args) -> int:
    from hybridgl.video.hf_trackers import build_tracker

    name, length = args.child
    r = track_frames(build_tracker(name, device=args.device), args.height, int(length))
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(r))
    return 0


def measure_reground(args) -> dict:
    from hybridgl import Segmenter
    from hybridgl.video.grounding import HybridGLGrounder

    seg = Segmenter.from_pretrained(sam=args.sam, device=args.device)
    mask, frames = clip_source(args.height, 2)
    frame = next(frames)
    g = HybridGLGrounder(seg)
    g.ground(frame, ["the object"], [mask])  # warm-up
    t = time.perf_counter()
    g.ground(frame, ["the object"], [mask])
    reground = time.perf_counter() - t
    t = time.perf_counter()
    seg.predict("the object", state=seg.encode_image(frame))
    image = time.perf_counter() - t
    return {"reground_seconds": reground, "image_method_seconds": image, "sam": args.sam}


def dtypes_here(device: str | None) -> list[str]:
    """fp32, and bf16 where it runs natively (a CPU with avx512_bf16 / amx_bf16, CUDA)."""
    import torch

    from hybridgl.models.runtime import cpu_has_native_bf16

    cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
    return ["fp32", "bf16"] if native else ["fp32"]


def machine() -> dict:
    """The machine as the other benchmarks report it (CPU flags, load average...)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hybridgl_bench.measure import machine_info

    return machine_info()


def main(argv: list[str] | None = None) -> int:
    from hybridgl.video.tracker import TRACKERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-video", help="results folder")
    p.add_argument("--trackers", default=",".join(TRACKERS))
    p.add_argument("--dtypes", default=None,
                   help="comma list of fp32, bf16 (default: fp32, and bf16 where native)")  # fmt: skip
    p.add_argument("--random", choices=["tiny", "full"], default=None,
                   help="seeded random weights (full: the published sizes, no checkpoint)")  # fmt: skip
    p.add_argument("--memory-tracker", default="sam2.1_hiera_tiny",
                   help="the tracker of the length sweep (the fastest, so it finishes)")  # fmt: skip
    p.add_argument("--lengths", default="100,1000,10000")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps-frames", type=int, default=30, help="frames timed per tracker")
    p.add_argument("--reground-every", type=int, default=15)
    p.add_argument("--sam", default="vit_b", help="proposal backend of the image method")
    p.add_argument("--device", default=None)
    p.add_argument("--in-process", action="store_true", help="memory runs in this process")
    p.add_argument("--no-reground", action="store_true",
                   help="skip the re-grounding / image-method timing (and the ratio)")  # fmt: skip
    p.add_argument("--smoke", action="store_true",
                   help="tiny random models, 48 px, lengths 3 and 6: proves the script runs")  # fmt: skip
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.random:
        os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = args.random
    if args.smoke:
        os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny"
        args.trackers, args.lengths, args.height = "sam2.1_hiera_tiny,edgetam", "3,6", 48
        args.fps_frames, args.sam, args.device, args.in_process = 3, "vit_b", "cpu", True
        args.dtypes = "fp32,bf16"  # bf16 emulated here: only proves the path runs
    if args.child:
        return child(args)
    from hybridgl.video.hf_trackers import build_tracker

    dtypes = args.dtypes.split(",") if args.dtypes else dtypes_here(args.device)
    report: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), **machine()},
        "random_weights": os.environ.get("HYBRIDGL_RANDOM_WEIGHTS") or None,
        "height": args.height,
        "trackers": {},
        "memory": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a run stopped midway keeps what it had
        report["machine"]["load_average_after"] = list(os.getloadavg())
        (out / "results.json").write_text(json.dumps(report, indent=2))
        (out / "results.md").write_text(markdown(report, args))

    for name in filter(None, args.trackers.split(",")):
        for dtype in dtypes:
            tracker = build_tracker(name, device=args.device, dtype=dtype)
            r = track_frames(tracker, args.height, args.fps_frames)
            report["trackers"][f"{name} {dtype}"] = {"tracker": name, "dtype": dtype, **r}
            print(f"{name} {dtype}: {r['seconds_per_frame']:.4f} s/frame", flush=True)
            del tracker
            save()
    runs = report["memory"][args.memory_tracker] = []
    for n in filter(None, args.lengths.split(",")):
        runs.append(measure_memory(args, args.memory_tracker, int(n)))
        print(
            f"memory {args.memory_tracker} {n} frames: {runs[-1]['peak_rss_mb']:.0f} MB", flush=True
        )
        save()
    if not args.no_reground:
        report["reground"] = rg = measure_reground(args)
        for r in report["trackers"].values():
            video = r["seconds_per_frame"] + rg["reground_seconds"] / max(1, args.reground_every)
            r["ratio_to_image_method"] = rg["image_method_seconds"] / video
    save()
    print(markdown(report, args))
    return 0


def markdown(report: dict, args) -> str:
    m = report["machine"]
    lines = [f"# Video benchmark ({report['height']}p)", "",
             f"{m.get('cpu')}, {m.get('cpus')} CPUs, {m.get('threads')} threads; flags: "
             f"{' '.join(m.get('cpu_flags') or []) or 'none of avx2/avx512/amx'}; native bf16: "
             f"{'yes' if m.get('bf16_native') else 'no'}; load average before "
             f"{', '.join(f'{x:.1f}' for x in m.get('load_average') or [])}, after "
             f"{', '.join(f'{x:.1f}' for x in m.get('load_average_after') or [])}", ""]  # fmt: skip
    if report["random_weights"]:
        lines += [f"Random weights ({report['random_weights']}): timings of the plumbing only.", ""]
    lines += ["| tracker | dtype | s/frame | frames/s | image method / video method |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in report["trackers"].values():
        ratio = r.get("ratio_to_image_method")
        lines.append(f"| {r['tracker']} | {r['dtype']} | {r['seconds_per_frame']:.4f} | "
                     f"{r['frames_per_second']:.2f} | "
                     f"{'-' if ratio is None else f'{ratio:.1f}x'} |")  # fmt: skip
    rg = report.get("reground")
    if rg:
        lines += ["", f"Re-grounding: {rg['reground_seconds']:.3f} s; the image method alone: "
                  f"{rg['image_method_seconds']:.3f} s per frame (--sam {rg['sam']})."]  # fmt: skip
    lines += ["", "| tracker | frames | peak RSS MB | frames held |", "|---|---|---|---|"]
    for name, runs in report["memory"].items():
        for r in runs:
            lines.append(f"| {name} | {r['frames']} | {r['peak_rss_mb']:.0f} | "
                         f"{r['memory_frames']} / {r['memory_limit']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
