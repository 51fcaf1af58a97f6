"""SHA-256 checks of checkpoint files, with a marker beside each verified file so that an
unchanged file is not hashed again."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from hybridgl.fileio import atomic_write_json
from hybridgl.weights.registry import Checkpoint

logger = logging.getLogger("hybridgl.weights")

_CHUNK = 1 << 20  # bytes per read, both when hashing and when downloading
_MARKER_SUFFIX = ".sha256.json"


def sha256_file(path: str | Path) -> str:
    """Hash a file in chunks.

    Args:
        path: File to hash.

    Returns:
        Lower-case hex SHA-256 of the file's bytes.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _read_marker(path: Path) -> str | None:
    """Return the recorded SHA-256 of ``path`` if its marker matches size and mtime."""
    try:
        st = path.stat()
        data = json.loads(_marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        isinstance(data, dict)
        and data.get("size") == st.st_size
        and data.get("mtime_ns") == st.st_mtime_ns
        and isinstance(data.get("sha256"), str)
    ):
        return data["sha256"]
    return None


def _write_marker(path: Path, sha256: str) -> None:
    """Record ``sha256`` with the file's size and mtime; silently skip read-only dirs."""
    try:
        st = path.stat()
        record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        atomic_write_json(_marker_path(path), record, indent=None)
    except OSError as exc:
        logger.debug("could not write verification marker for %s: %s", path, exc)


def _file_sha256(path: Path) -> str:
    """SHA-256 of ``path``, taken from its marker when the file is unchanged."""
    recorded = _read_marker(path)
    if recorded is not None:
        return recorded
    logger.info("verifying SHA-256 of %s", path)
    actual = sha256_file(path)
    _write_marker(path, actual)
    return actual


def hub_snapshot_complete(ckpt: Checkpoint, path: str | Path) -> bool:
    """True when ``path`` is a folder holding every file of a Hub entry."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in ckpt.hub_files)


def verify_file(ckpt: Checkpoint, path: str | Path) -> bool:
    """Check a file against a checkpoint's SHA-256.

    A successful hash is recorded in a ``<file>.sha256.json`` marker beside the file
    (size, mtime and digest), so later calls skip rehashing while the file is unchanged.

    Args:
        ckpt: Checkpoint whose SHA-256 is expected.
        path: File to check.

    Returns:
        True if the file exists and its SHA-256 matches; the size is not compared.
    """
    p = Path(path)
    if ckpt.sha256 is None:  # a Hub snapshot: pinned by revision, checked for completeness
        return hub_snapshot_complete(ckpt, p)
    if not p.is_file():
        return False
    actual = _file_sha256(p)
    if actual != ckpt.sha256:
        logger.warning(
            "%s does not match checkpoint %s: sha256 %s, expected %s",
            p,
            ckpt.name,
            actual,
            ckpt.sha256,
        )
        return False
    return True


def _acceptable(ckpt: Checkpoint, path: Path, verify: bool) -> bool:
    """Decide whether a local candidate file may be used.

    Without ``verify`` only a size that disagrees with the registry triggers hashing, and
    then the hash decides (the registry size is a hint, the SHA-256 the authority).
    """
    if ckpt.is_hub:
        return hub_snapshot_complete(ckpt, path)
    if verify:
        return verify_file(ckpt, path)
    if ckpt.size is not None:
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if size != ckpt.size:
            logger.warning(
                "%s has %d bytes, the registry says %d; checking its SHA-256",
                path,
                size,
                ckpt.size,
            )
            return verify_file(ckpt, path)
    return True
