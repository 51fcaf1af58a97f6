"""CLIPs with a timm image tower and a Hugging Face text tower (open_clip's ``CustomTextCLIP``):
BiomedCLIP.

BiomedCLIP (``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; Zhang et
al., 2023) pairs timm's ``vit_base_patch16_224`` (12 blocks, patch 16, class-token pooling,
a linear projection to 512) with a PubMedBERT text tower (BiomedBERT base uncased abstract,
256 tokens, its ``[CLS]`` state through an MLP projection). open_clip builds it from the
``open_clip_config.json`` of its Hub repository; the text tower's configuration and
tokenizer come from the BiomedBERT repository that config names. Both are registry entries
(:mod:`hybridgl.weights`: ``clip_biomedclip`` and ``biomedbert_base_uncased_abstract``),
resolved to local folders before anything is built, so no code reaches the network here.

:func:`build_custom_clip` builds the model and its tokenizer through one code path for
both sizes: ``full`` from the two folders, ``tiny`` (tests) from a configuration written
in code to a temporary folder: timm's ``vit_tiny_patch16_224`` (the same patch size,
token grid and 12 blocks, width 192) and a 2-layer BERT of width 64 with a character-level
WordPiece vocabulary. The hybrid features and GEM run on the timm tower through
:mod:`hybridgl.models.timm_vit`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridgl.errors import MissingExtraError, WeightsError

__all__ = ["CUSTOM_CLIPS", "CustomClipSpec", "build_custom_clip", "tiny_text_folder"]


@dataclass(frozen=True)
class CustomClipSpec:
    """One CLIP of this family.

    Attributes:
        name: the name ``--clip`` takes.
        hub_id: open_clip's name for it (``hf-hub:owner/repo``).
        text_checkpoint: the registry entry of the text tower's config and tokenizer.
        tiny_cfg: open_clip's ``model_cfg`` of the tiny test size (the text tower's
            names are filled in by :func:`build_custom_clip`).
    """

    name: str
    hub_id: str
    text_checkpoint: str
    tiny_cfg: dict[str, Any] = field(default_factory=dict)


_TINY_TIMM_VIT = {
    "timm_model_name": "vit_tiny_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 224,
}
_TINY_BERT_TEXT = {
    "hf_proj_type": "mlp",
    "hf_pooler_type": "cls_last_hidden_state_pooler",
    "context_length": 256,
}

CUSTOM_CLIPS: dict[str, CustomClipSpec] = {
    "BiomedCLIP": CustomClipSpec(
        "BiomedCLIP",
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "biomedbert_base_uncased_abstract",
        {"embed_dim": 32, "vision_cfg": _TINY_TIMM_VIT, "text_cfg": _TINY_BERT_TEXT},
    )
}

_CONFIG_FILE = "open_clip_config.json"
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _require() -> tuple[Any, Any]:
    try:
        import timm  # noqa: F401
        import transformers
        from open_clip.model import CustomTextCLIP
    except ImportError as e:
        raise MissingExtraError(
            "BiomedCLIP (a timm image tower and a BERT text tower)",
            "biomed",
            detail=f"{e.name} is not installed",
        ) from None
    return CustomTextCLIP, transformers


def tiny_text_folder(folder: Path) -> Path:
    """Write the tiny test text tower (``config.json``, ``vocab.txt``) into ``folder``."""
    _, transformers = _require()
    vocab = [*_SPECIALS, *_CHARS, *(f"##{c}" for c in _CHARS), *".,;:!?'\"-()/"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
    ).save_pretrained(str(folder))
    return folder


def _published_cfg(clip_dir: Path) -> dict[str, Any]:
    path = clip_dir / _CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cfg = dict(doc["model_cfg"])
        cfg["vision_cfg"], cfg["text_cfg"] = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"cannot read the model configuration {path}: {e}") from None
    if not cfg["vision_cfg"].get("timm_model_name") or not cfg["text_cfg"].get("hf_model_name"):
        raise WeightsError(f"{path} does not describe a timm image and HF text tower")
    return cfg


def _build(cfg: dict[str, Any], text_dir: Path) -> tuple[Any, Any]:
    custom_text_clip, _ = _require()
    from open_clip.tokenizer import HFTokenizer

    cfg = {k: v for k, v in cfg.items() if k not in ("custom_text", "quick_gelu")}
    vision = {**cfg.pop("vision_cfg"), "timm_model_pretrained": False}
    text = {
        **cfg.pop("text_cfg"),
        "hf_model_name": str(text_dir),  # a local folder: config only, nothing downloaded
        "hf_tokenizer_name": str(text_dir),
        "hf_model_pretrained": False,
    }
    model = custom_text_clip(vision_cfg=vision, text_cfg=text, **cfg)
    # the attribute open_clip's own ViT has and the segmenter reads (feature width)
    model.visual.output_dim = int(cfg["embed_dim"])
    tokenizer = HFTokenizer(str(text_dir), context_length=int(text.get("context_length", 77)))
    return model, tokenizer


def build_custom_clip(
    name: str,
    size: str = "full",
    clip_dir: str | Path | None = None,
    text_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """The model (random values, load weights next) and its tokenizer.

    Args:
        name: a key of :data:`CUSTOM_CLIPS`.
        size: ``full`` (needs ``clip_dir`` with ``open_clip_config.json`` and ``text_dir``
            with the text tower's ``config.json`` and ``vocab.txt``) or ``tiny``.

    Raises:
        ValueError: unknown name or size; WeightsError: a folder lacks its files;
        MissingExtraError: no timm / transformers (``hybridgl[biomed]``).
    """
    spec = CUSTOM_CLIPS.get(name)
    if spec is None:
        raise ValueError(f"not a custom-text CLIP: {name!r}; known: {', '.join(CUSTOM_CLIPS)}")
    if size == "tiny":
        _require()
        with tempfile.TemporaryDirectory(prefix="hybridgl-tinytext-") as tmp:
            cfg = json.loads(json.dumps(spec.tiny_cfg))
            return _build(cfg, tiny_text_folder(Path(tmp)))
    if size != "full":
        raise ValueError(f"unknown CLIP size {size!r}")
    if clip_dir is None or text_dir is None:
        raise WeightsError(f"{name} needs its checkpoint folder and its text tower folder")
    clip_dir, text_dir = Path(clip_dir), Path(text_dir)
    if clip_dir.is_file():
        clip_dir = clip_dir.parent
    for need in ("config.json", "vocab.txt"):
        if not (text_dir / need).is_file():
            raise WeightsError(f"the text tower folder {text_dir} has no {need}")
    return _build(_published_cfg(clip_dir), text_dir)
