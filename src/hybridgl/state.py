"""What a :class:`~hybridgl.segmenter.Segmenter` knows about one image: :class:`ImageState`.

Everything here depends only on the image (proposals, hybrid features, GEM tokens), so a
state is computed once and reused for every expression; the working-resolution helpers
(:func:`working_size`, :func:`downscale_image`) decide the size it is computed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from hybridgl.masks import resize_masks

__all__ = ["ImageState", "downscale_image", "working_size"]


@dataclass
class ImageState:
    """Everything that depends only on the image (cacheable, reusable across expressions).

    Build it with :meth:`Segmenter.encode_image`; treat it as immutable once built (it is
    shared between threads and caches). Images larger than the working resolution
    (``MethodConfig.max_side``) keep the input ``image`` but have their proposals and
    features computed on a downscaled copy: ``masks`` are then at the working resolution
    ``(h, w)``; :meth:`input_mask` / :meth:`input_masks` bring them back to ``(H, W)``,
    and ``boxes`` are those of the masks brought back.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB at the input resolution.
        masks: ``(N, h, w)`` bool proposals at the working resolution (``(h, w) == (H, W)``
            unless the image's long side exceeds ``max_side``).
        boxes: ``(N, 4)`` float64 XYWH boxes of the proposals at the input resolution
            (the boxes of :meth:`input_mask`).
        features: ``(N, E)`` float32 hybrid features (unnormalised).
        gem_tokens: ``(G*G, E)`` float32 GEM patch tokens, L2-normalised.
        gem_grid: ``G`` (28 at 448 px).
        source: ``"sam"`` or ``"given"``.
        timings: seconds spent in each image stage (``proposals``, ``features``, ``gem``).
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    features: torch.Tensor
    gem_tokens: torch.Tensor
    gem_grid: int
    source: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def height(self) -> int:
        """H, the input image's height."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """W, the input image's width."""
        return int(self.image.shape[1])

    @property
    def work_size(self) -> tuple[int, int]:
        """``(h, w)``: the working resolution of ``masks`` (equal to ``(H, W)`` unless capped)."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def num_proposals(self) -> int:
        return int(self.masks.shape[0])

    @property
    def has_pixels(self) -> bool:
        """True when at least one proposal is not empty.

        Cheap: an empty mask has the box ``(0, 0, 0, 0)``, so the masks themselves are only
        scanned when every box is zero (no proposal, or only empty or one-pixel ones).
        """
        if self.num_proposals == 0:
            return False
        return bool(np.any(self.boxes != 0)) or bool(self.masks.any())

    def input_mask(self, index: int) -> np.ndarray:
        """Proposal ``index`` at the input resolution: ``(H, W)`` bool, a new array.

        Upsampled (bilinear, threshold 0.5) when the state has a smaller working resolution.
        """
        m = self.masks[index]
        if self.work_size == (self.height, self.width):
            return np.array(m, dtype=bool, copy=True)
        return resize_masks(m[None], self.height, self.width)[0]

    def input_masks(self) -> np.ndarray:
        """All proposals at the input resolution: ``(N, H, W)`` bool (a copy; memory!)."""
        if self.work_size == (self.height, self.width):
            return np.array(self.masks, dtype=bool, copy=True)
        return resize_masks(self.masks, self.height, self.width)

    def nbytes(self) -> int:
        """Approximate memory held, for cache accounting."""
        return int(
            self.image.nbytes
            + self.masks.nbytes
            + self.boxes.nbytes
            + self.features.numel() * 4
            + self.gem_tokens.numel() * 4
        )


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(h, w)`` of the working resolution: the long side scaled down to ``max_side``.

    Images whose long side is at most ``max_side`` (or any image when it is None) keep
    their size; otherwise both sides are scaled by ``max_side / max(H, W)`` and rounded
    (at least 1 pixel).
    """
    long_side = max(height, width)
    if max_side is None or long_side <= max_side:
        return height, width
    scale = max_side / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def downscale_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(height, width, 3)`` uint8 by area averaging."""
    if image.shape[:2] == (height, width):
        return image
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
