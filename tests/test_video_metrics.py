"""DAVIS 2017 J and F on small masks, every value worked out by hand (see the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from hybridgl.video.metrics import boundary_f, boundary_map, disk, j_and_f, region_j


def block(size, rows, cols):
    m = np.zeros(size, bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def test_region_j():
    a = block((4, 4), (0, 1), (0, 1))  # 4 pixels
    b = block((4, 4), (0, 1), (0, 2))  # 6 pixels, 4 shared
    assert region_j(a, b) == pytest.approx(4 / 6)
    empty = np.zeros((4, 4), bool)
    assert region_j(empty, empty) == 1.0
    assert region_j(a, empty) == 0.0
    with pytest.raises(ValueError):
        region_j(a, np.zeros((3, 4), bool))


def test_boundary_map_is_daviss_seg2bmap():
    # a 2 x 2 block at rows 1-2, cols 1-2: a pixel is on the boundary when it differs from
    # its right, lower or lower-right neighbour: the ring of the box rows 0-2, cols 0-2
    b = boundary_map(block((5, 5), (1, 2), (1, 2)))
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    assert np.array_equal(b, expected)


def test_disk():
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13  # x^2 + y^2 <= 4 on a 5 x 5 grid


def test_boundary_f_by_hand():
    size = (10, 10)  # diagonal 14.1 px: tolerance ceil(0.008 * 14.1) = 1 px (a plus)
    m = block(size, (2, 4), (2, 4))  # boundary: the 12-pixel ring of rows 1-4, cols 1-4
    # shifted one column: every ring pixel is within one pixel of the other ring
    assert boundary_f(m, block(size, (2, 4), (3, 5))) == 1.0
    assert region_j(m, block(size, (2, 4), (3, 5))) == pytest.approx(6 / 12)
    # shifted three columns: 6 of the 12 ring pixels are within reach, both ways
    g = block(size, (2, 4), (5, 7))
    assert boundary_f(m, g) == pytest.approx(0.5)
    assert region_j(m, g) == 0.0
    # two columns at 1 px tolerance: short of 1; at 100 x 100 (tolerance ceil(1.13) = 2): 1
    assert boundary_f(m, block(size, (2, 4), (4, 6))) < 1.0
    big = (100, 100)
    assert boundary_f(block(big, (2, 4), (2, 4)), block(big, (2, 4), (4, 6))) == 1.0
    assert boundary_f(m, block(size, (2, 4), (4, 6)), bound_th=2) == 1.0


def test_empty_masks():
    empty = np.zeros((10, 10), bool)
    m = block((10, 10), (2, 4), (2, 4))
    assert boundary_f(empty, empty) == 1.0  # P = R = 1
    assert boundary_f(empty, m) == 0.0  # P = 1, R = 0
    assert boundary_f(m, empty) == 0.0  # P = 0, R = 1
    assert boundary_f(m, m) == 1.0


def test_j_and_f():
    size = (10, 10)
    m = block(size, (2, 4), (2, 4))
    pairs = [(m, m), (m, block(size, (2, 4), (5, 7)))]
    r = j_and_f(pairs)
    assert r["J"] == pytest.approx((1 + 0) / 2)
    assert r["F"] == pytest.approx((1 + 0.5) / 2)
    assert r["J&F"] == pytest.approx((0.5 + 0.75) / 2)
    with pytest.raises(ValueError):
        j_and_f([])
