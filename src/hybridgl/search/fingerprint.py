"""The model fingerprint stored with an index: everything that changes the stored features.

Two runs with equal fingerprints compute the same proposals, hybrid features and GEM
tokens for the same image. Scoring-only options (k1, k2, alpha, the betas, the relation
and direction fixes) are not part of it: they apply at query time and change no stored
byte. The preset name is recorded too, so an index says what it was built with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from hybridgl.search.errors import FingerprintMismatch

# MethodConfig fields that change what is stored (views, hybrid features, GEM tokens)
FEATURE_FIELDS = (
    "view_size",
    "blur_kernel",
    "fusion",
    "masking_block",
    "fusion_weight",
    "gem_depth",
    "gem_size",
    "gem_ss_iters",
    "clip_norm_both_views",
    "keep_aspect",
)
# SamConfig fields that change the masks (points_per_batch only changes memory)
SAM_FIELDS_IGNORED = ("points_per_batch",)


def make_fingerprint(
    *,
    sam: str | None,
    clip: str,
    preset: str,
    random_weights: str | None,
    dtype: str,
    dim: int,
    config: Any,
) -> dict[str, Any]:
    """The fingerprint of a model configuration (JSON-ready, keys sorted on dump)."""
    cfg = asdict(config)
    sam_cfg = {k: v for k, v in cfg.pop("sam").items() if k not in SAM_FIELDS_IGNORED}
    return {
        "sam": sam,
        "sam_options": sam_cfg,
        "clip": clip,
        "weights": f"random-{random_weights}" if random_weights else "pretrained",
        "preset": preset,
        "dtype": dtype,
        "dim": int(dim),
        "features": {k: cfg[k] for k in FEATURE_FIELDS},
    }


def fingerprint_of_segmenter(seg: Any) -> dict[str, Any]:
    """The fingerprint of a loaded :class:`~hybridgl.segmenter.Segmenter`."""
    info = getattr(seg, "model_info", {}) or {}
    return make_fingerprint(
        sam=info.get("sam"),
        clip=str(info.get("clip", "ViT-B-16")),
        preset=str(info.get("preset", "paper")),
        random_weights=info.get("random_weights") or None,
        dtype=str(info.get("dtype", "float32")),
        dim=int(seg.clip.visual.output_dim),
        config=seg.config,
    )


_DTYPE_OF_NAME = {"float32": None, "bfloat16": "bf16", "float16": "fp16"}


def fingerprint_of_spec(spec: Any, dim: int) -> dict[str, Any]:
    """The fingerprint a :class:`~hybridgl.spec.ModelSpec` gives, without building it."""
    from hybridgl.models import random_weights_mode

    return make_fingerprint(
        sam=spec.sam,
        clip=spec.clip,
        preset=spec.preset,
        random_weights=random_weights_mode(),
        dtype=spec.resolved_dtype_name(),
        dim=dim,
        config=spec.config(),
    )


def spec_of_fingerprint(fp: dict[str, Any]) -> Any:
    """The :class:`~hybridgl.spec.ModelSpec` an index was built with, from its fingerprint.

    Its preset, backend, CLIP and precision, plus every stored feature and SAM option that
    differs from the preset's as an override; what the fingerprint does not hold (device,
    threads, scoring-only options) stays at the defaults.
    """
    from hybridgl.spec import ModelSpec

    preset = str(fp.get("preset") or "paper")
    base = ModelSpec(sam=None, preset=preset).config()
    features = fp.get("features") or {}
    overrides = {
        k: v
        for k, v in features.items()
        if hasattr(base, k) and v != getattr(base, k) and k in FEATURE_FIELDS
    }
    sam_options = {
        k: v
        for k, v in (fp.get("sam_options") or {}).items()
        if hasattr(base.sam, k) and v != getattr(base.sam, k)
    }
    return ModelSpec(
        sam=fp.get("sam"),
        clip=str(fp.get("clip") or "ViT-B-16"),
        preset=preset,
        dtype=_DTYPE_OF_NAME.get(str(fp.get("dtype", "float32"))),
        overrides=overrides,
        sam_options=sam_options,
    )


def digest(fp: dict[str, Any]) -> str:
    """A short hash of the fingerprint."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def describe(fp: dict[str, Any]) -> str:
    """One-line summary: ``sam=vit_h clip=ViT-B-16 weights=pretrained preset=paper ... [hash]``."""
    feats = fp.get("features", {})
    parts = [
        f"sam={fp.get('sam')}",
        f"clip={fp.get('clip')}",
        f"weights={fp.get('weights')}",
        f"preset={fp.get('preset')}",
        f"dtype={fp.get('dtype')}",
        f"fusion={feats.get('fusion')}",
    ]
    return " ".join(parts) + f" [{digest(fp)}]"


def differences(stored: dict[str, Any], current: dict[str, Any], *, check_sam: bool) -> list[str]:
    """``key: stored -> current`` for each differing entry (nested dicts flattened)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(stored), flat(current)
    skip = () if check_sam else ("sam", "sam_options.")
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == s or (s.endswith(".") and k.startswith(s)) for s in skip):
            continue
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def check(stored: dict[str, Any], current: dict[str, Any], db: str, *, check_sam: bool) -> None:
    """Raise :class:`FingerprintMismatch` naming both fingerprints when they differ.

    ``check_sam`` False ignores the SAM entries (a run that computes no SAM proposals:
    searching, or indexing with masks brought by the user).
    """
    diffs = differences(stored, current, check_sam=check_sam)
    if diffs:
        raise FingerprintMismatch(
            f"index {db} was built with {describe(stored)}, this run uses {describe(current)} "
            f"({'; '.join(diffs)}); use the same model options, or re-index with --rebuild"
        )
