"""The benchmark's workload: coco-mini images with real RefCOCO expressions."""

from __future__ import annotations

import collections
import csv
import json
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
COCO = DATA / "coco-mini"
EXPRESSIONS = DATA / "refcoco-expressions"

# Synthetic expressions when an image has too few RefCOCO expressions.
_FILLERS = (
    "the {c} on the left",
    "the {c} on the right",
    "the big {c} in the middle",
    "a {c} near the front",
    "the small {c} at the back",
)


class BenchmarkError(Exception):
    """Bad input to the benchmark (missing data, bad option values)."""


@lru_cache(maxsize=1)
def coco_index() -> tuple[dict[int, dict], dict[int, list], dict[int, str]]:
    """coco-mini's images (with their paths), annotations by image id, category names."""
    images: dict[int, dict] = {}
    anns: dict[int, list] = collections.defaultdict(list)
    cats: dict[int, str] = {}
    for split in ("val2017", "train2017"):
        ann_file = COCO / "annotations" / f"instances_{split}.json"
        if not ann_file.exists():
            continue
        data = json.loads(ann_file.read_text())
        for im in data["images"]:
            path = COCO / split / im["file_name"]
            if path.exists():
                images[im["id"]] = {**im, "path": str(path)}
        for a in data["annotations"]:
            anns[a["image_id"]].append(a)
        cats.update({c["id"]: c["name"] for c in data["categories"]})
    return images, anns, cats


def _refcoco_objects(image_ids: set[int]) -> dict[int, dict[str, list[str]]]:
    """Real expressions of the images, grouped by referred object (its COCO box)."""
    out: dict[int, dict[str, list[str]]] = collections.defaultdict(dict)
    if not EXPRESSIONS.exists():
        return out
    # RefCOCO first, then RefCOCO+ and RefCOCOg: same objects, more expressions
    files = sorted(EXPRESSIONS.glob("*.csv"), key=lambda p: (p.name.count("+"), "g_" in p.name))
    for f in files:
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                img = int(row["img_id"])
                if img not in image_ids:
                    continue
                sents = out[img].setdefault(row["bbox"], [])
                sent = row["sent"].strip()
                if sent and sent not in sents:
                    sents.append(sent)
    return out


def coco_masks(image: dict, anns: list[dict]):
    """Instance masks of one COCO image, ``(N, H, W)`` bool."""
    import numpy as np

    from hybridgl.eval.annotations import annotation_to_mask

    h, w = image["height"], image["width"]
    out = [annotation_to_mask(a, h, w) for a in anns]
    return np.stack(out) if out else np.zeros((0, h, w), bool)


def build_workload(n_images: int, n_objects: int, n_expressions: int) -> list[dict]:
    """``n_images`` annotated coco-mini images, each with ``n_objects`` referred objects of
    ``n_expressions`` expressions. Images with real RefCOCO expressions come first; missing
    expressions are filled with simple ones built from COCO category names.

    Returns a list of ``{"image_id", "path", "objects": [[expr, ...], ...], "real": int}``.
    """
    if not COCO.exists():
        raise BenchmarkError(
            f"benchmark data not found: {COCO} is missing (the benchmark reads the coco-mini "
            "images and annotations from ../shared/data next to the repository)"
        )
    images, anns, cats = coco_index()
    annotated = [i for i in images if anns.get(i)]
    if not annotated:
        raise BenchmarkError(f"no annotated images found under {COCO}")
    refs = _refcoco_objects(set(annotated))
    # images with the most real expressions first, then by id (deterministic)
    order = sorted(annotated, key=lambda i: (-sum(len(s) for s in refs.get(i, {}).values()), i))
    if n_images > len(order):
        raise BenchmarkError(f"--images {n_images}: only {len(order)} annotated images available")
    work = []
    for img_id in order[:n_images]:
        objs = sorted(refs.get(img_id, {}).values(), key=len, reverse=True)[:n_objects]
        real = sum(min(len(o), n_expressions) for o in objs)
        objects = [list(o[:n_expressions]) for o in objs]
        names = [cats[a["category_id"]] for a in anns[img_id]]
        k = 0
        while len(objects) < n_objects:
            objects.append([])
        for o in objects:
            while len(o) < n_expressions:
                o.append(_FILLERS[k % len(_FILLERS)].format(c=names[k % len(names)]))
                k += 1
        work.append(
            {"image_id": img_id, "path": images[img_id]["path"], "objects": objects, "real": real}
        )
    return work
