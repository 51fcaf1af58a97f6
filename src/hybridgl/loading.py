"""Building the models of a :class:`~hybridgl.segmenter.Segmenter` from a
:class:`~hybridgl.spec.ModelSpec` (``Segmenter.from_spec``).

:func:`load_models` applies the spec's environment and threads, resolves the checkpoints
(every missing file named at once), or builds seeded random weights under
``HYBRIDGL_RANDOM_WEIGHTS``, and returns the CLIP model, its tokenizer, the spaCy parser and
the proposal backend with the settings that describe them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hybridgl.config import MethodConfig
from hybridgl.errors import WeightsError
from hybridgl.models import random_weights_mode
from hybridgl.models.runtime import pick_device, resolve_dtype

if TYPE_CHECKING:
    from open_clip.model import CLIP

    from hybridgl.models.proposals import ProposalBackend
    from hybridgl.spec import ModelSpec
    from hybridgl.text import TextParser

# the warning about random weights has always come from this logger
log = logging.getLogger("hybridgl.segmenter")

__all__ = ["LoadedModels", "load_models"]


@dataclass
class LoadedModels:
    """What :func:`load_models` built (the arguments of ``Segmenter.__init__``)."""

    clip: CLIP
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    parser: TextParser
    proposer: ProposalBackend | None
    config: MethodConfig
    device: torch.device
    dtype: torch.dtype | None
    info: dict[str, Any]


def load_models(spec: ModelSpec) -> LoadedModels:
    """Load (or build randomly, under ``HYBRIDGL_RANDOM_WEIGHTS``) what ``spec`` describes.

    Raises:
        WeightsError: a checkpoint cannot be found (every missing one is named).
    """
    from hybridgl import weights
    from hybridgl.models import proposals as props
    from hybridgl.models.backends import get_backend_spec, require_transformers
    from hybridgl.models.runtime import configure_threads

    spec.apply_env()
    if spec.threads is not None:
        configure_threads(spec.threads)
    from hybridgl.models.clip import (
        build_clip_and_tokenizer,
        is_custom_text,
        load_clip_checkpoint,
        randomize_clip,
    )
    from hybridgl.text import TextParser

    sam, clip, seed = spec.sam, spec.clip, spec.seed
    cfg = spec.config()
    dev = pick_device(spec.device)
    torch_dtype = resolve_dtype(spec.dtype, dev)
    random_mode = random_weights_mode()
    backend = get_backend_spec(sam) if sam is not None else None
    if backend is not None and backend.needs_transformers:
        require_transformers()

    checkpoints: dict[str, str] = {}
    if random_mode:
        log.warning(
            "HYBRIDGL_RANDOM_WEIGHTS=%s: building RANDOMLY INITIALISED models. Every output "
            "is meaningless; use this only for tests and benchmarks.",
            random_mode,
        )
        if is_custom_text(clip) and random_mode != "tiny":
            raise WeightsError(
                f"HYBRIDGL_RANDOM_WEIGHTS={random_mode}: {clip} is built from its published "
                "configuration; use tiny, or its checkpoint"
            )
        clip_model, tokenizer = build_clip_and_tokenizer(
            clip, "tiny" if random_mode == "tiny" else "full"
        )
        clip_model = randomize_clip(clip_model, seed)
        proposer = None
        if sam is not None:
            proposer = props.build_backend(
                sam, cfg.sam, random_mode=random_mode, seed=seed + 1, device=dev
            )
    else:
        # resolve every file before loading any, and name every missing one at once
        problems: list[str] = []
        clip_path = sam_path = text_path = None
        try:
            clip_path = weights.resolve_clip(
                clip, path=spec.clip_checkpoint, weights_dir=spec.weights_dir
            )
        except WeightsError as e:
            problems.append(str(e))
        if is_custom_text(clip):
            from hybridgl.models.custom_clip import CUSTOM_CLIPS

            try:
                text_path = weights.resolve(
                    CUSTOM_CLIPS[clip].text_checkpoint, weights_dir=spec.weights_dir
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
        clip_model, tokenizer = build_clip_and_tokenizer(clip, "full", clip_path, text_path)
        clip_model = load_clip_checkpoint(clip_model, clip_path, clip)
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
    return LoadedModels(clip_model, tokenizer, parser, proposer, cfg, dev, torch_dtype, info)
