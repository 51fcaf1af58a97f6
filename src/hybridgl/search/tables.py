"""The index's tables: their names, the format number and the Arrow schemas, and the
LanceDB filter helpers (:mod:`hybridgl.search.store` reads and writes them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMAT = 1
IMAGES = "images"
PROPOSALS = "proposals"
FAILURES = "failures"
META = "meta"
DATA_TABLES = (IMAGES, PROPOSALS, FAILURES)


def _pa() -> Any:
    import pyarrow as pa

    return pa


def images_schema() -> Any:
    pa = _pa()
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("num_proposals", pa.int32()),
            pa.field("source", pa.string()),
            pa.field("proposals_key", pa.string()),
            pa.field("gem_dtype", pa.string()),
            pa.field("gem_grid", pa.int32()),
            pa.field("gem", pa.binary()),
            pa.field("indexed_at", pa.float64()),
        ]
    )


def proposals_schema(dim: int) -> Any:
    pa = _pa()
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("proposal", pa.int32()),
            pa.field("rle", pa.string()),
            pa.field("box", pa.list_(pa.float64(), 4)),
            pa.field("area", pa.int64()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def failures_schema() -> Any:
    pa = _pa()
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("failed_at", pa.float64()),
        ]
    )


def _meta_schema() -> Any:
    pa = _pa()
    return pa.schema([pa.field("key", pa.string()), pa.field("value", pa.string())])


def sql_str(value: str) -> str:
    """A SQL string literal for LanceDB filters."""
    return "'" + value.replace("'", "''") + "'"


def in_filter(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"
