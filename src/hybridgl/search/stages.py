"""The two search stages over the stored rows (stage 1: cosine over every proposal, exact
or through the IVF index; the fetch of the chosen images) and the IVF index itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from hybridgl.search.store import Store
from hybridgl.search.tables import IMAGES, PROPOSALS, in_filter

log = logging.getLogger("hybridgl.search.index")

# Stage 1 through the IVF index: partitions probed per query
NPROBES = 32
# An index run builds the IVF index itself once the proposals table reaches this size
# (below it the exact scan is fast enough: docs/SEARCH.md, stage-1 latency).
AUTO_ANN_ROWS = 50_000
MIN_ANN_ROWS = 4_096  # below this an IVF index has too few rows to train its partitions


# --------------------------------------------------------------------------- stages


def _has_vector_index(tbl: Any) -> bool:
    try:
        return any("vector" in list(i.columns) for i in tbl.list_indices())
    except Exception:  # noqa: BLE001 - treat an unreadable index list as none
        return False


def store_rows(store: Store) -> int:
    return int(store.latest(PROPOSALS).count_rows())


def ann_partitions(rows: int) -> int:
    """IVF partitions for ``rows`` vectors: about sqrt(rows), at most 4096."""
    return max(1, min(4096, int(round(rows**0.5))))


def create_ann_index(table: Any, rows: int) -> None:
    """IVF_FLAT (cosine) on ``vector``: exact distances inside the probed partitions, so
    recall depends only on how many partitions a query probes (``NPROBES``); see
    docs/SEARCH.md for why not IVF_PQ."""
    from lancedb.index import IvfFlat

    table.create_index(
        "vector",
        config=IvfFlat(distance_type="cosine", num_partitions=ann_partitions(rows)),
        replace=True,
    )


def build_ann(store: Store) -> None:
    """The IVF index on the proposal vectors and a BTREE on ``image_id`` (stage-2 fetch)."""
    from lancedb.index import BTree

    props = store.latest(PROPOSALS)
    create_ann_index(props, int(props.count_rows()))
    props.create_index("image_id", config=BTree(), replace=True)
    store.latest(IMAGES).create_index("image_id", config=BTree(), replace=True)


def stage1(
    proposals: Any, query: np.ndarray, images: int, *, exact: bool | None = None
) -> list[tuple[str, float]]:
    """The best ``images`` image ids by their best proposal's cosine with ``query``.

    Exact (a full scan) when the table has no vector index or ``exact`` is True; else
    the IVF index, probing ``NPROBES`` partitions. Returns ``[(image_id, cosine)]`` best first.
    """
    total = int(proposals.count_rows())
    if total == 0:
        return []
    use_ann = _has_vector_index(proposals) if exact is None else not exact
    k = min(total, max(64, images * 16))
    q = np.asarray(query, dtype=np.float32)
    while True:
        b = (
            proposals.search(q, vector_column_name="vector")
            .metric("cosine")
            .select(["image_id", "_distance"])
            .limit(k)
        )
        if use_ann:
            b = b.nprobes(NPROBES)
        else:
            b = b.bypass_vector_index()
        res = b.to_arrow()
        best: dict[str, float] = {}
        for image_id, dist in zip(
            res.column("image_id").to_pylist(), res.column("_distance").to_pylist(), strict=True
        ):
            if image_id not in best:
                best[image_id] = 1.0 - float(dist)
        if len(best) >= images or res.num_rows < k or k >= total:
            break
        k = min(total, k * 4)
    return list(best.items())[:images]


def fetch_images(
    snap: dict[str, Any], ids: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The images rows and proposals rows of ``ids`` from one snapshot."""
    if not ids:
        return {}, {}
    where = in_filter("image_id", ids)
    img_rows = snap[IMAGES].search().where(where).limit(None).to_arrow().to_pylist()
    prop_rows = (
        snap[PROPOSALS]
        .search()
        .where(where)
        .select(["image_id", "proposal", "rle", "box", "vector"])
        .limit(None)
        .to_arrow()
        .to_pylist()
    )
    images = {r["image_id"]: r for r in img_rows}
    props: dict[str, list[dict[str, Any]]] = {}
    for r in prop_rows:
        props.setdefault(r["image_id"], []).append(r)
    return images, props
