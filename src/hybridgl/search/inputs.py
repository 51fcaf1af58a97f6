"""What an index run reads: the image paths of folders and list files, image ids, and
the caller's COCO proposals."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.images import is_image_name, scan_image_folder
from hybridgl.names import safe_text

log = logging.getLogger("hybridgl.search.index")


# --------------------------------------------------------------------------- inputs


def collect_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders (recursively), image files and list files into image paths.

    A list file is any non-image file: one path a line (relative to the list file's
    folder; blank lines and lines starting with ``#`` are skipped). Listed paths that do
    not exist, and folders that cannot be read (permissions), come back as failures
    ``(path, error)``; a missing PATH argument raises.

    Returns:
        ``(images, failures)``: absolute paths in order, without duplicates.
    """
    out: list[Path] = []
    failures: list[tuple[str, str]] = []

    def add_dir(d: Path) -> None:
        def unreadable(path: Path, error: OSError) -> None:
            failures.append((safe_text(path), f"cannot read folder: {error.strerror or error}"))

        out.extend(scan_image_folder(d, on_error=unreadable))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            add_dir(p)
        elif p.is_file() and is_image_name(p):
            out.append(p)
        elif p.is_file():
            try:
                lines = p.read_text(encoding="utf-8-sig").splitlines()
            except (UnicodeDecodeError, OSError) as e:
                raise ImageError(f"{p} is neither an image nor a readable list file: {e}") from None
            for line in lines:
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                q = Path(text)
                q = q if q.is_absolute() else p.parent / q
                if q.is_dir():
                    add_dir(q)
                elif q.is_file():
                    out.append(q)
                else:
                    failures.append(
                        (str(q.absolute()), "file not found (listed in " + str(p) + ")")
                    )
        else:
            raise ImageError(f"not found: {p}")
    seen: dict[str, Path] = {}
    for q in out:
        seen.setdefault(str(q.absolute()), q.absolute())
    return list(seen.values()), failures


def image_id_for(path: str) -> str:
    """The index id of an image: a hash of its absolute path (stable across re-encodes)."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:20]


class CocoProposals:
    """Masks from a COCO instances JSON, looked up by image file name."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            images = {
                str(im["file_name"]).replace("\\", "/").rsplit("/", 1)[-1]: im
                for im in data["images"]
            }
            anns: dict[Any, list[dict[str, Any]]] = {}
            for a in data.get("annotations", []):
                anns.setdefault(a["image_id"], []).append(a)
        except FileNotFoundError:
            raise ImageError(f"--proposals-from {p}: file not found") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ImageError(f"--proposals-from {p} is not a COCO instances JSON: {e}") from None
        self.path = p
        self.images = images
        self.anns = anns

    def _entry(self, path: Path) -> dict[str, Any]:
        entry = self.images.get(path.name)
        if entry is None:
            raise ImageError(f"{path.name} is not listed in --proposals-from {self.path.name}")
        return entry

    def entry(self, path: Path) -> dict[str, Any]:
        """This image's size and annotations, JSON-ready (for a worker elsewhere)."""
        entry = self._entry(path)
        return {
            "height": entry.get("height"),
            "width": entry.get("width"),
            "annotations": self.anns.get(entry["id"], []),
        }

    def key(self, path: Path) -> str:
        """Identity of this image's masks (a changed annotation re-encodes the image)."""
        entry = self._entry(path)
        blob = json.dumps(self.anns.get(entry["id"], []), sort_keys=True).encode()
        return "coco:" + hashlib.sha256(blob).hexdigest()[:16]

    def masks(self, path: Path, height: int, width: int) -> np.ndarray:
        from hybridgl.eval.annotations import annotation_to_mask

        entry = self._entry(path)
        if (int(entry.get("height", height)), int(entry.get("width", width))) != (height, width):
            raise ImageError(
                f"{path.name} is {width}x{height} but --proposals-from says "
                f"{entry.get('width')}x{entry.get('height')}"
            )
        anns = self.anns.get(entry["id"], [])
        if not anns:
            return np.zeros((0, height, width), dtype=bool)
        return np.stack([annotation_to_mask(a, height, width) for a in anns])
