#!/usr/bin/env python
"""Peak memory and time of ``set_image`` on a large photo, with and without the working
resolution (``MethodConfig.max_side``).

The photo is a coco-mini image enlarged (bicubic) to the asked size, e.g. 4000 x 3000
(12 MP). Models are full-size with seeded random weights (``HYBRIDGL_RANDOM_WEIGHTS=full``,
set here unless already set): compute and memory do not depend on the weight values, the
proposals do (a random SAM keeps few masks). Peak memory is the largest resident set
(``VmRSS``) sampled every 20 ms during ``set_image`` + one ``predict``; the resident set
after building the models is reported beside it.

Usage::

    python scripts/working_resolution.py --sam vit_h --max-side 1024 --width 4000 --height 3000
    python scripts/working_resolution.py --sam vit_h --max-side none ...

Prints one JSON line. Run each setting in its own process (peaks are per process).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Largest ``VmRSS`` seen by a background thread while active."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def __enter__(self) -> PeakSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sam", default="vit_h", help="SAM size (vit_h, vit_l, vit_b)")
    ap.add_argument("--max-side", default="1024", help="working resolution, or 'none'")
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument(
        "--image",
        type=Path,
        default=repo.parent / "shared" / "data" / "coco-mini" / "val2017" / "000000000139.jpg",
    )
    args = ap.parse_args(argv)

    os.environ.setdefault("HYBRIDGL_RANDOM_WEIGHTS", "full")
    import numpy as np
    import torch
    from PIL import Image

    from hybridgl import Segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    max_side = None if args.max_side.lower() == "none" else int(args.max_side)
    photo = np.asarray(
        Image.open(args.image)
        .convert("RGB")
        .resize((args.width, args.height), Image.Resampling.BICUBIC)
    )
    t = time.perf_counter()
    seg = Segmenter.from_pretrained(sam=args.sam, device="cpu", max_side=max_side)
    build_s = time.perf_counter() - t
    after_build = rss_bytes()
    with PeakSampler() as peak:
        t0 = time.perf_counter()
        state = seg.set_image(photo)
        t1 = time.perf_counter()
        pred = seg.predict("the man on the left")
        t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "sam": args.sam,
                "max_side": max_side,
                "image": [args.height, args.width],
                "work_size": list(state.work_size),
                "num_proposals": state.num_proposals,
                "found": pred.found,
                "mask_shape": list(pred.mask.shape),
                "threads": torch.get_num_threads(),
                "build_s": round(build_s, 1),
                "set_image_s": round(t1 - t0, 1),
                "stages_s": {k: round(v, 1) for k, v in state.timings.items()},
                "predict_s": round(t2 - t1, 2),
                "rss_after_build_gib": round(after_build / 2**30, 2),
                "peak_rss_gib": round(peak.peak / 2**30, 2),
                "peak_above_models_gib": round((peak.peak - after_build) / 2**30, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
