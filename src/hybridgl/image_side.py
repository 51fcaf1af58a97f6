"""The image side of :class:`~hybridgl.segmenter.Segmenter`: proposals, hybrid features and
GEM tokens of an image into an :class:`~hybridgl.state.ImageState` (METHOD.md sections 1 to
3 and 6), and the segmenter's current image.

A mixin: the attributes it reads (models, config, device, locks) are set by
``Segmenter.__init__``.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from hybridgl.config import MethodConfig
from hybridgl.images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from hybridgl.masks import as_proposal_masks, masks_to_boxes_xywh, resize_masks
from hybridgl.models import hybrid_clip
from hybridgl.models.gem import gem_input, gem_patch_tokens
from hybridgl.models.proposals import ProposalBackend, SamV1Backend
from hybridgl.state import ImageState, downscale_image, working_size

if TYPE_CHECKING:
    from open_clip.model import CLIP
    from segment_anything.modeling import Sam

__all__ = ["ImageSide"]


class ImageSide:
    """Proposals and image encoding of the segmenter (see :class:`~hybridgl.Segmenter`)."""

    clip: CLIP
    sam: Sam | None
    config: MethodConfig
    device: torch.device
    dtype: torch.dtype | None
    stats: collections.Counter[str]
    lock: threading.RLock
    last_image_timings: dict[str, float]
    _proposer: ProposalBackend | None
    _sam_lock: threading.Lock
    _state: ImageState | None

    def _autocast(self) -> torch.autocast:
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    @property
    def image_state(self) -> ImageState | None:
        """The state of the current image, or None before :meth:`set_image`."""
        return self._state

    def set_image_state(self, state: ImageState) -> None:
        """Make a previously computed :class:`ImageState` current (no recomputation)."""
        if not isinstance(state, ImageState):
            raise TypeError("set_image_state expects an ImageState")
        with self.lock:
            self._state = state
            self.last_image_timings = dict(state.timings)

    @property
    def proposer(self) -> ProposalBackend | None:
        """The proposal backend (None when built with ``sam=None``)."""
        if self._proposer is None and self.sam is not None:
            with self._sam_lock:
                if self._proposer is None:
                    self._proposer = SamV1Backend(self.sam, self.config.sam)
        return self._proposer

    def propose(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask proposals of the proposal backend (:attr:`proposer`), at the image's own
        resolution.

        One image at a time (SAM's generator keeps per-image state): concurrent calls wait.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.

        Returns:
            masks ``(N, H, W)`` bool and boxes ``(N, 4)`` float64 XYWH (SAM's ``bbox``), in
            the generator's order; ``N`` may be 0.

        Raises:
            RuntimeError: the segmenter was built without SAM.
        """
        proposer = self.proposer
        if proposer is None:
            raise RuntimeError("this segmenter has no SAM: pass proposals to set_image")
        with self._sam_lock:
            self._count("sam_runs")
            with self._autocast():
                return proposer(image)

    @torch.no_grad()
    def encode_image(
        self,
        image: ImageInput,
        proposals: npt.ArrayLike | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> ImageState:
        """Compute everything that depends only on the image; the current image is untouched.

        Proposals (SAM's, or the caller's), the hybrid features of each proposal (METHOD.md
        sections 1 to 3) and the GEM patch tokens (section 6). When the image's long side
        exceeds ``config.max_side``, all of it is computed on a copy downscaled to that
        side (area averaging), and given proposals are downscaled the same way.

        Args:
            image: a path, encoded bytes, a PIL image or an ``(H, W, 3)`` uint8 array.
                EXIF orientation is applied; grayscale, RGBA and palette become RGB.
            proposals: optional ``(N, H, W)`` (or one ``(H, W)``) masks that replace SAM:
                masks from another segmenter, or ground truth for the oracle setting.
                Binarised by :func:`hybridgl.masks.as_proposal_masks` (bool as is,
                numbers ``> 0.5``).
            max_pixels: the largest image accepted, passed to
                :func:`hybridgl.images.load_image` (None: no limit of ours). Callers that
                decoded the image under another limit (the server's ``--max-pixels``, the
                CLI's) pass that limit here too.

        Returns:
            A new :class:`ImageState`.

        Raises:
            ImageError: the image cannot be read, or has more than ``max_pixels`` pixels
                (:class:`~hybridgl.errors.ImageTooLargeError`).
            ValueError: proposals of the wrong shape, or NaN, strings or objects in them.
            RuntimeError: no proposals given and the segmenter has no SAM.
        """
        t0 = time.perf_counter()
        img = load_image(image, max_pixels=max_pixels)
        h, w = img.shape[:2]
        given = as_proposal_masks(proposals, h, w) if proposals is not None else None
        wh, ww = working_size(h, w, self.config.max_side)
        work = downscale_image(img, wh, ww)
        if given is not None:
            masks = given if (wh, ww) == (h, w) else resize_masks(given, wh, ww)
            boxes = masks_to_boxes_xywh(masks)
            source = "given"
        else:
            masks, boxes = self.propose(work)
            source = "sam"
        if (wh, ww) != (h, w):  # boxes of the masks as they come back, one at a time
            boxes = np.concatenate(
                [masks_to_boxes_xywh(resize_masks(m[None], h, w)) for m in masks]
                or [np.zeros((0, 4), dtype=np.float64)]
            )
        t1 = time.perf_counter()
        with self._autocast():
            if masks.shape[0] and masks.any():
                self._count("feature_passes")
                feats = hybrid_clip.encode_proposals(
                    self.clip.visual, work, torch.from_numpy(masks), self.config, self.device
                ).float()
            else:  # nothing to see: no feature pass
                feats = torch.zeros(
                    (masks.shape[0], self.clip.visual.output_dim), device=self.device
                )
            t2 = time.perf_counter()
            self._count("gem_passes")
            pixels = gem_input(work, self.config.gem_size, self.config.keep_aspect)
            tokens = gem_patch_tokens(
                self.clip.visual,
                pixels.to(self.device),
                self.config.gem_depth,
                self.config.gem_ss_iters,
            )[0].float()
        t3 = time.perf_counter()
        return ImageState(
            image=img,
            masks=masks,
            boxes=boxes,
            features=feats,
            gem_tokens=F.normalize(tokens, dim=-1),
            gem_grid=int(round(tokens.shape[0] ** 0.5)),
            source=source,
            timings={"proposals": t1 - t0, "features": t2 - t1, "gem": t3 - t2},
        )

    def set_image(
        self,
        image: ImageInput,
        proposals: npt.ArrayLike | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> ImageState:
        """:meth:`encode_image`, then make the result the current image.

        Args:
            image: see :meth:`encode_image`.
            proposals: see :meth:`encode_image`.
            max_pixels: see :meth:`encode_image`.

        Returns:
            The new :class:`ImageState` (also kept as :attr:`image_state`).
        """
        state = self.encode_image(image, proposals, max_pixels=max_pixels)
        self.set_image_state(state)
        return state
