#!/usr/bin/env python
"""Dump predictions of the method to a JSON, to check that a refactor changes nothing.

With tiny random weights (``HYBRIDGL_RANDOM_WEIGHTS=tiny``, set here unless already set)
and the COCO ground-truth instance masks of a few coco-mini images as proposals, it runs
every fusion mode (:data:`hybridgl.config.FUSION_MODES`) under both presets on a fixed
list of expressions (every relation and direction word, with and without guidance) and
writes, per prediction: ``index``, ``pure_index``, ``score``, ``box``, the candidates
with all their scores, and the SHA-256 of the mask (shape + packed bits). Floats are
written with ``repr`` precision, so two dumps are equal only when the predictions are
bitwise equal. With ``--sam`` it also runs the tiny random SAM on the first image (paper
preset, G2L), covering the proposal stage.

The models are meaningless (random weights); the dump checks plumbing and arithmetic, not
quality.

Usage::

    python scripts/golden_predictions.py --out before.json [--data ../shared/data]
        [--images 3] [--sam]
    # after a change
    python scripts/golden_predictions.py --out after.json && diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

EXPRESSIONS = (
    "the man on the left in a red shirt",
    "dog on the right",
    "the person in the middle",
    "cup above the table near the bowl",
    "the chair below the window",
    "the bigger elephant",
    "smallest cup on the plate",
    "the pizza inside the box",
    "a thing",
)


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 of an ``(H, W)`` bool mask: its shape, then its packed bits."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    h = hashlib.sha256(f"{m.shape}".encode())
    h.update(np.packbits(m).tobytes())
    return h.hexdigest()


def prediction_dump(pred: Any) -> dict[str, Any]:
    return {
        "found": bool(pred.found),
        "index": pred.index,
        "pure_index": pred.pure_index,
        "score": float(pred.score),
        "box": [float(v) for v in pred.box],
        "num_proposals": int(pred.num_proposals),
        "mask_sha256": mask_digest(pred.mask),
        "candidates": [
            {
                "index": c.index,
                "clip_score": c.clip_score,
                "probability": c.probability,
                "relation_score": c.relation_score,
                "coherence_score": c.coherence_score,
                "final_score": c.final_score,
            }
            for c in pred.candidates
        ],
        "parse": {
            "noun_phrase": pred.parse.noun_phrase,
            "relation": pred.parse.relation,
            "direction": pred.parse.direction,
            "context_nouns": list(pred.parse.context_nouns),
        },
    }


def pick_images(data: Path, count: int) -> list[tuple[str, Path, np.ndarray]]:
    """The first ``count`` coco-mini val images (by id) with >= 4 instances, and their masks."""
    from hybridgl.eval.annotations import annotation_to_mask

    coco = data / "coco-mini"
    ann = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    images = {im["id"]: im for im in ann["images"]}
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in ann["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = []
    for image_id in sorted(anns):
        im = images[image_id]
        path = coco / "val2017" / im["file_name"]
        if len(anns[image_id]) < 4 or not path.exists():
            continue
        h, w = im["height"], im["width"]
        masks = np.stack([annotation_to_mask(a, h, w) for a in anns[image_id]])
        out.append((im["file_name"], path, masks))
        if len(out) == count:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="JSON file to write")
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1].parent / "shared" / "data",
        help="the shared data folder (holds coco-mini)",
    )
    ap.add_argument("--images", type=int, default=3, help="how many coco-mini images")
    ap.add_argument("--sam", action="store_true", help="also run the tiny SAM on one image")
    args = ap.parse_args(argv)

    os.environ.setdefault("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    from hybridgl import Segmenter
    from hybridgl.config import FUSION_MODES

    images = pick_images(args.data, args.images)
    if not images:
        print(f"no coco-mini images under {args.data}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {
        "random_weights": os.environ["HYBRIDGL_RANDOM_WEIGHTS"],
        "expressions": list(EXPRESSIONS),
        "images": [name for name, _, _ in images],
        "runs": {},
    }
    for preset in ("paper", "fixed"):
        for fusion in FUSION_MODES:
            seg = Segmenter.from_pretrained(sam=None, preset=preset, fusion=fusion, device="cpu")
            run: dict[str, Any] = {}
            for name, path, masks in images:
                seg.set_image(path, proposals=masks)
                run[name] = {
                    "guided": [prediction_dump(seg.predict(e)) for e in EXPRESSIONS],
                    "pure": [
                        prediction_dump(seg.predict(e, top_k=5, guidance=False))
                        for e in EXPRESSIONS[:3]
                    ],
                }
            result["runs"][f"{preset}/{fusion}"] = run
            print(f"{preset}/{fusion} done", file=sys.stderr)
    if args.sam:
        seg = Segmenter.from_pretrained(sam="vit_b", preset="paper", device="cpu")
        name, path, _ = images[0]
        state = seg.set_image(path)
        result["sam"] = {
            "image": name,
            "num_proposals": state.num_proposals,
            "proposal_sha256": [mask_digest(m) for m in state.masks],
            "boxes": state.boxes.tolist(),
            "predictions": [prediction_dump(seg.predict(e)) for e in EXPRESSIONS],
        }
        print("sam done", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
