"""Proposal backends through Hugging Face ``transformers`` (SAM 2.1, SlimSAM, SAM-HQ):
the ``mask-generation`` pipeline with the paper's settings, the architectures' configurations
(published and tiny test sizes) and their loading. The extra ``hybridgl[transformers]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridgl.config import SamConfig
from hybridgl.errors import WeightsError
from hybridgl.models.backends import BackendSpec, require_transformers
from hybridgl.models.proposal_base import (
    ProposalBackend,
    Proposals,
    _nullcontext,
    remove_small_regions,
)

log = logging.getLogger("hybridgl.models.proposals")


# ----------------------------------------------------------------------------- transformers
class HFMaskGenerationBackend(ProposalBackend):
    """A ``transformers`` SAM-family model through its ``mask-generation`` pipeline.

    The paper's settings map onto the pipeline's arguments: ``points_per_side`` ->
    ``points_per_crop``, ``crop_n_layers`` -> ``crops_n_layers``, ``box_nms_thresh`` ->
    ``crops_nms_thresh`` (one crop: the same single NMS SAM v1 runs), the IoU and stability
    thresholds, offset and ``points_per_batch`` as they are. The pipeline has no minimum
    region area; :func:`remove_small_regions` applies SAM v1's afterwards.
    """

    def __init__(self, model: Any, image_processor: Any, config: SamConfig, name: str) -> None:
        super().__init__()
        transformers = require_transformers()
        self.name = name
        self.model = model.eval()
        self.image_processor = image_processor
        self.config = config
        self.pipeline = transformers.pipeline(
            "mask-generation",
            model=self.model,
            image_processor=image_processor,
            device=self.device,
        )

    def image_encoder(self) -> torch.nn.Module:
        return self.model.vision_encoder

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The pipeline's arguments for this backend's :class:`SamConfig`."""
        c = self.config
        return {
            "points_per_crop": c.points_per_side,
            "crops_n_layers": c.crop_n_layers,
            "crop_n_points_downscale_factor": c.crop_n_points_downscale_factor,
            "points_per_batch": c.points_per_batch,
            "pred_iou_thresh": c.pred_iou_thresh,
            "stability_score_thresh": c.stability_score_thresh,
            "stability_score_offset": c.stability_score_offset,
            "crops_nms_thresh": c.box_nms_thresh,
        }

    def run_pipeline(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pipeline's own masks ``(N, H, W)`` bool and scores, before the minimum area."""
        from PIL import Image

        dev = self.device.type
        autocast = torch.is_autocast_enabled(dev)
        self.model.get_image_embeddings = self._timed_encoder(self.model.get_image_embeddings)
        try:
            with torch.autocast(dev, enabled=False) if autocast else _nullcontext():
                out = self.pipeline(Image.fromarray(image), **self.pipeline_kwargs())
        finally:
            del self.model.get_image_embeddings
        h, w = image.shape[:2]
        if not out["masks"]:
            return np.zeros((0, h, w), dtype=bool), np.zeros((0,), dtype=np.float32)
        masks = np.stack([np.asarray(torch.as_tensor(m).cpu(), dtype=bool) for m in out["masks"]])
        scores = torch.as_tensor(out["scores"]).float().cpu().numpy().reshape(-1)
        return masks, scores.astype(np.float32)

    def _generate(self, image: np.ndarray) -> Proposals:
        masks, scores = self.run_pipeline(image)
        c = self.config
        masks, boxes, scores = remove_small_regions(
            masks, scores, c.min_mask_region_area, c.box_nms_thresh
        )
        return Proposals(masks, boxes, scores)


# ----------------------------------------------------------------------------- configs
def _hiera(
    hidden: int,
    heads: int,
    blocks: list[int],
    global_blocks: list[int],
    window_pos: list[int],
    windows: list[int] | None = None,
) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "blocks_per_stage": blocks,
        "embed_dim_per_stage": [hidden, 2 * hidden, 4 * hidden, 8 * hidden],
        "num_attention_heads_per_stage": [heads, 2 * heads, 4 * heads, 8 * heads],
        "global_attention_blocks": global_blocks,
        "window_positional_embedding_background_size": window_pos,
        "window_size_per_stage": windows or [8, 4, 14, 7],
    }


# Published SAM 2.1 image-encoder configurations (sam2.1_hiera_{t,s,b+,l}.yaml of
# facebookresearch/sam2, as converted to transformers' Sam2HieraDetConfig).
_SAM2_HIERA: dict[str, dict[str, Any]] = {
    "hiera_tiny": _hiera(96, 1, [1, 2, 7, 2], [5, 7, 9], [7, 7]),
    "hiera_small": _hiera(96, 1, [1, 2, 11, 2], [7, 10, 13], [7, 7]),
    "hiera_base_plus": _hiera(112, 2, [2, 3, 16, 3], [12, 16, 20], [14, 14]),
    "hiera_large": _hiera(144, 2, [2, 6, 36, 4], [23, 33, 43], [7, 7], [8, 4, 16, 8]),
    # test device: 5 blocks, width 16 (not a published model)
    "tiny": _hiera(16, 1, [1, 1, 2, 1], [3], [7, 7]),
}

# Published SAM v1 ViT sizes in transformers' SamVisionConfig terms; SlimSAM keeps ViT-B's
# depth and heads with pruned widths (nielsr/slimsam-{50,77}-uniform config.json).
_SAM_VIT: dict[str, dict[str, Any]] = {
    "vit_b": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
              "global_attn_indexes": [7, 15, 23, 31]},
    "slim_50": {"hidden_size": 384, "mlp_dim": 1536},
    "slim_77": {"hidden_size": 168, "mlp_dim": 696},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "global_attn_indexes": [1], "output_channels": 32, "num_pos_feats": 16,
             "mlp_dim": 64},
}  # fmt: skip

_TINY_DECODER = {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
                 "iou_head_hidden_dim": 32}  # fmt: skip

# Input side of the models: 1024 for every published size. The tiny test models run at
# 256 px (a 16 x 16 image embedding, 64 x 64 low-resolution masks), like the tiny SAM v1 of
# :mod:`hybridgl.models.sam`, so that the pipeline costs a fraction of a second per photo.
_FULL_IMAGE_SIZE = 1024
_TINY_IMAGE_SIZE = 256


def hf_image_size(size: str = "full") -> int:
    """The input side (longest image side after resizing, padded square) of a size."""
    return _TINY_IMAGE_SIZE if size == "tiny" else _FULL_IMAGE_SIZE


def hf_config(spec: BackendSpec, size: str = "full") -> Any:
    """The ``transformers`` configuration of a backend, built in code (no download).

    ``size="full"`` is the published architecture, ``"tiny"`` the test device.
    """
    transformers = require_transformers()
    key = spec.size if size == "full" else "tiny"
    if spec.family == "hf_sam2":
        h = _SAM2_HIERA[key]
        dims = h["embed_dim_per_stage"]
        if key == "tiny":
            # Hiera: stride-4 patches, then three 2x poolings (the FPN's three levels)
            side = hf_image_size("tiny")
            backbone = transformers.Sam2HieraDetConfig(**h, image_size=[side, side])
            vision: dict[str, Any] = {
                "backbone_config": backbone,
                "backbone_channel_list": list(reversed(dims)),
                "backbone_feature_sizes": [[side // s, side // s] for s in (4, 8, 16)],
                "fpn_hidden_size": 32,
            }
            return transformers.Sam2Config(
                vision_config=vision,
                prompt_encoder_config={"hidden_size": 32, "image_size": side},
                mask_decoder_config=dict(_TINY_DECODER),
            )
        backbone = transformers.Sam2HieraDetConfig(**h)
        vision = {"backbone_config": backbone, "backbone_channel_list": list(reversed(dims))}
        return transformers.Sam2Config(vision_config=vision)
    vit = dict(_SAM_VIT[key])
    decoder: dict[str, Any] = dict(_TINY_DECODER) if key == "tiny" else {}
    prompt: dict[str, Any] = {}
    if key == "tiny":
        vit["image_size"] = hf_image_size("tiny")
        prompt = {"hidden_size": 32, "image_size": hf_image_size("tiny")}
    if spec.family == "hf_sam_hq":
        decoder["vit_dim"] = vit["hidden_size"]
        return transformers.SamHQConfig(
            vision_config=vit, prompt_encoder_config=prompt, mask_decoder_config=decoder
        )
    return transformers.SamConfig(
        vision_config=vit, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )


def _hf_classes(spec: BackendSpec) -> tuple[Any, Any]:
    t = require_transformers()
    if spec.family == "hf_sam2":
        return t.Sam2Model, t.Sam2ImageProcessor
    if spec.family == "hf_sam_hq":
        return t.SamHQModel, t.SamImageProcessor
    return t.SamModel, t.SamImageProcessor


def random_hf_model(spec: BackendSpec, size: str, seed: int) -> Any:
    """A ``transformers`` model of the backend with seeded random weights.

    PyTorch's default initialisation of every linear and convolution layer under ``seed``
    (transformers initialises SAM's vision encoder with a standard deviation of 1e-10,
    which makes every image embedding zero and every mask the same), plus the same two
    changes as :func:`hybridgl.models.sam.random_sam` so that the thresholds keep some
    masks: a ``N(0, 0.02)`` positional embedding where the model has one, hypernetwork
    outputs scaled by 1000 and an IoU head predicting about 1. The masks mean nothing.
    """
    model_cls, _ = _hf_classes(spec)
    config = hf_config(spec, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    module.reset_parameters()
            pos = getattr(model.vision_encoder, "pos_embed", None)
            if isinstance(pos, torch.nn.Parameter):
                pos.normal_(0.0, 0.02)
            dec = model.mask_decoder
            for mlp in dec.output_hypernetworks_mlps:
                mlp.proj_out.weight.mul_(1000.0)
            dec.iou_prediction_head.proj_out.bias.fill_(1.0)
    return model.eval()


def hf_image_processor(spec: BackendSpec, path: Path | None = None, size: str = "full") -> Any:
    """The backend's image processor: from a checkpoint folder, else the class defaults
    (the published preprocessing: 1024 px longest side, ImageNet mean and std); for the
    ``tiny`` random-weights size the same preprocessing at the tiny input side (256 px)."""
    _, proc_cls = _hf_classes(spec)
    if path is not None and (Path(path) / "preprocessor_config.json").is_file():
        return proc_cls.from_pretrained(str(path))
    if size != "tiny":
        return proc_cls()
    side, low = hf_image_size("tiny"), hf_image_size("tiny") // 4
    if spec.family == "hf_sam2":  # resized to a square, no padding
        return proc_cls(
            size={"height": side, "width": side}, mask_size={"height": low, "width": low}
        )
    return proc_cls(
        size={"longest_edge": side},
        pad_size={"height": side, "width": side},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
    )


def load_hf_model(spec: BackendSpec, path: Path) -> Any:
    """Load a checkpoint folder (``config.json`` + weights) of the backend's model class."""
    model_cls, _ = _hf_classes(spec)
    try:
        return model_cls.from_pretrained(str(path)).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"cannot load {spec.name} from {path}: {e}") from None
