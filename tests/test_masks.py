"""Mask formats: RLE, polygons, PNG and the box convention."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hybridgl.masks import (
    mask_to_box,
    mask_to_png_bytes,
    mask_to_polygons,
    mask_to_rle,
    png_to_mask,
    polygons_to_mask,
    rle_to_mask,
    save_mask_png,
)
from hybridgl.proposal_files import read_proposals_npy

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO_ANN = DATA / "coco-mini" / "annotations" / "instances_val2017.json"


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


HAND_MASKS = {
    "empty": np.zeros((7, 9), dtype=bool),
    "full": np.ones((4, 6), dtype=bool),
    "one_pixel": _rect(5, 5, 2, 3, 3, 4),
    "corner_pixel": _rect(5, 5, 0, 1, 0, 1),
    "rect": _rect(30, 40, 10, 20, 5, 15),
    "border_rect": _rect(12, 10, 0, 12, 6, 10),
    "line": _rect(8, 8, 3, 4, 0, 8),
    "two_rects": _rect(20, 20, 1, 5, 1, 5) | _rect(20, 20, 10, 18, 12, 19),
}


@pytest.fixture(scope="module")
def coco_masks() -> list[np.ndarray]:
    if not COCO_ANN.is_file():
        pytest.skip(f"COCO mini annotations not found at {COCO_ANN}")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(COCO_ANN))
    anns = [a for a in coco.loadAnns(coco.getAnnIds()) if not a.get("iscrowd")]
    masks = [coco.annToMask(a).astype(bool) for a in anns[:200]]
    return [m for m in masks if m.any()]


# ---------------------------------------------------------------- RLE


@pytest.mark.parametrize("name", sorted(HAND_MASKS))
def test_rle_round_trip_hand_masks(name: str) -> None:
    m = HAND_MASKS[name]
    rle = mask_to_rle(m)
    assert rle["size"] == [m.shape[0], m.shape[1]]
    assert isinstance(rle["counts"], str)
    json.dumps(rle)
    back = rle_to_mask(rle)
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, m)


def test_rle_is_pycocotools_compatible() -> None:
    m = HAND_MASKS["two_rects"]
    rle = mask_to_rle(m)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), m)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == m.sum()


def test_rle_accepts_bytes_and_uncompressed_counts() -> None:
    m = HAND_MASKS["rect"]
    rle = mask_to_rle(m)
    np.testing.assert_array_equal(rle_to_mask({**rle, "counts": rle["counts"].encode()}), m)
    # uncompressed: column-major run lengths starting with zeros
    flat = m.flatten(order="F").astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    np.testing.assert_array_equal(rle_to_mask({"size": list(m.shape), "counts": runs}), m)


def test_rle_round_trip_coco(coco_masks: list[np.ndarray]) -> None:
    for m in coco_masks:
        np.testing.assert_array_equal(rle_to_mask(mask_to_rle(m)), m)


@pytest.mark.parametrize(
    "bad",
    [None, {}, {"size": [2, 2]}, {"size": [2], "counts": "0"}, {"size": [2, 2], "counts": [1, 1]}],
)
def test_rle_rejects_bad_input(bad: object) -> None:
    with pytest.raises(ValueError):
        rle_to_mask(bad)  # type: ignore[arg-type]


def test_mask_must_be_2d() -> None:
    with pytest.raises(ValueError):
        mask_to_rle(np.zeros((2, 2, 2), dtype=bool))


# ---------------------------------------------------------------- polygons


@pytest.mark.parametrize("name", sorted(HAND_MASKS))
def test_polygons_exact_on_rectangles(name: str) -> None:
    m = HAND_MASKS[name]
    polys = mask_to_polygons(m)
    json.dumps(polys)
    if not m.any():
        assert polys == []
    for p in polys:
        assert len(p) >= 6 and len(p) % 2 == 0
        assert all(float(v).is_integer() for v in p)  # pixel corners
    np.testing.assert_array_equal(polygons_to_mask(polys, *m.shape), m)
    # pycocotools reads them the same way
    if polys:
        rles = mask_utils.frPyObjects(polys, *m.shape)
        np.testing.assert_array_equal(mask_utils.decode(mask_utils.merge(rles)).astype(bool), m)


def test_rectangle_polygon_is_its_corners() -> None:
    polys = mask_to_polygons(HAND_MASKS["rect"])
    assert len(polys) == 1
    corners = {(polys[0][i], polys[0][i + 1]) for i in range(0, len(polys[0]), 2)}
    assert corners == {(5.0, 10.0), (15.0, 10.0), (15.0, 20.0), (5.0, 20.0)}


def test_two_components_give_two_polygons_largest_first() -> None:
    polys = mask_to_polygons(HAND_MASKS["two_rects"])
    assert len(polys) == 2
    areas = [polygons_to_mask([p], 20, 20).sum() for p in polys]
    assert areas == [56, 16]


def test_staircase_and_diagonal_touch() -> None:
    tri = np.tril(np.ones((12, 12), dtype=bool))
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(tri), 12, 12), tri)
    diag = np.eye(6, dtype=bool)
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(diag), 6, 6), diag)


def test_holes_come_back_filled() -> None:
    ring = _rect(10, 10, 2, 8, 2, 8)
    ring[4:6, 4:6] = False
    back = polygons_to_mask(mask_to_polygons(ring), 10, 10)
    np.testing.assert_array_equal(back, _rect(10, 10, 2, 8, 2, 8))


@pytest.mark.slow
def test_polygons_coco_masks_within_tolerance(coco_masks: list[np.ndarray]) -> None:
    exact = 0
    for m in coco_masks:
        back = polygons_to_mask(mask_to_polygons(m), *m.shape)
        assert not (m & ~back).any(), "a mask pixel was lost"
        inter = (m & back).sum()
        union = (m | back).sum()
        assert inter / union > 0.9
        # what differs is filled holes / diagonal pinches, never more than a sliver
        assert (m ^ back).sum() <= max(4, 0.1 * m.sum())
        exact += int((m == back).all())
    assert exact >= 0.8 * len(coco_masks)


def test_polygons_to_mask_edge_cases() -> None:
    assert not polygons_to_mask([], 4, 5).any()
    assert polygons_to_mask([], 4, 5).shape == (4, 5)
    assert not polygons_to_mask([[0, 0, 1, 1]], 4, 5).any()  # degenerate: ignored
    with pytest.raises(ValueError):
        polygons_to_mask([[0, 0, 1]], 4, 5)
    with pytest.raises(ValueError):
        polygons_to_mask([["a", "b", "c", "d", "e", "f"]], 4, 5)


# ---------------------------------------------------------------- PNG


@pytest.mark.parametrize("name", sorted(HAND_MASKS))
def test_png_round_trip(name: str, tmp_path: Path) -> None:
    m = HAND_MASKS[name]
    data = mask_to_png_bytes(m)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(png_to_mask(data), m)
    path = save_mask_png(m, tmp_path / "sub" / "m.png")
    np.testing.assert_array_equal(png_to_mask(path), m)
    from PIL import Image

    with Image.open(path) as img:
        assert img.mode == "L"
        assert set(np.unique(np.asarray(img)).tolist()) <= {0, 255}


def test_png_to_mask_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        png_to_mask(b"not a png")


# ---------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("name", "box"),
    [
        ("empty", (0, 0, 0, 0)),
        ("full", (0, 0, 5, 3)),
        ("one_pixel", (3, 2, 0, 0)),
        ("corner_pixel", (0, 0, 0, 0)),
        ("rect", (5, 10, 9, 9)),
        ("border_rect", (6, 0, 3, 11)),
        ("line", (0, 3, 7, 0)),
        ("two_rects", (1, 1, 17, 16)),
    ],
)
def test_box_convention(name: str, box: tuple[int, int, int, int]) -> None:
    got = mask_to_box(HAND_MASKS[name])
    assert got == tuple(float(v) for v in box)
    assert all(isinstance(v, float) for v in got)


def test_box_matches_coco_bbox_minus_one(coco_masks: list[np.ndarray]) -> None:
    # pycocotools' toBbox is (x, y, max+1 - x, max+1 - y); SAM's is one less
    for m in coco_masks[:50]:
        coco_box = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))
        x, y, w, h = mask_to_box(m)
        assert (x, y, w + 1, h + 1) == tuple(float(v) for v in coco_box)


# ---------------------------------------------------------------- proposals files


def _npy_header_only(shape: tuple[int, ...], dtype: str = "|b1") -> bytes:
    """A .npy file whose header claims ``shape`` but which holds no data at all."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return b"\x93NUMPY\x01\x00" + buf.getvalue()[8:]


def test_read_proposals_npy_binarises_and_checks_size(tmp_path: Path) -> None:
    soft = np.array([[[0.0, 0.3, 0.51], [1.0, 0.5, 0.7]]], np.float32)  # (1, 2, 3)
    path = tmp_path / "p.npy"
    np.save(path, soft)
    want = np.array([[[False, False, True], [True, False, True]]])
    for source in (path, str(path), path.read_bytes()):
        np.testing.assert_array_equal(read_proposals_npy(source, 2, 3), want)
    np.save(path, soft[0])  # a single (H, W) mask is N = 1
    assert read_proposals_npy(path, 2, 3).shape == (1, 2, 3)
    with pytest.raises(ValueError, match=r"size 2x3 but the image is 3x2"):
        read_proposals_npy(path, 3, 2)


def test_read_proposals_npy_refuses_huge_headers_before_allocating(tmp_path: Path) -> None:
    # a 100-byte file claiming 40 GB of masks (10000 x 2000 x 2000 bool): refused from the
    # header; np.load would first try to allocate the 40 GB
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_header_only((10000, 2000, 2000)))
    assert path.stat().st_size < 200
    with pytest.raises(ValueError, match="10,000 masks, more than the limit"):
        read_proposals_npy(path, 2000, 2000)
    with pytest.raises(ValueError, match="more than the limit"):
        read_proposals_npy(path.read_bytes(), 2000, 2000, max_proposals=20000)
    # a plausible shape whose data is missing: truncated, refused before reading
    path.write_bytes(_npy_header_only((300, 2000, 2000)))
    with pytest.raises(ValueError, match=r"truncated.*1,200,000,000 bytes"):
        read_proposals_npy(path, 2000, 2000)
    # without an image size, the masks themselves must fit the pixel limit
    path.write_bytes(_npy_header_only((1, 20000, 20000)))
    with pytest.raises(ValueError, match="above the limit"):
        read_proposals_npy(path)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.array([[["a", "b"]]]), "dtype <U1"),
        (np.array([[[None, 1]]], dtype=object), "pickles are not accepted"),
        (np.zeros((1, 1, 2), np.complex64), "dtype complex64"),
        (np.zeros((1, 1, 1, 2), bool), r"shape \(1, 1, 1, 2\)"),
    ],
)
def test_read_proposals_npy_refuses_odd_arrays(arr: np.ndarray, match: str, tmp_path: Path) -> None:
    path = tmp_path / "p.npy"
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(ValueError, match=match):
        read_proposals_npy(path, 1, 2)


def test_read_proposals_npy_refuses_nan_and_non_npy(tmp_path: Path) -> None:
    path = tmp_path / "p.npy"
    np.save(path, np.array([[[np.nan, 1.0]]]))
    with pytest.raises(ValueError, match="NaN"):
        read_proposals_npy(path, 1, 2)
    with pytest.raises(ValueError, match="not a .npy file"):
        read_proposals_npy(b"PK\x03\x04 a zip", 1, 2)
    with pytest.raises(ValueError, match="cannot read"):
        read_proposals_npy(tmp_path / "missing.npy", 1, 2)


def test_masks_to_boxes_xywh_matches_mask_to_box(coco_masks: list[np.ndarray]) -> None:
    from hybridgl.masks import masks_to_boxes_xywh

    hand = [HAND_MASKS[k] for k in ("one_pixel", "corner_pixel", "rect", "line", "two_rects")]
    shape = hand[0].shape
    same_size = [m for m in hand if m.shape == shape] + [np.zeros(shape, bool)]
    coco_same = [m for m in coco_masks if m.shape == coco_masks[0].shape][:20]
    for stack in (np.stack(same_size), np.stack(coco_same)):
        got = masks_to_boxes_xywh(stack)
        assert got.dtype == np.float64 and got.shape == (len(stack), 4)
        np.testing.assert_array_equal(got, [mask_to_box(m) for m in stack])
    assert masks_to_boxes_xywh(np.zeros((0, 3, 4), bool)).shape == (0, 4)
    np.testing.assert_array_equal(
        masks_to_boxes_xywh(np.array([[[0, 2], [0, 0]]], np.uint8)), [[1, 0, 0, 0]]
    )
