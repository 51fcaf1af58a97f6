"""``hybridgl index --check`` / ``--repair``: find and fix what a crash can leave in an index.

What is checked, on the committed state (what readers see) and the tables' latest versions:

- writes past the last commit (a writer killed inside a commit): rolled back by the next
  writer anyway; ``--repair`` does it now;
- images rows: one per ``image_id``; a readable GEM blob of the stored size;
- proposals rows: each belongs to an image; each image has exactly ``num_proposals`` of
  them, numbered ``0 .. n-1`` once each (duplicates are what an index written before
  the commit was idempotent could hold).

The repair never re-encodes: it rolls uncommitted writes back, keeps one copy of each
duplicated row, deletes proposals without an image, and removes the images whose rows it
cannot make whole (the next ``hybridgl index`` run encodes those again). All of it is one
commit.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hybridgl.search.store import Store
from hybridgl.search.tables import IMAGES, PROPOSALS, in_filter

_GEM_ITEMSIZE = {"float16": 2, "float32": 4}


def _problems(store: Store) -> tuple[list[str], set[str], set[str]]:
    """``(messages, broken image ids, orphan proposal ids)`` of the committed snapshot."""
    snap = store.snapshot()
    dim = store.dim
    images = (
        snap[IMAGES]
        .search()
        .select(["image_id", "path", "num_proposals", "gem_dtype", "gem_grid", "gem"])
        .limit(None)
        .to_arrow()
        .to_pylist()
    )
    props = (
        snap[PROPOSALS].search().select(["image_id", "proposal"]).limit(None).to_arrow().to_pylist()
    )
    messages: list[str] = []
    broken: set[str] = set()
    rows = Counter(r["image_id"] for r in images)
    for image_id, n in rows.items():
        if n > 1:
            broken.add(image_id)
            messages.append(f"image {image_id} has {n} rows")
    by_image: dict[str, list[int]] = {}
    for r in props:
        by_image.setdefault(r["image_id"], []).append(int(r["proposal"]))
    orphans = set(by_image) - set(rows)
    if orphans:
        count = sum(len(by_image[i]) for i in orphans)
        messages.append(f"{count} proposals rows of {len(orphans)} image(s) not in the index")
    for r in images:
        image_id = r["image_id"]
        have = sorted(by_image.get(image_id, []))
        want = int(r["num_proposals"] or 0)
        if have != list(range(want)) and image_id not in broken:
            broken.add(image_id)
            messages.append(
                f"image {image_id} ({r['path']}) has {len(have)} proposals rows for "
                f"{want} proposals"
            )
        if not _gem_ok(r, dim):
            broken.add(image_id)
            messages.append(f"image {image_id} ({r['path']}) has a GEM blob of the wrong size")
    return messages, broken, orphans


def check_index(store: Store) -> dict[str, Any]:
    """What is wrong with the index (nothing is changed).

    Returns:
        ``{"ok", "problems": [str], "uncommitted": {table: [committed, latest]}}``.
    """
    stale = store.uncommitted()
    messages, _, _ = _problems(store)
    problems = [
        f"table {name} has writes past the last commit (version {latest}, committed "
        f"{committed}): an index run stopped inside a commit"
        for name, (committed, latest) in stale.items()
    ] + messages
    return {
        "ok": not problems,
        "problems": problems,
        "uncommitted": {k: list(v) for k, v in stale.items()},
    }


def repair_index(store: Store) -> dict[str, Any]:
    """Fix what :func:`check_index` finds, without re-encoding (``store`` is a writer).

    Returns:
        ``{"rolled_back": {table: [committed, latest]}, "fixed": [ids], "removed": [ids],
        "orphans_deleted": n}``.
    """
    stale = store.rollback()
    _, broken, orphans = _problems(store)
    fixed: list[str] = []
    removed: list[str] = []
    keep_images: list[dict[str, Any]] = []
    keep_props: list[dict[str, Any]] = []
    if broken:
        snap = store.snapshot()
        where = in_filter("image_id", sorted(broken))
        img_rows = snap[IMAGES].search().where(where).limit(None).to_arrow().to_pylist()
        prop_rows = snap[PROPOSALS].search().where(where).limit(None).to_arrow().to_pylist()
        for image_id in sorted(broken):
            mine = [r for r in img_rows if r["image_id"] == image_id]
            row = max(mine, key=lambda r: r.get("indexed_at") or 0.0)
            unique: dict[int, dict[str, Any]] = {}
            for p in prop_rows:
                if p["image_id"] == image_id:
                    unique.setdefault(int(p["proposal"]), p)
            n = int(row["num_proposals"] or 0)
            gem_ok = _gem_ok(row, store.dim)
            if sorted(unique) == list(range(n)) and gem_ok:
                keep_images.append(row)
                keep_props.extend(unique[i] for i in range(n))
                fixed.append(image_id)
            else:
                removed.append(image_id)
    if broken or orphans:
        import pyarrow as pa

        from hybridgl.search.tables import images_schema, proposals_schema

        images_tbl = pa.Table.from_pylist(keep_images, schema=images_schema())
        props_tbl = pa.Table.from_pylist(keep_props, schema=proposals_schema(store.dim))
        store.commit(delete_ids=sorted(broken | orphans), images=images_tbl, proposals=props_tbl)
    return {
        "rolled_back": {k: list(v) for k, v in stale.items()},
        "fixed": fixed,
        "removed": removed,
        "orphans_deleted": len(orphans),
    }


def _gem_ok(row: dict[str, Any], dim: int) -> bool:
    itemsize = _GEM_ITEMSIZE.get(row.get("gem_dtype") or "none")
    if not itemsize or row.get("gem") is None:
        return True
    grid = int(row["gem_grid"] or 0)
    return len(row["gem"]) == grid * grid * dim * itemsize
