"""The table of proposal backends: names, families, checkpoints (torch-free).

This is the one vocabulary of backend names: ``from_pretrained(sam=...)``, ``--sam``,
:class:`hybridgl.spec.ModelSpec` and the option parsers read :data:`BACKENDS` (it imports
nothing heavy, so parsers need no torch). :mod:`hybridgl.models.proposals` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridgl.errors import MissingExtraError

TRANSFORMERS_HINT = 'pip install "hybridgl[transformers]"'


@dataclass(frozen=True)
class BackendSpec:
    """One proposal backend.

    Attributes:
        name: the name ``from_pretrained(sam=...)`` and ``--sam`` accept.
        family: ``sam1`` (segment_anything), ``hf_sam`` (transformers ``SamModel``),
            ``hf_sam_hq`` (``SamHQModel``) or ``hf_sam2`` (``Sam2Model``).
        checkpoint: its registry name in :mod:`hybridgl.weights`.
        size: architecture key of the family (``vit_h``, ``hiera_tiny``, ``slim_50``...).
    """

    name: str
    family: str
    checkpoint: str
    size: str

    @property
    def needs_transformers(self) -> bool:
        return self.family != "sam1"


BACKENDS: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        BackendSpec("vit_h", "sam1", "sam_vit_h", "vit_h"),
        BackendSpec("vit_l", "sam1", "sam_vit_l", "vit_l"),
        BackendSpec("vit_b", "sam1", "sam_vit_b", "vit_b"),
        BackendSpec("sam2.1_hiera_tiny", "hf_sam2", "sam2.1_hiera_tiny", "hiera_tiny"),
        BackendSpec("sam2.1_hiera_small", "hf_sam2", "sam2.1_hiera_small", "hiera_small"),
        BackendSpec(
            "sam2.1_hiera_base_plus", "hf_sam2", "sam2.1_hiera_base_plus", "hiera_base_plus"
        ),
        BackendSpec("sam2.1_hiera_large", "hf_sam2", "sam2.1_hiera_large", "hiera_large"),
        BackendSpec("slimsam_50", "hf_sam", "slimsam_50", "slim_50"),
        BackendSpec("slimsam_77", "hf_sam", "slimsam_77", "slim_77"),
        BackendSpec("sam_hq_vit_b", "hf_sam_hq", "sam_hq_vit_b", "vit_b"),
        BackendSpec("sam_hq_vit_l", "hf_sam_hq", "sam_hq_vit_l", "vit_l"),
        BackendSpec("sam_hq_vit_h", "hf_sam_hq", "sam_hq_vit_h", "vit_h"),
    )
}
"""Every proposal backend by name; ``vit_h`` is the paper's and the default."""

DEFAULT_BACKEND = "vit_h"


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend_spec(name: str) -> BackendSpec:
    """The :class:`BackendSpec` of ``name``; ValueError listing the known names otherwise."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown proposal backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None


def require_transformers() -> Any:
    """Import ``transformers`` or raise ImportError with the one-line install hint."""
    try:
        import transformers
    except ImportError:
        raise MissingExtraError(
            "this proposal backend needs Hugging Face transformers", "transformers"
        ) from None
    return transformers
