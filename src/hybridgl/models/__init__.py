"""Model code: SAM proposals, the hybrid global-local CLIP encoder, GEM, the text encoder.

Only ``torch.nn`` modules, their builders and the functions that run them live here;
finding and checking checkpoint files is in :mod:`hybridgl.weights`.

The random-weights switch sits here, beside the builders it steers: with
``HYBRIDGL_RANDOM_WEIGHTS=tiny`` or ``full`` the builders' seeded random initialisers
(:func:`hybridgl.models.clip.randomize_clip`, :func:`hybridgl.models.sam.random_sam`)
replace the checkpoints (a test and benchmark device whose outputs are meaningless).
This module imports nothing heavy.
"""

from __future__ import annotations

import os
from typing import Any

from hybridgl.errors import WeightsError

__all__ = [
    "RANDOM_WEIGHTS_ENV",
    "RANDOM_WEIGHTS_MODES",
    "load_checkpoint_state",
    "random_weights_mode",
]

RANDOM_WEIGHTS_ENV = "HYBRIDGL_RANDOM_WEIGHTS"
RANDOM_WEIGHTS_MODES = ("tiny", "full")


def random_weights_mode() -> str | None:
    """Read ``HYBRIDGL_RANDOM_WEIGHTS``.

    Returns:
        None when unset or blank, else ``"tiny"`` (small test architectures) or ``"full"``
        (the real architectures), both with seeded random weights.

    Raises:
        ValueError: For any other value.
    """
    value = os.environ.get(RANDOM_WEIGHTS_ENV, "").strip()
    if not value:
        return None
    mode = value.lower()
    if mode not in RANDOM_WEIGHTS_MODES:
        raise ValueError(
            f"{RANDOM_WEIGHTS_ENV}={value!r} is not valid; use one of "
            f"{', '.join(RANDOM_WEIGHTS_MODES)} or leave it empty"
        )
    return mode


def load_checkpoint_state(module: Any, state: Any, checkpoint: str, target: str) -> None:
    """``module.load_state_dict(state, strict=False)``, refusing a checkpoint whose keys differ.

    Raises:
        WeightsError: missing or unexpected keys: "{checkpoint} does not match {target}"
            with the first five of each.
    """
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{checkpoint} does not match {target}: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}"
        )
