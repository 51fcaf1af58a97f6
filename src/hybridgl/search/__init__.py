"""Collection search: index a folder of images, find the region a phrase describes.

The image side of the method (proposals, hybrid features, GEM tokens: an
``ImageState``) is stored once per image in a LanceDB database; a query runs the text
side, a vector search over every proposal (stage 1) and the full method on the best
images from their stored state (stage 2). See docs/SEARCH.md.

LanceDB is an optional extra (``pip install "hybridgl[search]"``): it is imported on
first use, never by ``import hybridgl`` or ``import hybridgl.search``.

Example:
    >>> from hybridgl import Index
    >>> idx = Index("photos-index")
    >>> idx.add(["photos/"])
    >>> for hit in idx.search("the dog on the left", top=5):
    ...     print(hit.similarity, hit.path, hit.prediction.box)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridgl.search.errors import (
    FingerprintMismatch,
    IndexBusyError,
    IndexStoreError,
    MissingExtraError,
    require_lancedb,
)

if TYPE_CHECKING:
    from hybridgl.search.hits import AddReport, SearchHit
    from hybridgl.search.index import Index

__all__ = [
    "DEFAULT_DB",
    "AddReport",
    "FingerprintMismatch",
    "Index",
    "IndexBusyError",
    "IndexStoreError",
    "MissingExtraError",
    "SearchHit",
    "require_lancedb",
]

DEFAULT_DB = "hybridgl-index"


def __getattr__(name: str) -> Any:  # lazy: the index module pulls in numpy and friends
    if name == "Index":
        from hybridgl.search import index

        return index.Index
    if name in ("SearchHit", "AddReport"):
        from hybridgl.search import hits

        return getattr(hits, name)
    raise AttributeError(name)
