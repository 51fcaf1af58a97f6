"""``hybridgl.Index``: build a searchable index of images and query it with a phrase.

Stage 1 compares the method's text embedding ``f_text = w E(s) + (1 - w) E(np)``
(METHOD.md section 4) with every stored proposal feature by cosine (exact, or through an
IVF index when one was built). Stage 2 rebuilds each of the best ``rerank`` images'
:class:`~hybridgl.segmenter.ImageState` from the database and runs the full method on it
(``Segmenter.score``): softmax within the image, relation guidance, GEM coherence. Hits
are ranked by the cosine between ``f_text`` and the proposal stage 2 chose; see
docs/SEARCH.md for why that score, and not ``Prediction.score``, is comparable across images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ExpressionError, ImageError
from hybridgl.images import is_image_name, scan_image_folder
from hybridgl.names import is_text, safe_text, show
from hybridgl.search import fingerprint as fpmod
from hybridgl.search.errors import IndexStoreError
from hybridgl.search.store import FAILURES, IMAGES, PROPOSALS, Store, in_filter, is_remote
from hybridgl.spec import dtype_option
from hybridgl.types import Prediction

log = logging.getLogger(__name__)

DEFAULT_DB = "hybridgl-index"
GEM_DTYPES = ("float16", "float32")
# Stage 1 through the IVF index: partitions probed per query
NPROBES = 32
# An index run builds the IVF index itself once the proposals table reaches this size
# (below it the exact scan is fast enough: docs/SEARCH.md, stage-1 latency).
AUTO_ANN_ROWS = 50_000
MIN_ANN_ROWS = 4_096  # below this an IVF index has too few rows to train its partitions


# --------------------------------------------------------------------------- results


@dataclass
class SearchHit:
    """One image found for a phrase.

    Attributes:
        path: the image file (absolute, as indexed).
        image_id: the image's id in the index.
        prediction: the full method's answer on this image (mask, box, candidates).
        similarity: cosine similarity between the phrase's text embedding and the chosen
            proposal's hybrid feature: the ranking value, comparable across images (the
            prediction's own ``score`` is the method's final score within the image).
        stage1_similarity: the best cosine among the image's proposals (stage 1's).
        rank: 1 for the best hit.
    """

    path: str
    image_id: str
    prediction: Prediction
    similarity: float
    stage1_similarity: float
    rank: int = 0
    width: int = 0
    height: int = 0
    candidate_masks: list[np.ndarray] = field(default_factory=list, repr=False)
    # what the file held when indexed: checked before the file is read back (files.py)
    sha256: str = field(default="", repr=False)
    size: int | None = field(default=None, repr=False)
    roots: list[str] | None = field(default=None, repr=False)

    def read_file(self) -> bytes:
        """The image file's bytes, checked against what was indexed.

        Raises:
            IndexedFileGone: missing, or outside the indexed folders (a symbolic link).
            IndexedFileChanged: other bytes than indexed.
        """
        from hybridgl.search.files import read_indexed_file

        return read_indexed_file(self.path, sha256=self.sha256, size=self.size, roots=self.roots)

    def to_dict(self, *, mask: bool = True, candidate_masks: bool = False) -> dict[str, Any]:
        """The one record shape: :meth:`Prediction.to_dict` (RLE mask) with the hit's own
        fields beside it: ``rank``, ``path``, ``image_id``, ``similarity`` and
        ``stage1_similarity`` (docs/FORMATS.md). ``mask`` False leaves the mask out;
        ``candidate_masks`` adds each candidate's mask as RLE."""
        pred = self.prediction.to_dict()
        if not mask:
            pred.pop("mask", None)
        if candidate_masks and self.candidate_masks:
            from hybridgl.masks import mask_to_rle

            for c, m in zip(pred.get("candidates", []), self.candidate_masks, strict=False):
                c["mask"] = mask_to_rle(m)
        return {
            "rank": self.rank,
            "path": self.path,
            "image_id": self.image_id,
            "similarity": self.similarity,
            "stage1_similarity": self.stage1_similarity,
            **pred,
        }


class SearchResults(list):  # list[SearchHit]
    """The hits of :meth:`Index.search`, best first, with what the search did.

    Attributes:
        expression: the phrase; parse: its parse (``Parse.to_dict``); commit: the index
        version searched; reranked: images that got the full method; timings: seconds
        per stage (``text``, ``stage1``, ``fetch``, ``stage2``, ``total``).
    """

    def __init__(
        self,
        hits: Iterable[SearchHit] = (),
        *,
        expression: str = "",
        parse: dict[str, Any] | None = None,
        commit: Any = None,
        reranked: int = 0,
        timings: dict[str, float] | None = None,
    ) -> None:
        super().__init__(hits)
        self.expression = expression
        self.parse = parse or {}
        self.commit = commit
        self.reranked = reranked
        self.timings = dict(timings or {})

    def info(self) -> dict[str, Any]:
        """The search's facts, JSON-ready (without the hits)."""
        return {
            "expression": self.expression,
            "parse": self.parse,
            "commit": self.commit,
            "reranked": self.reranked,
            "timings": self.timings,
        }


@dataclass
class AddReport:
    """What an :meth:`Index.add` run did."""

    indexed: int = 0
    skipped: int = 0
    pruned: int = 0
    proposals: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    ann_built: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failed"] = [{"path": p, "error": e} for p, e in self.failed]
        return d


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
        from hybridgl.eval.refer import annotation_to_mask

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


# --------------------------------------------------------------------------- segmenter glue


def _encode_image(seg: Any, image: np.ndarray, proposals: np.ndarray | None) -> Any:
    """``seg.encode_image``: the image's state, without touching the current image."""
    return seg.encode_image(image, proposals=proposals)


def _score(seg: Any, state: Any, parse: Any, top_k: int, guidance: bool) -> Prediction:
    """``seg.score(state, parse)``: the full method on a stored state."""
    return seg.score(state, parse, top_k=top_k, guidance=guidance)


def _state_class() -> Any:
    from hybridgl.segmenter import ImageState

    return ImageState


def text_embedding(seg: Any, parse: Any) -> Any:
    """The method's phrase embedding ``w E(s) + (1 - w) E(np)`` (METHOD.md section 4)."""
    from hybridgl.guidance import phrase_embedding

    emb = seg.encode_texts([parse.sentence, parse.noun_phrase])
    return phrase_embedding(emb[0], emb[1], seg.config.text_weight)


# --------------------------------------------------------------------------- rows


def _rows_for(
    image_id: str,
    path: Path,
    sha: str,
    stat: os.stat_result,
    state: Any,
    source: str,
    proposals_key: str,
    gem_dtype: str | None,
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    from hybridgl.masks import mask_to_rle

    masks = np.asarray(state.masks)
    n = int(masks.shape[0])
    h, w = int(state.image.shape[0]), int(state.image.shape[1])
    boxes = np.asarray(state.boxes, dtype=np.float64)
    if masks.shape[1:] != (h, w):
        # a photo above the segmenter's working resolution (max_side): its proposals were
        # made on a smaller copy; rows hold them at the image's size, as they come back
        masks = state.input_masks()
    feats = state.features.detach().float().cpu().numpy().astype(np.float32, copy=False)
    gem = None
    if gem_dtype is not None:
        tokens = state.gem_tokens.detach().float().cpu().numpy()
        gem = np.ascontiguousarray(tokens.astype(gem_dtype)).tobytes()
    image_row = {
        "image_id": image_id,
        "path": str(path),
        "sha256": sha,
        "size": int(stat.st_size),
        "mtime": float(stat.st_mtime),
        "width": w,
        "height": h,
        "num_proposals": n,
        "source": source,
        "proposals_key": proposals_key,
        "gem_dtype": gem_dtype or "none",
        "gem_grid": int(state.gem_grid),
        "gem": gem,
        "indexed_at": time.time(),
    }
    props: dict[str, list[Any]] = {
        "image_id": [image_id] * n,
        "proposal": list(range(n)),
        "rle": [mask_to_rle(m)["counts"] for m in masks],
        "box": [[float(v) for v in b] for b in boxes],
        "area": [int(a) for a in masks.reshape(n, -1).sum(axis=1)] if n else [],
        "vector": list(feats),
    }
    return image_row, props


def _images_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    from hybridgl.search.store import images_schema

    schema = images_schema()
    return pa.table({f.name: [r[f.name] for r in rows] for f in schema}, schema=schema)


def _proposals_table(parts: list[dict[str, list[Any]]], dim: int) -> Any:
    import pyarrow as pa

    from hybridgl.search.store import proposals_schema

    schema = proposals_schema(dim)
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    for part in parts:
        for k in cols:
            cols[k].extend(part[k])
    n = len(cols["image_id"])
    vec = (
        np.stack(cols["vector"]).astype(np.float32).reshape(-1)
        if n
        else np.zeros(0, dtype=np.float32)
    )
    arrays = {
        "image_id": pa.array(cols["image_id"], pa.string()),
        "proposal": pa.array(cols["proposal"], pa.int32()),
        "rle": pa.array(cols["rle"], pa.string()),
        "box": pa.array(cols["box"], pa.list_(pa.float64(), 4)),
        "area": pa.array(cols["area"], pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec, pa.float32()), dim),
    }
    return pa.table(arrays, schema=schema)


def _failures_table(rows: list[tuple[str, str]]) -> Any:
    import pyarrow as pa

    from hybridgl.search.store import failures_schema

    now = time.time()
    return pa.table(
        {
            "path": [p for p, _ in rows],
            "error": [e for _, e in rows],
            "failed_at": [now] * len(rows),
        },
        schema=failures_schema(),
    )


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def encode_rows(image_row: dict[str, Any], props: dict[str, list[Any]]) -> dict[str, Any]:
    """The rows of one image as a JSON-ready record (bytes as base64), for a Ray worker."""
    img = dict(image_row)
    img["gem"] = None if img["gem"] is None else _b64(img["gem"])
    p: dict[str, Any] = dict(props)
    vec = np.asarray(p.pop("vector"), dtype=np.float32)
    p["vector"] = _b64(np.ascontiguousarray(vec).tobytes())
    p["dim"] = int(vec.shape[1]) if vec.ndim == 2 else 0
    return {"image": img, "proposals": p}


def decode_rows(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Inverse of :func:`encode_rows` (bit-exact features and GEM tokens)."""
    import base64

    img = dict(record["image"])
    img["gem"] = None if img["gem"] is None else base64.b64decode(img["gem"])
    p = dict(record["proposals"])
    dim = int(p.pop("dim"))
    flat = np.frombuffer(base64.b64decode(p["vector"]), dtype=np.float32)
    p["vector"] = list(flat.reshape(-1, dim)) if dim else []
    return img, p


class IndexTask:
    """The jobs layer's task of ``hybridgl index --engine ray``: encode one image on a
    worker into its index rows (one record per unit; the driver writes them)."""

    def __init__(self, gem_dtype: str | None, source: str) -> None:
        self.gem_dtype = gem_dtype
        self.source = source

    def run(self, worker: Any, unit: Any) -> list[dict[str, Any]]:
        from hybridgl.eval.refer import annotation_to_mask
        from hybridgl.images import load_image

        d = unit.data
        path = Path(d["path"])
        try:
            data = path.read_bytes()
            stat = path.stat()
            image = load_image(data)
        except (OSError, ImageError) as e:
            return self.failed(unit, e)
        masks = None
        entry = d.get("coco")
        if entry is not None:
            h, w = image.shape[:2]
            if entry.get("height") is not None and (entry["height"], entry["width"]) != (h, w):
                return self.failed(
                    unit,
                    ImageError(
                        f"{path.name} is {w}x{h}, the COCO file says "
                        f"{entry['width']}x{entry['height']}"
                    ),
                )
            anns = entry["annotations"]
            masks = (
                np.stack([annotation_to_mask(a, h, w) for a in anns])
                if anns
                else np.zeros((0, h, w), dtype=bool)
            )
        state = _encode_image(worker.segmenter, image, masks)
        sha = hashlib.sha256(data).hexdigest()
        image_row, props = _rows_for(
            d["image_id"], path, sha, stat, state, self.source, d["proposals_key"], self.gem_dtype
        )
        return [encode_rows(image_row, props)]

    def failed(self, unit: Any, error: BaseException) -> list[dict[str, Any]]:
        msg = str(error).strip() or type(error).__name__
        return [{"error": msg.replace("<bytes>", str(unit.data.get("path")))}]


def state_from_rows(image: dict[str, Any], proposals: list[dict[str, Any]]) -> Any:
    """Rebuild an ``ImageState`` from an images row and its proposals rows.

    The image pixels are not stored (scoring needs only the size): ``state.image`` is a
    read-only all-zero view of the right shape. Features, boxes and masks are exactly
    what was indexed; GEM tokens too when stored as float32 (float16 rounds them).
    """
    import torch

    from hybridgl.masks import rle_to_mask

    h, w = int(image["height"]), int(image["width"])
    props = sorted(proposals, key=lambda r: int(r["proposal"]))
    n = len(props)
    if n:
        masks = np.stack([rle_to_mask({"size": [h, w], "counts": r["rle"]}) for r in props])
        boxes = np.asarray([r["box"] for r in props], dtype=np.float64)
        feats = torch.from_numpy(np.asarray([r["vector"] for r in props], dtype=np.float32))
    else:
        masks = np.zeros((0, h, w), dtype=bool)
        boxes = np.zeros((0, 4), dtype=np.float64)
        feats = torch.zeros((0, 1), dtype=torch.float32)
    grid = int(image["gem_grid"] or 0)
    gem_dtype = image.get("gem_dtype") or "none"
    if gem_dtype in GEM_DTYPES and image.get("gem") is not None:
        tokens = np.frombuffer(image["gem"], dtype=gem_dtype).astype(np.float32)
        gem_tokens = torch.from_numpy(tokens.reshape(grid * grid, -1).copy())
    else:
        gem_tokens = torch.zeros((max(grid, 1) ** 2, feats.shape[1]), dtype=torch.float32)
    fields = {
        "image": np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (h, w, 3)),
        "masks": masks,
        "boxes": boxes,
        "features": feats,
        "gem_tokens": gem_tokens,
        "gem_grid": max(grid, 1),
        "source": str(image.get("source") or "given"),
    }
    return _state_class()(**fields)


# --------------------------------------------------------------------------- the index


def _progress(total: int, enabled: bool) -> Any:
    from hybridgl.jobs.engine import progress_bar

    return progress_bar(total, "index", "img", enabled)


class Index:
    """A searchable index of images in a LanceDB database (folder or object-store URI).

    Args:
        db: index folder or URI (default ``./hybridgl-index``).
        segmenter: a loaded :class:`~hybridgl.segmenter.Segmenter` to use; otherwise one is
            built on first use from the options below, each defaulting to what the index
            was built with (or the package defaults for a new index).
        sam, clip, preset, dtype, device, weights_dir, spacy_model: model options, as for
            ``Segmenter.from_pretrained``.
        options: any model options, keyed as :meth:`hybridgl.spec.ModelSpec.with_given`
            takes them (``sam.points_per_side``, ``config.fusion``, ``threads``...): what
            the CLI's option group gives. Options not given come from the index.
        gem: store GEM tokens (needed for the coherence guidance in stage 2).
        gem_dtype: ``float16`` (half the bytes) or ``float32`` (stage 2 bit-identical to
            ``Segmenter.predict``).

    Raises (from the methods):
        IndexStoreError: missing or non-index ``db``; FingerprintMismatch: other models.
    """

    def __init__(
        self,
        db: str | os.PathLike = DEFAULT_DB,
        segmenter: Any | None = None,
        *,
        sam: str | None = None,
        clip: str | None = None,
        preset: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        weights_dir: str | os.PathLike | None = None,
        spacy_model: str | None = None,
        gem: bool = True,
        gem_dtype: str = "float16",
        options: dict[str, Any] | None = None,
    ) -> None:
        if gem_dtype not in GEM_DTYPES:
            raise ValueError(f"gem_dtype must be one of {GEM_DTYPES}, got {gem_dtype!r}")
        self.db = os.fspath(db)
        self._seg = segmenter
        given: dict[str, Any] = {
            "sam": sam,
            "clip": clip,
            "preset": preset,
            "dtype": dtype_option(dtype),
            "device": device,
            "weights_dir": None if weights_dir is None else os.fspath(weights_dir),
            "spacy_model": spacy_model,
        }
        #: the model options given (spec keys); the rest come from the index
        self._given: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self._given.update(options or {})
        from hybridgl.spec import ModelSpec

        ModelSpec(sam=None).with_given(self._given)  # a bad option fails here
        self.gem_dtype: str | None = gem_dtype if gem else None
        self._reader: Store | None = None
        self.last_removed: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ model
    def _expected_spec(self, stored: dict[str, Any] | None, *, need_sam: bool) -> Any:
        """The spec this index's segmenter is built from: the index's own (from its
        fingerprint; the defaults for a new index) with the given options applied."""
        from hybridgl.spec import ModelSpec

        base = fpmod.spec_of_fingerprint(stored) if stored else ModelSpec()
        spec = base.with_given(self._given)
        if spec.sam is None:
            spec = spec.with_options(sam=base.sam or "vit_h")
        return spec if need_sam else spec.with_options(sam=None)

    def _expected_fingerprint(
        self, stored: dict[str, Any] | None, *, need_sam: bool
    ) -> dict[str, Any]:
        """The fingerprint the options ask for, without loading a model."""
        spec = self._expected_spec(stored, need_sam=True)
        return fpmod.fingerprint_of_spec(spec, int((stored or {}).get("dim", 0)))

    def _build_segmenter(self, stored: dict[str, Any] | None, *, need_sam: bool) -> Any:
        from hybridgl.segmenter import Segmenter

        return Segmenter.from_spec(self._expected_spec(stored, need_sam=need_sam))

    def segmenter(self, store: Store | None = None, *, need_sam: bool = False) -> Any:
        """The segmenter, built (and checked against the index's fingerprint) on first use."""
        stored = store.fingerprint if store is not None else None
        if self._seg is None:
            fp = self._expected_fingerprint(stored, need_sam=need_sam)
            if stored is not None:
                fp["dim"] = stored["dim"]
                fpmod.check(stored, fp, self.db, check_sam=need_sam)
            self._seg = self._build_segmenter(stored, need_sam=need_sam)
        elif need_sam and getattr(self._seg, "sam", None) is None:
            if (
                "sam" not in self._given
                and stored is None
                and getattr(self._seg, "spec", None) is None
            ):
                raise ValueError("this Index's segmenter has no SAM: pass proposals_from")
            self._seg = self._build_segmenter(stored, need_sam=True)
        if stored is not None:
            current = fpmod.fingerprint_of_segmenter(self._seg)
            if not need_sam:
                current["sam"] = stored.get("sam")
            fpmod.check(stored, current, self.db, check_sam=need_sam)
        return self._seg

    def _spec(self, *, need_sam: bool) -> Any:
        """How Ray workers build the same segmenter as this index's (checked) one."""
        spec = getattr(self._seg, "spec", None)
        if spec is None:
            stored = self._reader.fingerprint if self._reader is not None else None
            spec = self._expected_spec(stored, need_sam=need_sam)
        if need_sam and spec.sam is None:
            spec = spec.with_options(sam=self._given.get("sam") or "vit_h")
        elif not need_sam:
            spec = spec.with_options(sam=None)
        return spec.with_driver_env()

    def _current_fingerprint(self, need_sam: bool) -> dict[str, Any]:
        seg = self.segmenter(None, need_sam=need_sam)
        fp = fpmod.fingerprint_of_segmenter(seg)
        if fp["sam"] is None:
            fp["sam"] = self._given.get("sam") or "vit_h"
        return fp

    # ------------------------------------------------------------------ reading
    def check(self) -> dict[str, Any]:
        """Open the index and check it against this segmenter; returns its fingerprint.

        Raises:
            IndexStoreError: missing or non-index database.
            FingerprintMismatch: the index was built with other models or options.
        """
        store = self._store()
        self.segmenter(store, need_sam=False)
        return store.fingerprint

    def image_path(self, image_id: str) -> str | None:
        """The indexed file of ``image_id`` (None when the index has no such image)."""
        row = self.image_record(image_id)
        return row["path"] if row else None

    def image_record(self, image_id: str) -> dict[str, Any] | None:
        """``{"path", "sha256", "size", "roots"}`` of ``image_id`` (None: no such image):
        what :func:`hybridgl.search.files.read_indexed_file` checks before reading it."""
        from hybridgl.search.store import sql_str

        store = self._store()
        rows = (
            store.snapshot()[IMAGES]
            .search()
            .where(f"image_id = {sql_str(image_id)}")
            .select(["path", "sha256", "size"])
            .limit(1)
            .to_arrow()
            .to_pylist()
        )
        return {**rows[0], "roots": store.roots} if rows else None

    def _store(self) -> Store:
        if self._reader is None:
            self._reader = Store(self.db)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def stats(self) -> dict[str, Any]:
        """Counts, fingerprint, failures, ANN state and bytes on disk."""
        store = self._store()
        snap = store.snapshot()
        props = snap[PROPOSALS]
        fails = snap[FAILURES].to_arrow().to_pylist()
        out: dict[str, Any] = {
            "db": self.db,
            "images": snap[IMAGES].count_rows(),
            "proposals": props.count_rows(),
            "failures": len(fails),
            "failed": [{"path": r["path"], "error": r["error"]} for r in fails[:100]],
            "fingerprint": store.fingerprint,
            "model": fpmod.describe(store.fingerprint),
            "ann_index": _has_vector_index(props),
            "commit": snap["seq"],
        }
        if not is_remote(self.db):
            out["bytes"] = sum(f.stat().st_size for f in Path(self.db).rglob("*") if f.is_file())
        return out

    def search(
        self,
        expression: str,
        top: int = 20,
        *,
        rerank: int | None = None,
        min_score: float | None = None,
        top_k: int = 3,
        guidance: bool = True,
    ) -> SearchResults:
        """Find the images (and the region in each) that ``expression`` describes.

        Args:
            expression: English referring expression.
            top: most hits to return.
            rerank: how many images (best by stage 1) get the full method; default ``top``.
            min_score: drop hits whose similarity (cosine) is below it.
            top_k: candidates kept in each hit's prediction.
            guidance: spatial guidance in stage 2 (needs GEM tokens in the index).

        Returns:
            The hits, best first (at most ``min(top, rerank)``), with the search's facts
            (:class:`SearchResults`).
        """
        import torch

        from hybridgl import guidance as gd

        if not isinstance(expression, str) or not expression.strip():
            raise ExpressionError("expression is empty")
        if top < 1:
            raise ValueError("top must be >= 1")
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        if min_score is not None and not np.isfinite(min_score):
            raise ValueError(f"min_score must be a finite number, got {min_score!r}")
        m = int(rerank) if rerank is not None else int(top)
        if m < 1:
            raise ValueError("rerank must be >= 1")
        t0 = time.perf_counter()
        store = self._store()
        snap = store.snapshot()  # a damaged index fails here, before any model loads
        seg = self.segmenter(store, need_sam=False)
        parse = seg.parse(expression)
        with torch.no_grad():
            f_text = text_embedding(seg, parse).float().cpu()
        t1 = time.perf_counter()
        best = stage1(snap[PROPOSALS], f_text.numpy(), m)
        t2 = time.perf_counter()
        ids = [i for i, _ in best]
        images, props = fetch_images(snap, ids)
        t3 = time.perf_counter()
        hits: list[SearchHit] = []
        for image_id in ids:
            row = images.get(image_id)
            if row is None:  # pragma: no cover - the snapshot holds both or neither
                continue
            state = state_from_rows(row, props.get(image_id, []))
            has_gem = row.get("gem_dtype") in GEM_DTYPES
            with torch.no_grad():
                pred = _score(seg, state, parse, top_k, guidance and has_gem)
            if not pred.found or pred.index is None:
                continue
            cos = gd.clip_logits(state.features, f_text, 1.0)
            hits.append(
                SearchHit(
                    path=row["path"],
                    image_id=image_id,
                    prediction=pred,
                    similarity=float(cos[pred.index]),
                    stage1_similarity=float(cos.max()),
                    width=int(row["width"]),
                    height=int(row["height"]),
                    candidate_masks=[state.masks[c.index] for c in pred.candidates],
                    sha256=str(row["sha256"]),
                    size=None if row.get("size") is None else int(row["size"]),
                    roots=store.roots,
                )
            )
        t4 = time.perf_counter()
        if min_score is not None:
            hits = [h for h in hits if h.similarity >= min_score]
        hits.sort(key=lambda h: (-h.similarity, -h.stage1_similarity, h.path))
        hits = hits[:top]
        for r, h in enumerate(hits, start=1):
            h.rank = r
        return SearchResults(
            hits,
            expression=expression,
            parse=parse.to_dict(),
            commit=snap["seq"],
            reranked=len(ids),
            timings={
                "text": t1 - t0,
                "stage1": t2 - t1,
                "fetch": t3 - t2,
                "stage2": t4 - t3,
                "total": time.perf_counter() - t0,
            },
        )

    # ------------------------------------------------------------------ writing
    def _open_writer(self, *, need_sam: bool, rebuild: bool) -> Store:
        store = Store(
            self.db,
            create=True,
            writer=True,
            fingerprint=lambda: self._current_fingerprint(need_sam),
        )
        try:
            if rebuild and not store.created:
                # --rebuild: start the index again with the models this run asks for
                if self._seg is None:
                    self._seg = self._build_segmenter(store.fingerprint, need_sam=need_sam)
                fp = fpmod.fingerprint_of_segmenter(self._seg)
                if fp["sam"] is None:
                    fp["sam"] = self._given.get("sam") or store.fingerprint.get("sam") or "vit_h"
                store.drop_all(fp)
            self.segmenter(store, need_sam=need_sam)
        except BaseException:
            store.close()
            raise
        return store

    def add(
        self,
        paths: Iterable[str | os.PathLike] | str | os.PathLike,
        progress: bool = True,
        *,
        proposals_from: str | os.PathLike | None = None,
        prune: bool = False,
        rebuild: bool = False,
        commit_every: int = 32,
        commit_seconds: float = 20.0,
        on_failure: Callable[[str, str], None] | None = None,
        engine: Any = None,
    ) -> AddReport:
        """Index images: folders (recursive), image files and list files.

        Unchanged images (same SHA-256, same proposals) are skipped; changed ones are
        re-encoded; unreadable ones are recorded in the ``failures`` table and skipped.
        Work is committed every ``commit_every`` images or ``commit_seconds``, so an
        interrupted run loses at most one batch and the next run resumes.

        Args:
            paths: what to index.
            progress: show a progress bar on stderr.
            proposals_from: a COCO instances JSON whose masks replace SAM's proposals.
            prune: remove entries whose file no longer exists.
            rebuild: empty the index first when it was built with other models.
            on_failure: called with ``(path, error)`` for each image that failed.
            engine: :class:`hybridgl.jobs.engine.EngineOptions`; ``engine="ray"`` encodes
                the images on Ray actors (one model each) and writes their rows here.
        """
        t0 = time.perf_counter()
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files, listed_missing = collect_images(paths)
        coco = CocoProposals(proposals_from) if proposals_from is not None else None
        report = AddReport()
        store = self._open_writer(need_sam=coco is None, rebuild=rebuild)
        try:
            from hybridgl.search.files import roots_of

            # the folders whose files the index may serve back (search/files.py)
            store.add_roots(roots_of(paths, (f for f in files if is_text(str(f)))))
            self._add(
                store,
                files,
                listed_missing,
                coco,
                prune,
                progress,
                commit_every,
                commit_seconds,
                report,
                on_failure,
                engine,
            )
            if store_rows(store) >= AUTO_ANN_ROWS and not _has_vector_index(
                store.latest(PROPOSALS)
            ):
                build_ann(store)
                store.commit()  # publish the indexed table versions to readers
                report.ann_built = True
        finally:
            store.close()
            self.close()  # the next read sees this run's commits
        report.seconds = time.perf_counter() - t0
        return report

    def _add(
        self,
        store: Store,
        files: list[Path],
        listed_missing: list[tuple[str, str]],
        coco: CocoProposals | None,
        prune: bool,
        progress: bool,
        commit_every: int,
        commit_seconds: float,
        report: AddReport,
        on_failure: Callable[[str, str], None] | None,
        engine: Any = None,
    ) -> None:
        from hybridgl.images import load_image

        seg = self.segmenter(store, need_sam=coco is None)
        use_ray = engine is not None and getattr(engine, "engine", "local") == "ray"
        units: list[Any] = []
        snap = store.snapshot()
        existing = {
            r["path"]: r
            for r in snap[IMAGES]
            .search()
            .select(["image_id", "path", "sha256", "proposals_key", "gem_dtype"])
            .limit(None)
            .to_arrow()
            .to_pylist()
        }
        delete_ids: list[str] = []
        image_rows: list[dict[str, Any]] = []
        prop_parts: list[dict[str, list[Any]]] = []
        failures: list[tuple[str, str]] = []
        done_paths: list[str] = []
        last_commit = time.monotonic()
        wanted_gem = self.gem_dtype or "none"

        def fail(path: str, error: str) -> None:
            path, error = safe_text(path), safe_text(error)  # the failures table is UTF-8
            failures.append((path, error))
            report.failed.append((path, error))
            bar.write(show(f"hybridgl: failed {path}: {error}"), file=sys.stderr)
            if on_failure is not None:
                on_failure(path, error)

        batch = uuid.uuid4().hex  # names the pending batch: a retried commit publishes it once

        def flush() -> None:
            nonlocal last_commit, batch
            if delete_ids or image_rows or failures or done_paths:
                store.commit(
                    delete_ids=delete_ids,
                    images=_images_table(image_rows) if image_rows else None,
                    proposals=_proposals_table(prop_parts, store.dim) if prop_parts else None,
                    failures=_failures_table(failures) if failures else None,
                    clear_failures=done_paths,
                    batch=batch,
                )
            batch = uuid.uuid4().hex
            delete_ids.clear()
            image_rows.clear()
            prop_parts.clear()
            failures.clear()
            done_paths.clear()
            last_commit = time.monotonic()

        def accept(image_row: dict[str, Any], props: Any, path: str, replace: bool) -> None:
            if replace:  # an older version of the image: its rows go in the same commit
                delete_ids.append(image_row["image_id"])
            image_rows.append(image_row)
            prop_parts.append(props)
            done_paths.append(path)
            report.indexed += 1
            report.proposals += image_row["num_proposals"]

        def advance() -> None:
            """One file done: commit when the batch is big or old enough."""
            bar.update(1)
            if len(image_rows) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                flush()

        bar = _progress(len(files), progress)
        interrupted = False
        try:
            if prune:
                for path, row in existing.items():
                    if not Path(path).is_file():
                        delete_ids.append(row["image_id"])
                        report.pruned += 1
            for path, error in listed_missing:
                fail(path, error)
            for f in files:
                path = str(f)
                bar.set_postfix_str(
                    f"new {report.indexed} skipped {report.skipped} proposals {report.proposals} "
                    f"failed {len(report.failed)}",
                    refresh=False,
                )
                if not is_text(path):
                    fail(
                        path,
                        "the file name is not valid UTF-8 (its undecodable bytes are shown as "
                        "\\xNN); the index stores names as text: rename the file (e.g. with convmv)",
                    )
                    bar.update(1)
                    continue
                try:
                    data = f.read_bytes()
                    stat = f.stat()
                except OSError as e:
                    fail(path, f"cannot read: {e.strerror or e}")
                    bar.update(1)
                    continue
                sha = hashlib.sha256(data).hexdigest()
                image_id = image_id_for(path)
                try:
                    pkey = coco.key(f) if coco is not None else "sam"
                except ImageError as e:
                    fail(path, str(e))
                    bar.update(1)
                    continue
                prev = existing.get(path)
                if (
                    prev is not None
                    and prev["sha256"] == sha
                    and prev["proposals_key"] == pkey
                    and prev["gem_dtype"] == wanted_gem
                ):
                    report.skipped += 1
                    bar.update(1)
                    continue
                if use_ray:
                    from hybridgl.jobs.units import WorkUnit

                    entry = coco.entry(f) if coco is not None else None
                    units.append(
                        WorkUnit(
                            key=path,
                            rows=[{"path": path}],
                            data={
                                "path": path,
                                "image_id": image_id,
                                "proposals_key": pkey,
                                "replace": prev is not None,
                                "coco": entry,
                            },
                        )
                    )
                    continue
                try:
                    image = load_image(data)
                    masks = coco.masks(f, *image.shape[:2]) if coco is not None else None
                    state = _encode_image(seg, image, masks)
                except ImageError as e:
                    fail(path, str(e).replace("<bytes>", path))
                    bar.update(1)
                    continue
                except (ValueError, RuntimeError) as e:
                    fail(path, f"{type(e).__name__}: {e}")
                    bar.update(1)
                    continue
                image_row, props = _rows_for(
                    image_id,
                    f,
                    sha,
                    stat,
                    state,
                    "given" if coco is not None else "sam",
                    pkey,
                    self.gem_dtype,
                )
                accept(image_row, props, path, replace=prev is not None)
                advance()
            if units:
                from hybridgl.jobs.engine import run_units

                def sink(unit: Any, records: list[dict[str, Any]]) -> None:
                    rec = records[0]
                    path = unit.data["path"]
                    if rec.get("error"):
                        fail(path, str(rec["error"]))
                    else:
                        image_row, props = decode_rows(rec)
                        accept(image_row, props, path, replace=bool(unit.data["replace"]))
                    advance()

                run_units(
                    units,
                    IndexTask(self.gem_dtype, "given" if coco is not None else "sam"),
                    sink,
                    spec=self._spec(need_sam=coco is None),
                    options=engine,
                )
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            bar.set_postfix_str(
                f"new {report.indexed} skipped {report.skipped} proposals {report.proposals} "
                f"failed {len(report.failed)}"
            )
            bar.close()
            if interrupted:
                flush()  # keep the finished images: the next run resumes after them
        flush()

    def remove(
        self, items: Iterable[str | os.PathLike] | str | os.PathLike, *, dry_run: bool = False
    ) -> int:
        """Remove images by path (files or folders, as indexed) or by image id.

        An empty item, ``.``, ``..`` or a filesystem root is refused (it would name every
        image under the current folder, or all of them): name the folder itself.

        Args:
            dry_run: change nothing; :attr:`last_removed` lists what would go.

        Returns:
            How many images were removed (or would be, with ``dry_run``); their
            ``(image_id, path)`` are in :attr:`last_removed`.

        Raises:
            ValueError: an empty, ``.``/``..`` or root item.
        """
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        wanted = [os.fspath(i) for i in items]
        prefixes = []
        for w in wanted:
            text = w.strip()
            norm = os.path.normpath(text) if text else ""
            if not text or norm == "." or all(part == ".." for part in Path(norm).parts):
                raise ValueError(
                    f"refusing to remove {w!r}: it would remove every image under the current "
                    "folder (or above it); give the folder or file by name"
                )
            a = str(Path(text).absolute())
            if Path(a).parent == Path(a):
                raise ValueError(f"refusing to remove {w!r}: a filesystem root")
            prefixes.append((text, a, a.rstrip("/") + "/"))
        with Store(self.db, writer=True) as store:
            rows = (
                store.snapshot()[IMAGES]
                .search()
                .select(["image_id", "path"])
                .limit(None)
                .to_arrow()
                .to_pylist()
            )
            found = [
                (r["image_id"], r["path"])
                for r in rows
                if any(
                    r["image_id"] == text or r["path"] == a or r["path"].startswith(folder)
                    for text, a, folder in prefixes
                )
            ]
            if found and not dry_run:
                store.commit(delete_ids=[i for i, _ in found])
        self.close()
        self.last_removed = found
        return len(found)

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the index for what a crash can leave (``hybridgl index --check``) and,
        with ``repair``, fix it without re-encoding (:mod:`hybridgl.search.check`).

        Holds the writer lock (a running index run makes it an ``IndexBusyError``).

        Returns:
            ``{"ok", "problems", "uncommitted"}``, plus ``"repair"`` (what was done) and
            ``"ok_after_repair"`` / ``"problems_after_repair"`` when it repaired.
        """
        from hybridgl.search.check import check_index, repair_index

        self.close()
        with Store(self.db, writer=True, recover=False) as store:
            report = check_index(store)
            if repair and not report["ok"]:
                report["repair"] = repair_index(store)
                after = check_index(store)
                report["ok_after_repair"] = after["ok"]
                report["problems_after_repair"] = after["problems"]
        return report

    def optimize(self, *, ann: bool | None = None) -> dict[str, Any]:
        """Compact the tables and build the IVF index (``ann=None``: when big enough).

        Returns:
            ``{"ann_built": bool, "proposals": rows}``.
        """
        with Store(self.db, writer=True) as store:
            for name in (IMAGES, PROPOSALS, FAILURES):
                store.latest(name).optimize()
            rows = store_rows(store)
            built = False
            if ann or (ann is None and rows >= MIN_ANN_ROWS):
                if rows < MIN_ANN_ROWS:
                    raise IndexStoreError(
                        f"an IVF index needs at least {MIN_ANN_ROWS} proposals to train; "
                        f"this index has {rows} (exact search is fast at that size)"
                    )
                build_ann(store)
                built = True
            store.commit()
        self.close()
        return {"ann_built": built, "proposals": rows}


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
