"""Reading an indexed image file back (the server's image route, ``search --html``).

The index stores each image's path, size and SHA-256. What the path points to *now* is
not trusted: a photo may since have been replaced, or replaced by a symbolic link to a
file the index never saw. So a file is read back only when

- its real path (symbolic links resolved) lies inside one of the folders that were
  indexed (the index's ``roots``; indexes written before roots were recorded skip this
  rule and rely on the next two);
- it is a regular file of the stored size; and
- the bytes read hash to the stored SHA-256 (the bytes checked are the bytes returned:
  no window between the check and the use).

Otherwise :class:`IndexedFileGone` (the file is missing or outside the roots: HTTP 404)
or :class:`IndexedFileChanged` (HTTP 410).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence

from hybridgl.search.errors import IndexStoreError


class IndexedFileGone(IndexStoreError):
    """The indexed file is missing, not a regular file, or outside the indexed folders."""


class IndexedFileChanged(IndexedFileGone):
    """The indexed file's bytes are not those that were indexed."""


def roots_of(paths: Iterable[str | os.PathLike], files: Iterable[str | os.PathLike]) -> list[str]:
    """The real folders an index run reads: each folder among ``paths`` (the PATH
    arguments), and the real folder of each of ``files`` (the images found) outside them
    (images named directly or by a list file). Folders inside another are dropped."""
    roots = {os.path.realpath(os.fspath(p)) for p in paths if os.path.isdir(p)}
    for f in files:
        real = os.path.realpath(os.fspath(f))
        if not any(_inside(real, r) for r in roots):
            roots.add(os.path.dirname(real))
    return minimal_roots(roots)


def minimal_roots(roots: Iterable[str]) -> list[str]:
    """``roots`` without the folders that lie inside another of them, sorted."""
    out: list[str] = []
    for r in sorted(set(roots), key=len):
        if not any(_inside(r, o) for o in out):
            out.append(r)
    return sorted(out)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_indexed_file(
    path: str, *, sha256: str, size: int | None, roots: Sequence[str] | None
) -> bytes:
    """The bytes of an indexed image, checked against what was indexed (module docstring).

    Raises:
        IndexedFileGone: missing, not a regular file, or outside ``roots``.
        IndexedFileChanged: another size or another SHA-256 than indexed.
    """
    real = os.path.realpath(path)
    if roots and not any(_inside(real, os.path.realpath(r)) for r in roots):
        raise IndexedFileGone(
            f"{path} now leads outside the indexed folders (a symbolic link?); not served"
        )
    try:
        st = os.stat(real)
    except OSError:
        raise IndexedFileGone(f"{path} is gone") from None
    if not stat.S_ISREG(st.st_mode):
        raise IndexedFileGone(f"{path} is not a regular file any more")
    if size is not None and st.st_size != size:
        raise IndexedFileChanged(
            f"{path} changed since it was indexed ({st.st_size} bytes, indexed {size}); "
            "re-run hybridgl index"
        )
    try:
        with open(real, "rb") as f:
            data = f.read(size + 1 if size is not None else -1)
    except OSError as e:
        raise IndexedFileGone(f"{path} cannot be read: {e.strerror or e}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IndexedFileChanged(
            f"{path} changed since it was indexed (other bytes); re-run hybridgl index"
        )
    return data
