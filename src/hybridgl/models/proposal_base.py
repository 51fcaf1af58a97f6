"""What every proposal backend shares: the :class:`Proposals` it returns, the
:class:`ProposalBackend` interface (timings, precision), and SAM's minimum-region-area
post-processing for the backends whose generator lacks it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hybridgl.config import SamConfig


@dataclass
class Proposals:
    """Output of a :class:`ProposalBackend` for one image.

    Attributes:
        masks: ``(N, H, W)`` bool.
        boxes: ``(N, 4)`` float64 XYWH, SAM's convention (``w`` = max column - min column).
        scores: ``(N,)`` float32 predicted IoU of each mask (the model's quality score).
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int) -> Proposals:
        return cls(
            np.zeros((0, height, width), dtype=bool),
            np.zeros((0, 4), dtype=np.float64),
            np.zeros((0,), dtype=np.float32),
        )


# ----------------------------------------------------------------------------- the interface
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _float32(x: Any) -> Any:
    """Tensors (also inside lists and tuples) back to float32."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_float32(v) for v in x)
    return x


class ProposalBackend(ABC):
    """Image in, :class:`Proposals` out, with the settings of a :class:`SamConfig`.

    Under an active ``torch.autocast`` only the image encoder runs in the autocast dtype;
    its embedding goes back to float32 for mask decoding and the thresholds, so that the
    filters compare float32 scores whatever the precision of the encoder.

    ``last_timings`` holds the seconds of the latest call: ``image_encoder`` and
    ``mask_generation`` (everything else: prompts, decoding, filters, NMS, minimum area).
    """

    name: str
    config: SamConfig
    model: Any  # the torch module (a segment_anything Sam or a transformers model)

    def __init__(self) -> None:
        self.last_timings: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abstractmethod
    def image_encoder(self) -> torch.nn.Module:
        """The image encoder module (for FLOP counts and memory figures)."""

    @abstractmethod
    def _generate(self, image: np.ndarray) -> Proposals: ...

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> Proposals:
        """Proposals for an ``(H, W, 3)`` uint8 RGB image (``N`` may be 0)."""
        self.last_timings = {"image_encoder": 0.0}
        dev = self.device
        _sync(dev)
        t0 = time.perf_counter()
        out = self._generate(image)
        _sync(dev)
        total = time.perf_counter() - t0
        self.last_timings["mask_generation"] = max(0.0, total - self.last_timings["image_encoder"])
        self.last_timings["total"] = total
        return out

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(masks, boxes)`` of :meth:`generate` (the historical ``SamProposer`` shape)."""
        p = self.generate(image)
        return p.masks, p.boxes

    def _timed_encoder(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap an image-encoder call: autocast only there (if active), float32 out, timed."""
        dev = self.device
        dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None

        def run(*args: Any, **kwargs: Any) -> Any:
            _sync(dev)
            t = time.perf_counter()
            if dtype is not None:
                with torch.autocast(dev.type, dtype=dtype):
                    out = _float32(fn(*args, **kwargs))
            else:
                out = fn(*args, **kwargs)
            _sync(dev)
            spent = time.perf_counter() - t
            self.last_timings["image_encoder"] = self.last_timings.get("image_encoder", 0.0) + spent
            return out

        return run


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# ----------------------------------------------------------------------------- minimum area
def remove_small_regions(
    masks: np.ndarray, scores: np.ndarray, min_area: int, nms_thresh: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM v1's ``min_mask_region_area`` post-processing on bool masks.

    The same steps as ``SamAutomaticMaskGenerator.postprocess_small_regions``: holes, then
    islands smaller than ``min_area`` pixels are removed from each mask
    (``segment_anything.utils.amg.remove_small_regions``), boxes are recomputed, and box
    NMS at ``nms_thresh`` keeps unchanged masks before changed ones; masks keep their order
    of NMS. Returns ``(masks, boxes XYWH float64, scores)`` of the kept masks.
    """
    from segment_anything.utils.amg import batched_mask_to_box
    from segment_anything.utils.amg import remove_small_regions as sam_remove
    from torchvision.ops.boxes import batched_nms

    n = masks.shape[0]
    if n == 0:
        return masks, np.zeros((0, 4), dtype=np.float64), scores
    if min_area > 0:
        new, unchanged = [], []
        for m in masks:
            m, changed = sam_remove(m, min_area, mode="holes")
            same = not changed
            m, changed = sam_remove(m, min_area, mode="islands")
            new.append(m)
            unchanged.append(float(same and not changed))
        t = torch.as_tensor(np.stack(new))
        boxes = batched_mask_to_box(t)
        keep = batched_nms(
            boxes.float(), torch.as_tensor(unchanged), torch.zeros(n), iou_threshold=nms_thresh
        )
        idx = keep.numpy()
        masks = np.stack(new)[idx]
        boxes = boxes[keep]
        scores = scores[idx]
    else:
        boxes = batched_mask_to_box(torch.as_tensor(masks))
    xywh = boxes.numpy().astype(np.float64).reshape(-1, 4)
    xywh[:, 2:] -= xywh[:, :2]  # segment_anything.utils.amg.box_xyxy_to_xywh, batched
    return masks.astype(bool, copy=False), xywh, scores
