"""Between an :class:`~hybridgl.state.ImageState` and the index's table rows: the
encoding task a worker runs, the rows it writes and the state rebuilt from them."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.limits import DEFAULT_MAX_PIXELS
from hybridgl.types import Prediction

log = logging.getLogger("hybridgl.search.index")

GEM_DTYPES = ("float16", "float32")


# --------------------------------------------------------------------------- segmenter glue


def _encode_image(seg: Any, image: np.ndarray, proposals: np.ndarray | None) -> Any:
    """``seg.encode_image``: the image's state, without touching the current image.

    The image was loaded under the run's pixel limit (``max_pixels`` of ``Index.add``), so
    the segmenter does not check it again against its own default.
    """
    return seg.encode_image(image, proposals=proposals, max_pixels=None)


def _score(
    seg: Any,
    state: Any,
    parse: Any,
    top_k: int,
    guidance: bool,
    options: dict[str, Any] | None = None,
) -> Prediction:
    """``seg.score(state, parse)``: the full method on a stored state (``options``:
    ``targets`` / ``thresholds``, :func:`hybridgl.targets.target_kwargs`)."""
    return seg.score(state, parse, top_k=top_k, guidance=guidance, **(options or {}))


def _state_class() -> Any:
    from hybridgl.state import ImageState

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

    from hybridgl.search.tables import images_schema

    schema = images_schema()
    return pa.table({f.name: [r[f.name] for r in rows] for f in schema}, schema=schema)


def _proposals_table(parts: list[dict[str, list[Any]]], dim: int) -> Any:
    import pyarrow as pa

    from hybridgl.search.tables import proposals_schema

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

    from hybridgl.search.tables import failures_schema

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

    def __init__(
        self, gem_dtype: str | None, source: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        self.gem_dtype = gem_dtype
        self.source = source
        self.max_pixels = max_pixels

    def run(self, worker: Any, unit: Any) -> list[dict[str, Any]]:
        from hybridgl.eval.annotations import annotation_to_mask
        from hybridgl.images import load_image

        d = unit.data
        path = Path(d["path"])
        try:
            data = path.read_bytes()
            stat = path.stat()
            image = load_image(data, max_pixels=self.max_pixels)
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
