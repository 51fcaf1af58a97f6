"""Small gRefCOCO and PhraseCut data roots in their exact published layouts, built at test
time from coco-mini (``<repo>/../shared/data``); nothing is committed.

gRefCOCO (``<root>/grefcoco/grefs(unc).json``, ``instances.json``,
``<root>/images/train2014/<file_name>``): per image, a several-target ref ("all the
<category>s", every non-crowd annotation of its most frequent category), a one-target ref
("the <category>", its first annotation) and a no-target ref (``ann_id`` [-1],
``no_target`` true, a category absent from the image); the first image's refs are in
``val``, the rest alternate ``testA`` / ``testB``; one ``train`` ref.

PhraseCut (``<root>/phrasecut/refer_test.json``, ``image_data_split.json``,
``images/<image_id>.jpg``): per image, one task with every instance of the most frequent
category (``Polygons`` as lists of [x, y] points) and one with a single instance.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = DATA / "coco-mini"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def pick(count: int = 3) -> tuple[list[dict], dict[int, list[dict]], dict[int, str]]:
    """coco-mini val images (by id) with a category of >= 2 polygon instances."""
    data = json.loads((COCO / "annotations" / "instances_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    anns: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    chosen = []
    for im in sorted(data["images"], key=lambda i: i["id"]):
        mine = [a for a in anns.get(im["id"], []) if isinstance(a["segmentation"], list)]
        if not (COCO / "val2017" / im["file_name"]).exists() or not mine:
            continue
        cat, n = Counter(a["category_id"] for a in mine if not a["iscrowd"]).most_common(1)[0]
        if n >= 2 and len(mine) <= 12:
            chosen.append(im)
        if len(chosen) == count:
            break
    return chosen, {im["id"]: anns[im["id"]] for im in chosen}, names


def build_grefcoco(root: Path, count: int = 3) -> dict[str, Any]:
    """Write the gRefCOCO fixture; return ``{"refs": [...], "by_split": {split: n_sents}}``."""
    images, anns, names = pick(count)
    refs: list[dict] = []
    sent_id = 100
    for k, im in enumerate(images):
        split = "val" if k == 0 else ("testA" if k % 2 else "testB")
        mine = [a for a in anns[im["id"]] if not a["iscrowd"]]
        cat = Counter(a["category_id"] for a in mine).most_common(1)[0][0]
        group = [a["id"] for a in mine if a["category_id"] == cat]
        present = {a["category_id"] for a in anns[im["id"]]}
        absent = next(c for c in sorted(names) if c not in present)
        for ann_ids, text, no_target in (
            (group, f"all the {names[cat]}s", False),
            ([group[0]], f"the {names[cat]}", False),
            ([-1], f"the {names[absent]}", True),
        ):
            sent_id += 1
            refs.append(
                {
                    "ref_id": sent_id,
                    "image_id": im["id"],
                    "split": split,
                    "ann_id": ann_ids,
                    "category_id": [cat] if not no_target else [],
                    "no_target": no_target,
                    "sent_ids": [sent_id],
                    "file_name": im["file_name"],
                    "sentences": [
                        {"raw": text, "sent": text, "sent_id": sent_id, "tokens": text.split()}
                    ],
                }
            )
    refs.append({**refs[0], "ref_id": 1, "split": "train", "sentences": [
        {"raw": "train only", "sent": "train only", "sent_id": 1, "tokens": []}]})  # fmt: skip
    ds = root / "grefcoco"
    ds.mkdir(parents=True)
    (ds / "grefs(unc).json").write_text(json.dumps(refs))
    instances = {
        "images": images,
        "annotations": [a for im in images for a in anns[im["id"]]],
        "categories": [{"id": c, "name": n} for c, n in sorted(names.items())],
    }
    (ds / "instances.json").write_text(json.dumps(instances))
    for im in images:
        _link(COCO / "val2017" / im["file_name"], root / "images" / "train2014" / im["file_name"])
    return {"refs": refs, "images": images, "anns": anns}


def build_phrasecut(root: Path, count: int = 2) -> dict[str, Any]:
    """Write the PhraseCut fixture under ``root / "phrasecut"``; return its tasks."""
    images, anns, names = pick(count)
    tasks = []
    for im in images:
        mine = [a for a in anns[im["id"]] if not a["iscrowd"]]
        cat = Counter(a["category_id"] for a in mine).most_common(1)[0][0]
        group = [a for a in mine if a["category_id"] == cat]
        for inst, text in ((group, f"{names[cat]}s"), (group[:1], f"left {names[cat]}")):
            tasks.append(
                {
                    "task_id": f"{im['id']}__{len(tasks)}",
                    "image_id": im["id"],
                    "phrase": text,
                    "instance_boxes": [a["bbox"] for a in inst],
                    "Polygons": [
                        [[[p[i], p[i + 1]] for i in range(0, len(p), 2)] for p in a["segmentation"]]
                        for a in inst
                    ],
                    "ann_ids": [a["id"] for a in inst],
                }
            )
    pc = root / "phrasecut"
    pc.mkdir(parents=True)
    (pc / "refer_test.json").write_text(json.dumps(tasks))
    info = [
        {"image_id": im["id"], "width": im["width"], "height": im["height"], "split": "test"}
        for im in images
    ]
    (pc / "image_data_split.json").write_text(json.dumps(info))
    for im in images:
        _link(COCO / "val2017" / im["file_name"], pc / "images" / f"{im['id']}.jpg")
    return {"tasks": tasks, "images": images, "anns": anns}
