"""Ground-truth masks of COCO-style annotations: polygons, uncompressed and compressed
RLE, rasterised at the image's size with pycocotools (the evaluation's one mask rule)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from hybridgl.errors import DataError


def _rle_of(segm: Any, height: int, width: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        polys = []
        for p in segm:
            if not isinstance(p, (list, tuple)):
                raise DataError(f"polygon is not a list of numbers: {str(p)[:40]}")
            if len(p) >= 6 and len(p) % 2 == 0:
                polys.append([float(v) for v in p])
        if not polys:
            raise DataError("segmentation has no polygon with at least 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(segm, dict):
        size = segm.get("size")
        counts = segm.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
            raise DataError("RLE segmentation needs 'size' [h, w] and 'counts'")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise DataError(f"RLE size {list(size)} differs from the image size {[height, width]}")
        if isinstance(counts, list):  # uncompressed RLE (iscrowd annotations)
            return mask_utils.frPyObjects(
                {"size": [height, width], "counts": counts}, height, width
            )
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [height, width], "counts": counts}
    raise DataError(f"unsupported segmentation type {type(segm).__name__}")


def lookup_ann_mask(
    annotations: Mapping[Any, dict[str, Any]],
    ann_id: Any,
    height: int,
    width: int,
    where: Any = None,
) -> np.ndarray:
    """``(height, width)`` bool mask of annotation ``ann_id`` of ``annotations``.

    Raises:
        DataError: unknown ``ann_id`` (the message names ``where``, the file, if given) or
            an unusable segmentation (the message names the annotation).
    """
    ann = annotations.get(ann_id)
    if ann is None:
        raise DataError(f"unknown ann_id {ann_id!r}" + (f" (not in {where})" if where else ""))
    try:
        return annotation_to_mask(ann, height, width)
    except DataError as e:
        raise DataError(f"annotation {ann_id!r}: {e}") from None


def annotation_to_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """COCO ``annToMask``: the ``(height, width)`` bool mask of one annotation.

    Polygons (several polygons of one object form one mask), compressed RLE and
    uncompressed RLE (as used by ``iscrowd`` annotations) are accepted.

    Raises:
        DataError: no or unusable segmentation.
    """
    segm = ann.get("segmentation")
    if segm is None:
        raise DataError("annotation has no segmentation")
    try:
        from pycocotools import mask as mask_utils

        rle = _rle_of(segm, height, width)
        with warnings.catch_warnings():  # pycocotools vs numpy 2 copy-keyword notice
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except DataError:
        raise
    except Exception as e:  # pycocotools raises plain Exceptions on malformed input
        raise DataError(f"segmentation cannot be decoded: {e}") from None
    if m.ndim == 3:
        m = m.any(axis=2)
    return np.ascontiguousarray(m.astype(bool))
