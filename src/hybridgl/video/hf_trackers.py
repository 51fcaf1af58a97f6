"""Video trackers through Hugging Face ``transformers``: SAM 2.1 video and EdgeTAM video.

Each tracker runs the model's own streaming inference session (``Sam2VideoModel`` /
``EdgeTamVideoModel`` with their processor's ``init_video_session`` and
``add_inputs_to_inference_session``): a frame goes in as ``model(session, frame=...,
frame_idx=...)``, seeds are mask inputs on that frame. What this module adds is the bound on
memory: the session of ``transformers`` keeps every frame, every frame's outputs and every
conditioning frame for the whole video; after each frame :class:`HFVideoTracker` drops what
the model can no longer read (frames older than its memory bank of ``num_maskmem`` frames
and its ``max_object_pointers_in_encoder`` object pointers, consumed inputs, the pixels)
and keeps only the ``max_cond_frames`` conditioning (seeded) frames nearest to the current
one. With one seed the outputs are exactly the model's own propagation (tested).

Trackers (:data:`TRACKERS`, the names ``--tracker`` accepts): ``sam2.1_hiera_tiny``,
``sam2.1_hiera_small``, ``sam2.1_hiera_base_plus``, ``sam2.1_hiera_large`` (the checkpoints
of the SAM 2.1 proposal backends: one Hub repository serves both) and ``edgetam`` (the fast
one). ``HYBRIDGL_RANDOM_WEIGHTS=tiny`` builds a ~1.5M-parameter SAM 2 video model (or a
~1.8M-parameter EdgeTAM) at 256 px (``full``: the published architecture), with seeded
random weights, from the same configuration code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridgl.errors import WeightsError
from hybridgl.video.tracker import (
    DEFAULT_TRACKER,
    TRACKERS,
    TrackerSpec,
    TrackStep,
    get_tracker_spec,
)

__all__ = [
    "DEFAULT_TRACKER",
    "TRACKERS",
    "HFVideoTracker",
    "TrackerSpec",
    "build_tracker",
    "get_tracker_spec",
    "random_video_model",
    "video_config",
    "video_processor",
]


_TINY_SIDE = 256  # the tiny test size: 256 px input, 16 x 16 memory


def _transformers() -> Any:
    from hybridgl.models.backends import require_transformers

    return require_transformers()


def video_config(spec: TrackerSpec, size: str = "full") -> Any:
    """The ``transformers`` configuration of a tracker, built in code (no download).

    SAM 2.1: the image encoder of the proposal backend of the same size
    (:func:`hybridgl.models.hf_proposals.hf_config`) and the video defaults of
    ``Sam2VideoConfig`` (the published ones). ``tiny``: the tiny Hiera at 256 px, with
    the memory path at width 128 (64-channel memories, as published: the model fixes it).
    """
    t = _transformers()
    if spec.family == "edgetam_video":
        return _edgetam_config(t, size)
    from hybridgl.models.backends import get_backend_spec
    from hybridgl.models.hf_proposals import hf_config

    image = hf_config(get_backend_spec(spec.checkpoint), "tiny" if size == "tiny" else "full")
    if size != "tiny":
        return t.Sam2VideoConfig(
            vision_config=image.vision_config.to_dict(),
        )
    width = 128
    return t.Sam2VideoConfig(
        vision_config={**image.vision_config.to_dict(), "fpn_hidden_size": width},
        prompt_encoder_config={**image.prompt_encoder_config.to_dict(), "hidden_size": width},
        mask_decoder_config={**image.mask_decoder_config.to_dict(), "hidden_size": width},
        image_size=_TINY_SIDE,
        memory_attention_hidden_size=width,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * width,
        memory_attention_rope_feat_sizes=[_TINY_SIDE // 16, _TINY_SIDE // 16],
        memory_encoder_hidden_size=width,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=width,
        memory_fuser_embed_dim=width,
        memory_fuser_intermediate_dim=2 * width,
    )


def _edgetam_config(t: Any, size: str) -> Any:
    """EdgeTAM video: the RepViT-M1 backbone (timm, through ``TimmWrapperConfig``) with its
    FPN neck and the SAM 2 video defaults; ``tiny``: a one-block-per-stage RepViT of widths
    16..128 at 256 px with the memory path at width 128 (~1.8M parameters).

    The vision configuration is built explicitly: ``EdgeTamVideoConfig()`` alone gives a
    SAM 2 Hiera encoder, and ``EdgeTamVisionConfig()``'s default backbone is a ResNet-50
    (transformers 5.x misspells the ``architecture`` key of its RepViT default).
    """
    feats = {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    if size != "tiny":
        vision = t.EdgeTamVisionConfig(
            backbone_config=t.TimmWrapperConfig(architecture="repvit_m1", model_args=feats),
            backbone_channel_list=[384, 192, 96, 48],
            backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]],
        )
        return t.EdgeTamVideoConfig(vision_config=vision)
    width, widths = 128, (16, 32, 64, 128)
    backbone = t.TimmWrapperConfig(
        architecture="repvit_m1", model_args={**feats, "embed_dim": widths, "depth": (1, 1, 1, 1)}
    )
    q = _TINY_SIDE // 4
    vision = t.EdgeTamVisionConfig(
        backbone_config=backbone,
        backbone_channel_list=list(reversed(widths)),
        backbone_feature_sizes=[[q, q], [q // 2, q // 2], [q // 4, q // 4]],
        fpn_hidden_size=width,
    )
    return t.EdgeTamVideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": width, "image_size": _TINY_SIDE},
        mask_decoder_config={
            "hidden_size": width,
            "mlp_dim": 2 * width,
            "iou_head_hidden_dim": width,
        },  # fmt: skip
        image_size=_TINY_SIDE,
        memory_attention_hidden_size=width,
        memory_attention_num_layers=1,
        memory_attention_mlp_hidden_size=2 * width,
        memory_attention_rope_feat_sizes=[_TINY_SIDE // 16, _TINY_SIDE // 16],
        memory_encoder_hidden_size=width,
        mask_downsampler_embed_dim=width,
        memory_fuser_embed_dim=width,
        memory_fuser_intermediate_dim=2 * width,
    )


def _model_class(spec: TrackerSpec) -> Any:
    t = _transformers()
    return t.EdgeTamVideoModel if spec.family == "edgetam_video" else t.Sam2VideoModel


def video_processor(spec: TrackerSpec, size: str = "full") -> Any:
    """The model's processor: the published preprocessing (1024 px square, ImageNet mean and
    std), at 256 px for the tiny size."""
    t = _transformers()
    side = _TINY_SIDE if size == "tiny" else 1024
    low = side // 4
    image = t.Sam2ImageProcessor(
        size={"height": side, "width": side}, mask_size={"height": low, "width": low}
    )
    video = t.Sam2VideoVideoProcessor(size={"height": side, "width": side})
    return t.Sam2VideoProcessor(image_processor=image, video_processor=video)


def random_video_model(spec: TrackerSpec, size: str, seed: int) -> Any:
    """The tracker's model with seeded random weights: PyTorch's default initialisation of
    every linear and convolution layer under ``seed`` (as the proposal backends do)."""
    config = video_config(spec, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(spec)(config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    module.reset_parameters()
    return model.eval()


def load_video_model(spec: TrackerSpec, path: Path) -> Any:
    try:
        return _model_class(spec).from_pretrained(str(path)).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"cannot load tracker {spec.name} from {path}: {e}") from None


class HFVideoTracker:
    """A ``transformers`` video model behind :class:`~hybridgl.video.tracker.Tracker`.

    Args:
        model: a ``Sam2VideoModel`` or ``EdgeTamVideoModel``.
        processor: its ``Sam2VideoProcessor``.
        name: the tracker's name.
        max_cond_frames: seeded frames kept per object (the nearest to the current frame);
            the model reads every one it has, so this bounds memory under re-seeding.
        dtype: the model's and the session's dtype (float32 by default; bfloat16 halves the
            weights and the memory bank and uses a CPU's native bf16 instructions).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str,
        max_cond_frames: int = 2,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be >= 1, got {max_cond_frames}")
        self.model = model.to(dtype).eval()  # the weights and the session in one dtype
        self.processor = processor
        self.name = name
        self.max_cond_frames = max_cond_frames
        self.dtype = dtype
        cfg = model.config
        #: non-conditioning frames the model can still read: its memory bank and pointers
        self.window = max(int(cfg.num_maskmem), int(cfg.max_object_pointers_in_encoder))
        self.session: Any = None
        self.reverse = False
        self._t = 0
        self._last: tuple[int, np.ndarray, torch.Tensor | None] | None = None
        #: the model's raw low-resolution mask logits of the latest frame (for tests)
        self.last_logits: torch.Tensor | None = None
        self.reset()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def memory_limit(self) -> int:
        return self.window + self.max_cond_frames + 1

    def reset(self, reverse: bool = False) -> None:
        self.session = self.processor.init_video_session(
            inference_device=self.device, dtype=self.dtype, max_vision_features_cache_size=1
        )
        self.reverse = reverse
        # the session's frame numbers: consecutive whatever the stride; counting down from
        # a large number backward, so the model's "previous frames" are the ones before
        self._t = (1 << 30) if reverse else 0
        self._last = None

    def pixel_values(self, image: np.ndarray) -> torch.Tensor:
        """The model's input for one frame ``(3, S, S)`` (the video processor's)."""
        out = self.processor.video_processor(videos=[image[None]], return_tensors="pt")
        return out.pixel_values_videos[0, 0]

    @torch.inference_mode()
    def step(self, image: np.ndarray, seeds: Mapping[int, np.ndarray] | None = None) -> TrackStep:
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        idx = self._t
        self._advance()
        self._add_seeds(idx, h, w, seeds)
        self._last = (idx, image, None)
        if self.session.get_obj_num() == 0:  # nothing to track yet (reseed() may start it)
            return TrackStep(seconds=time.perf_counter() - t0)
        pixels = self.pixel_values(image).to(self.device, self.dtype)
        self._last = (idx, image, pixels)
        return self._run(idx, pixels, h, w, t0)

    @torch.inference_mode()
    def reseed(self, seeds: Mapping[int, np.ndarray]) -> TrackStep:
        """Seed objects on the frame of the latest :meth:`step` again (its features are
        still cached) and return that frame's answer anew."""
        t0 = time.perf_counter()
        if self._last is None:
            raise RuntimeError("reseed() needs a step() before it")
        idx, image, pixels = self._last
        h, w = image.shape[:2]
        s = self.session
        for k in seeds:
            if k in s._obj_id_to_idx:  # forget this frame's tracked output of the object
                obj_idx = s.obj_id_to_idx(k)
                s.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"].pop(idx, None)
                s.frames_tracked_per_obj[obj_idx].pop(idx, None)
        self._add_seeds(idx, h, w, seeds)
        if pixels is None:
            pixels = self.pixel_values(image).to(self.device, self.dtype)
            self._last = (idx, image, pixels)
        return self._run(idx, pixels, h, w, t0)

    def _add_seeds(self, idx: int, h: int, w: int, seeds: Mapping[int, np.ndarray] | None) -> None:
        if not seeds:
            return
        ids = [int(k) for k in seeds]
        masks = [np.asarray(seeds[k], dtype=bool) for k in seeds]
        for k, m in zip(ids, masks, strict=True):
            if m.shape != (h, w):
                raise ValueError(f"seed of object {k} is {m.shape}, the frame {(h, w)}")
            if not m.any():
                raise ValueError(f"seed of object {k} is empty")
        self.processor.add_inputs_to_inference_session(
            self.session, frame_idx=idx, obj_ids=ids, input_masks=masks
        )

    def _run(self, idx: int, pixels: torch.Tensor, h: int, w: int, t0: float) -> TrackStep:
        out = self.model(
            inference_session=self.session, frame=pixels, frame_idx=idx, reverse=self.reverse
        )
        self.last_logits = out.pred_masks
        full = self.processor.post_process_masks(
            [out.pred_masks.float()], original_sizes=[[h, w]], binarize=True
        )[0]
        logits = out.object_score_logits.float().reshape(-1)
        result = TrackStep()
        for i, oid in enumerate(out.object_ids):
            result.masks[int(oid)] = full[i, 0].cpu().numpy().astype(bool)
            result.presence[int(oid)] = float(torch.sigmoid(logits[i]))
        self._prune(idx)
        result.seconds = time.perf_counter() - t0
        return result

    def _advance(self) -> None:
        self._t += -1 if self.reverse else 1

    def _prune(self, idx: int) -> None:
        """Drop everything the model can no longer read (see the module docstring)."""
        s = self.session
        s.processed_frames = {}
        for obj_idx, out in s.output_dict_per_obj.items():
            non_cond = out["non_cond_frame_outputs"]
            for f in [f for f in non_cond if abs(f - idx) >= self.window]:
                del non_cond[f]
            tracked = s.frames_tracked_per_obj[obj_idx]
            for f in [f for f in tracked if abs(f - idx) >= self.window]:
                del tracked[f]
            cond = out["cond_frame_outputs"]
            if len(cond) > self.max_cond_frames:
                keep = sorted(cond, key=lambda f: (abs(f - idx), -f))[: self.max_cond_frames]
                for f in [f for f in cond if f not in keep]:
                    del cond[f]
            s.mask_inputs_per_obj[obj_idx].clear()
            s.point_inputs_per_obj[obj_idx].clear()

    def get_state(self) -> dict[str, Any]:
        """The session between two frames, as plain data (tensors, numbers, lists, dicts)
        for :func:`hybridgl.video.checkpoint.save_checkpoint`: the objects in their order,
        every output the pruned session holds, the frames tracked and the frame counter.
        Bounded like the session (see :attr:`memory_limit`)."""
        s = self.session
        return {
            "t": int(self._t),
            "reverse": bool(self.reverse),
            "obj_ids": [int(k) for k in s._obj_id_to_idx],
            "outputs": {
                int(i): {
                    kind: {int(f): dict(v) for f, v in out[kind].items()}
                    for kind in ("cond_frame_outputs", "non_cond_frame_outputs")
                }
                for i, out in s.output_dict_per_obj.items()
            },  # fmt: skip
            "tracked": {
                int(i): {int(f): dict(v) for f, v in t.items()}
                for i, t in s.frames_tracked_per_obj.items()
            },  # fmt: skip
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue a session saved by :meth:`get_state` (the next :meth:`step` answers as
        the saved session's next step would)."""
        self.reset(reverse=bool(state["reverse"]))
        self._t = int(state["t"])
        s = self.session
        small = ("object_pointer", "object_score_logits")  # where the session keeps each
        for oid in state["obj_ids"]:
            idx = s.obj_id_to_idx(int(oid))
            for kind, frames in state["outputs"][idx].items():
                s.output_dict_per_obj[idx][kind] = {
                    int(f): {k: v.to(s.inference_device if k in small
                                     else s.inference_state_device)
                             if isinstance(v, torch.Tensor) else v for k, v in out.items()}
                    for f, out in frames.items()
                }  # fmt: skip
            s.frames_tracked_per_obj[idx] = {int(f): dict(v)
                                             for f, v in state["tracked"][idx].items()}  # fmt: skip

    def memory_frames(self) -> int:
        """Frames held: pixels, cached features, and the most outputs held for one object."""
        s = self.session
        held = len(s.processed_frames or {}) + len(s.cache._vision_features)
        per_obj = [
            len(o["cond_frame_outputs"]) + len(o["non_cond_frame_outputs"])
            for o in s.output_dict_per_obj.values()
        ]
        return held + max(per_obj, default=0)


def build_tracker(
    name: str = DEFAULT_TRACKER,
    *,
    random_mode: str | None = None,
    seed: int = 0,
    path: str | Path | None = None,
    weights_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    max_cond_frames: int = 2,
    dtype: str | torch.dtype | None = None,
) -> HFVideoTracker:
    """Build a tracker by name.

    Args:
        name: a key of :data:`TRACKERS`.
        random_mode: ``tiny`` / ``full`` seeded random weights; None reads
            ``HYBRIDGL_RANDOM_WEIGHTS`` (unset: the checkpoint).
        seed: seed of the random weights.
        path: the checkpoint folder; else resolved by the weights registry
            (:func:`hybridgl.weights.resolve`: ``weights_dir``, ``$HYBRIDGL_WEIGHTS_DIR``,
            the cache, a Hub download unless offline).
        device: where it runs (None: cuda, then mps, then cpu).
        max_cond_frames: see :class:`HFVideoTracker`.
        dtype: None / ``fp32`` (float32), ``bf16``, ``fp16`` or ``auto`` (bf16 on a CPU with
            native bf16 instructions or a CUDA GPU that supports it; the model spec's
            ``dtype``, resolved as for the segmenter).

    Raises:
        ValueError: unknown name; WeightsError: checkpoint missing;
        ImportError: no ``transformers`` (``hybridgl[transformers]``).
    """
    from hybridgl.models import random_weights_mode
    from hybridgl.models.runtime import pick_device, resolve_dtype

    spec = get_tracker_spec(name)
    _transformers()
    mode = random_mode if random_mode is not None else random_weights_mode()
    dev = pick_device(device)
    if mode:
        model = random_video_model(spec, mode, seed)
        processor = video_processor(spec, mode)
    else:
        from hybridgl import weights

        folder = weights.resolve(spec.checkpoint, path=path, weights_dir=weights_dir)
        model = load_video_model(spec, folder)
        processor = video_processor(spec)
    torch_dtype = resolve_dtype(dtype, dev) or torch.float32
    return HFVideoTracker(
        model.to(dev), processor, name, max_cond_frames=max_cond_frames, dtype=torch_dtype
    )
