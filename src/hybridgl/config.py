"""Hyper-parameters of the method and the named presets.

Every literal of METHOD.md lives here; the rest of the package reads it from a
:class:`MethodConfig`. ``paper`` reproduces the reference implementation, quirks
included; ``fixed`` turns every quirk fix on. Each fix is its own field so that its
effect can be measured alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

FUSION_MODES = ("G2L", "L2G", "G2L&L2G", "token_masking", "attn_masking", "crop")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class SamConfig:
    """Settings of SAM's automatic mask generator (METHOD.md section 1)."""

    points_per_side: int = 8
    pred_iou_thresh: float = 0.7
    stability_score_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 800
    # SAM's default is 64; batching changes memory, not the masks (each point is decoded
    # and filtered on its own, then NMS runs over all of them in point order). 16 keeps
    # SAM ViT-H + CLIP under 6 GiB on a CPU (docs/PERFORMANCE.md); tests compare the
    # masks with the generator at 64.
    points_per_batch: int = 16
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7

    def generator_kwargs(self) -> dict[str, Any]:
        return {
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "crop_n_layers": self.crop_n_layers,
            "crop_n_points_downscale_factor": self.crop_n_points_downscale_factor,
            "min_mask_region_area": self.min_mask_region_area,
            "points_per_batch": self.points_per_batch,
            "stability_score_offset": self.stability_score_offset,
            "box_nms_thresh": self.box_nms_thresh,
        }


@dataclass(frozen=True)
class MethodConfig:
    """All hyper-parameters of HybridGL (METHOD.md sections 2 to 7)."""

    # section 2: views
    view_size: int = 224
    blur_kernel: int = 15
    # section 3: hybrid features
    fusion: str = "G2L"
    masking_block: int = 9
    fusion_weight: float = 2.0
    feature_batch: int = 16  # proposals per chunk through the ViT (memory bound)
    # section 4: text
    text_weight: float = 0.5  # f_text = w * E(s) + (1 - w) * E(np)
    context_prompt: str = "a photo of "
    gem_prompt: tuple[str, str] = ("a photo of a ", ".")
    # section 5: relation guidance
    k1: int = 3
    k2: int = 6
    # section 6: GEM
    gem_depth: int = 7
    gem_size: int = 448
    gem_ss_iters: int = 1
    beta_big: float = 1.95
    beta_small: float = 1.5
    beta_default: float = 1.8
    # section 7: final choice
    alpha: float = 0.6
    # working resolution: images whose long side exceeds max_side get their proposals,
    # views and GEM input computed on a copy scaled down to it (masks come back at the
    # input resolution, upsampled). 1024 is SAM's own input size (its encoder never sees
    # more), and RefCOCO's <= 640 px images are never touched. None: no cap.
    max_side: int | None = 1024
    # quirk fixes (all off in the paper preset)
    fix_right_relation: bool = False
    vertical_priors: bool = False
    clip_norm_both_views: bool = False
    keep_aspect: bool = False
    sam: SamConfig = field(default_factory=SamConfig)

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {self.fusion!r}; choose one of {FUSION_MODES}")
        if self.k1 < 1 or self.k2 < 1:
            raise ValueError("k1 and k2 must be >= 1")
        if self.feature_batch < 1:
            raise ValueError("feature_batch must be >= 1")
        if self.max_side is not None and (
            isinstance(self.max_side, bool)
            or not isinstance(self.max_side, int)
            or self.max_side < 1
        ):
            raise ValueError(f"max_side must be a positive integer or None, got {self.max_side!r}")

    def with_options(self, **kwargs: Any) -> MethodConfig:
        return replace(self, **kwargs)


PRESETS: dict[str, MethodConfig] = {
    "paper": MethodConfig(),
    "fixed": MethodConfig(
        fix_right_relation=True,
        vertical_priors=True,
        clip_norm_both_views=True,
        keep_aspect=True,
    ),
}


def get_preset(name: str) -> MethodConfig:
    """Return the named preset (``paper`` or ``fixed``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
