"""Overlays and image writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridgl.viz import overlay, save_image


def _image(h: int = 40, w: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_overlay_tints_mask_only_and_keeps_input() -> None:
    img = _image()
    before = img.copy()
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[10:20, 10:30] = True
    out = overlay(img, mask, color=(0, 255, 0), alpha=0.5)
    np.testing.assert_array_equal(img, before)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], img[~mask])
    inner = out[12:18, 12:28].astype(int)
    expected = (img[12:18, 12:28].astype(float) * 0.5 + np.array([0, 255, 0]) * 0.5).round()
    assert np.abs(inner - expected).max() <= 1
    # the outline has the pure colour
    assert tuple(out[10, 15]) == (0, 255, 0)


def test_overlay_alpha_zero_and_empty_mask_change_nothing() -> None:
    img = _image()
    mask = np.ones(img.shape[:2], dtype=bool)
    assert (overlay(img, np.zeros_like(mask)) == img).all()
    assert (overlay(img, None) == img).all()
    out = overlay(img, mask, alpha=0.0)
    inner = out[1:-1, 1:-1]
    np.testing.assert_array_equal(inner, img[1:-1, 1:-1])


def test_overlay_draws_box_and_label() -> None:
    img = np.zeros((50, 80, 3), dtype=np.uint8)
    out = overlay(img, None, box=(10, 20, 30, 15), color=(255, 0, 0))
    assert tuple(out[20, 25]) == (255, 0, 0)  # top edge
    assert tuple(out[35, 25]) == (255, 0, 0)  # bottom edge at y + h
    assert tuple(out[27, 40]) == (255, 0, 0)  # right edge at x + w
    assert tuple(out[27, 25]) == (0, 0, 0)  # inside untouched
    labelled = overlay(img, None, box=(10, 20, 30, 15), label="the cat", color=(255, 0, 0))
    assert (labelled != out).any()
    assert (labelled > 128).all(axis=2).any()  # light text pixels
    # a label without a box, on a tiny image, still fits
    small = overlay(np.zeros((8, 8, 3), np.uint8), None, label="a long label\nwith newline")
    assert small.shape == (8, 8, 3)


def test_overlay_zero_box_is_not_drawn() -> None:
    img = _image()
    np.testing.assert_array_equal(overlay(img, None, box=(0, 0, 0, 0)), img)


@pytest.mark.parametrize(
    ("image", "mask", "alpha"),
    [
        (np.zeros((4, 4), np.uint8), None, 0.5),
        (np.zeros((4, 4, 3), np.float32), None, 0.5),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), bool), 0.5),
        (np.zeros((4, 4, 3), np.uint8), None, 1.5),
    ],
)
def test_overlay_rejects_bad_input(
    image: np.ndarray, mask: np.ndarray | None, alpha: float
) -> None:
    with pytest.raises(ValueError):
        overlay(image, mask, alpha=alpha)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".webp"])
def test_save_image(tmp_path: Path, ext: str) -> None:
    img = _image()
    path = save_image(img, tmp_path / f"out{ext}")
    with Image.open(path) as loaded:
        assert loaded.size == (60, 40)
        if ext == ".png":
            np.testing.assert_array_equal(np.asarray(loaded.convert("RGB")), img)
    assert [p.name for p in tmp_path.iterdir()] == [f"out{ext}"]


def test_save_image_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown extension"):
        save_image(_image(), tmp_path / "out.xyz")
