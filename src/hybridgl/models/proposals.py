"""Class-agnostic mask proposals behind one interface, selected by name.

A :class:`ProposalBackend` turns an ``(H, W, 3)`` uint8 RGB image into
:class:`Proposals`: bool masks, XYWH boxes and the model's quality scores, with the paper's
automatic-mask-generation settings (:class:`hybridgl.config.SamConfig`: points per side,
predicted-IoU and stability thresholds, box NMS, minimum region area) applied the same way
by every backend.

Backends (:data:`BACKENDS`, the names ``from_pretrained(sam=...)`` and ``--sam`` accept):

- ``vit_h`` (the paper's, the default), ``vit_l``, ``vit_b``: SAM v1 through
  ``segment_anything.SamAutomaticMaskGenerator``, exactly as before this interface existed.
- ``sam2.1_hiera_tiny|small|base_plus|large``, ``slimsam_50``, ``slimsam_77``,
  ``sam_hq_vit_b|l|h``: Hugging Face ``transformers`` models (the optional extra
  ``hybridgl[transformers]``, imported only when such a backend is built) through the
  ``mask-generation`` pipeline of ``transformers`` with the same settings mapped onto it;
  the minimum region area, which that pipeline does not implement, is applied afterwards
  by :func:`remove_small_regions`, SAM v1's own post-processing.

Every backend has a random-weights form (``HYBRIDGL_RANDOM_WEIGHTS=tiny|full``): ``full``
builds the published architecture from a configuration written here (no download),
``tiny`` a few-thousand-parameter model of the same family for tests, at a 256 px input
(the published sizes keep 1024 px).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridgl.config import SamConfig
from hybridgl.models.backends import get_backend_spec
from hybridgl.models.hf_proposals import (
    HFMaskGenerationBackend,
    hf_image_processor,
    load_hf_model,
    random_hf_model,
)
from hybridgl.models.proposal_base import (
    ProposalBackend,
    Proposals,
    _nullcontext,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- SAM v1
class SamV1Backend(ProposalBackend):
    """SAM v1 through ``segment_anything.SamAutomaticMaskGenerator``, unchanged."""

    def __init__(self, sam: Any, config: SamConfig, name: str = "sam1") -> None:
        super().__init__()
        from segment_anything import SamAutomaticMaskGenerator

        self.name = name
        self.model = sam
        self.config = config
        self.generator = SamAutomaticMaskGenerator(
            sam, output_mode="binary_mask", **config.generator_kwargs()
        )

    def image_encoder(self) -> torch.nn.Module:
        return self.model.image_encoder

    def _generate(self, image: np.ndarray) -> Proposals:
        predictor = self.generator.predictor
        dev = self.device.type
        autocast = torch.is_autocast_enabled(dev)
        predictor.set_torch_image = self._timed_set_image(predictor.set_torch_image)
        try:
            # SAM's generator turns decoder scores into numpy (which has no bfloat16): the
            # decoder runs in float32, only the encoder (wrapped above) in low precision
            with torch.autocast(dev, enabled=False) if autocast else _nullcontext():
                records = self.generator.generate(image)
        finally:
            del predictor.set_torch_image
        h, w = image.shape[:2]
        if not records:
            return Proposals.empty(h, w)
        return Proposals(
            np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records]),
            np.asarray([r["bbox"] for r in records], dtype=np.float64),
            np.asarray([r["predicted_iou"] for r in records], dtype=np.float32),
        )

    def _timed_set_image(self, plain: Callable[..., Any]) -> Callable[..., Any]:
        predictor = self.generator.predictor
        encode = self._timed_encoder(plain)

        def set_torch_image(*args: Any, **kwargs: Any) -> None:
            encode(*args, **kwargs)
            predictor.features = predictor.features.float()

        return set_torch_image


# ----------------------------------------------------------------------------- building
def build_backend(
    name: str,
    config: SamConfig,
    *,
    random_mode: str | None = None,
    seed: int = 0,
    path: Path | None = None,
    device: torch.device | str | None = None,
) -> ProposalBackend:
    """Build the named backend on ``device``.

    Args:
        name: a key of :data:`BACKENDS`.
        config: the automatic-mask-generation settings (the paper's by default).
        random_mode: ``tiny`` or ``full`` for seeded random weights (no file read).
        seed: seed of the random weights.
        path: the resolved checkpoint (a ``.pth`` for SAM v1, a folder for transformers
            models); required unless ``random_mode``.
        device: where the model runs.
    """
    spec = get_backend_spec(name)
    if random_mode is None and path is None:
        raise ValueError(f"build_backend({name!r}): give a checkpoint path or a random_mode")
    if spec.family == "sam1":
        from hybridgl.models.sam import build_sam, load_sam_checkpoint, random_sam

        if random_mode:
            sam = random_sam("tiny" if random_mode == "tiny" else spec.size, seed)
        else:
            assert path is not None
            sam = load_sam_checkpoint(build_sam(spec.size), path)
        if device is not None:
            sam = sam.to(device)
        return SamV1Backend(sam.eval(), config, name=name)
    if random_mode:
        model = random_hf_model(spec, random_mode, seed)
        processor = hf_image_processor(spec, size=random_mode)
    else:
        assert path is not None
        model = load_hf_model(spec, path)
        processor = hf_image_processor(spec, path)
    if device is not None:
        model = model.to(device)
    return HFMaskGenerationBackend(model, processor, config, name)
