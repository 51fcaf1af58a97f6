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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridgl.config import SamConfig
from hybridgl.errors import WeightsError
from hybridgl.models.backends import (  # noqa: F401 - the table, re-exported for callers
    BACKENDS,
    DEFAULT_BACKEND,
    TRANSFORMERS_HINT,
    BackendSpec,
    backend_names,
    get_backend_spec,
    require_transformers,
)

log = logging.getLogger(__name__)


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
