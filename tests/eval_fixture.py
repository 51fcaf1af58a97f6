"""Build a small REFER-format data root from the real data in ``<repo>/../shared/data``.

The referring expressions come from ``refcoco-expressions/*.csv`` (RefCOCO authors'
sentences with the referred object's COCO box). A row is kept when its image is one of
the coco-mini images (COCO 2017 keeps the 2014 image ids) and its box equals the box of
a COCO annotation of that image: that annotation gives ``ann_id``, ``category_id`` and the
real mask. The builder writes::

    <root>/<dataset>/refs(<splitBy>).p      pickle protocol 2, REFER's keys
    <root>/<dataset>/instances.json         the kept images with ALL their annotations
    <root>/images/mscoco/images/train2014/COCO_train2014_%012d.jpg   symlinks (copies
                                                                     where links fail)

Nothing is copied into the repository: the root is a pytest tmp_path.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = DATA / "coco-mini"
EXPRESSIONS = DATA / "refcoco-expressions"
SKIP_REASON = f"real data not found at {DATA} (needs coco-mini/ and refcoco-expressions/)"

#: dataset -> (splitBy, csv prefix, splits)
SOURCES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "refcoco": ("unc", "refcoco_unc", ("val", "testA", "testB")),
    "refcoco+": ("unc", "refcoco+_unc", ("val", "testA", "testB")),
    "refcocog": ("umd", "refcocog_umd", ("val", "test")),
}

BOX_TOL = 0.02


def data_available() -> bool:
    return (COCO / "annotations").is_dir() and EXPRESSIONS.is_dir()


def _coco_index() -> tuple[dict[int, tuple[Path, dict]], dict[int, list[dict]], list[dict]]:
    images: dict[int, tuple[Path, dict]] = {}
    anns: dict[int, list[dict]] = {}
    categories: dict[int, dict] = {}
    for part in ("train2017", "val2017"):
        path = COCO / "annotations" / f"instances_{part}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for im in data["images"]:
            images[im["id"]] = (COCO / part / im["file_name"], im)
        for a in data["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        for c in data.get("categories", []):
            categories[c["id"]] = c
    return images, anns, sorted(categories.values(), key=lambda c: c["id"])


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        return
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build_refer_fixture(root: Path, datasets: tuple[str, ...] = ("refcoco", "refcocog")) -> dict:
    """Write the fixture under ``root``; return ``{dataset: {split: (refs, sentences)}}``.

    Also returns, under ``"_images"``, ``{dataset: sorted image ids}``.
    """
    images, anns, categories = _coco_index()
    summary: dict[str, Any] = {"_images": {}}
    for ds in datasets:
        split_by, prefix, splits = SOURCES[ds]
        refs: dict[int, dict] = {}
        used_images: set[int] = set()
        counts: dict[str, tuple[int, int]] = {}
        for split in splits:
            path = EXPRESSIONS / f"{prefix}_{split}.csv"
            if not path.is_file():
                continue
            n_sent = 0
            split_refs: set[int] = set()
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    img_id = int(row["img_id"])
                    if img_id not in images:
                        continue
                    box = json.loads(row["bbox"])
                    match = next(
                        (
                            a
                            for a in anns.get(img_id, [])
                            if all(
                                abs(x - y) <= BOX_TOL for x, y in zip(a["bbox"], box, strict=True)
                            )
                        ),
                        None,
                    )
                    if match is None:
                        continue
                    ref_id = int(row["ref_id"])
                    ref = refs.setdefault(
                        ref_id,
                        {
                            "ref_id": ref_id,
                            "ann_id": match["id"],
                            "image_id": img_id,
                            "split": split,
                            "category_id": match["category_id"],
                            "sent_ids": [],
                            "file_name": f"COCO_train2014_{img_id:012d}_{match['id']}.jpg",
                            "sentences": [],
                        },
                    )
                    sent_id = int(row["sent_id"])
                    ref["sent_ids"].append(sent_id)
                    ref["sentences"].append(
                        {
                            "raw": row["sent"],
                            "sent": row["sent"],
                            "sent_id": sent_id,
                            "tokens": row["sent"].split(),
                        }
                    )
                    used_images.add(img_id)
                    split_refs.add(ref_id)
                    n_sent += 1
            counts[split] = (len(split_refs), n_sent)
        ds_dir = root / ds
        ds_dir.mkdir(parents=True, exist_ok=True)
        with open(ds_dir / f"refs({split_by}).p", "wb") as f:
            pickle.dump(list(refs.values()), f, protocol=2)
        inst_images, inst_anns = [], []
        for img_id in sorted(used_images):
            src, info = images[img_id]
            name = f"COCO_train2014_{img_id:012d}.jpg"
            inst_images.append(
                {"id": img_id, "file_name": name, "height": info["height"], "width": info["width"]}
            )
            inst_anns.extend(anns[img_id])
            _link(src, root / "images" / "mscoco" / "images" / "train2014" / name)
        (ds_dir / "instances.json").write_text(
            json.dumps({"images": inst_images, "annotations": inst_anns, "categories": categories})
        )
        summary[ds] = counts
        summary["_images"][ds] = sorted(used_images)
    return summary


if __name__ == "__main__":  # python tests/eval_fixture.py /tmp/refer-fixture
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "refer-fixture")
    print(json.dumps(build_refer_fixture(out, tuple(SOURCES)), indent=1))
