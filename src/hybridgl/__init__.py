"""hybridgl: zero-shot referring image segmentation (HybridGL, CVPR 2025).

Import is cheap and side-effect free: models load only in
:meth:`Segmenter.from_pretrained` / :meth:`Segmenter.from_spec`, and the heavy modules
(torch, LanceDB) are imported on first use of the names that need them. Type checkers see
every export with its real type.
"""

from typing import TYPE_CHECKING

from hybridgl.config import PRESETS, MethodConfig, SamConfig, get_preset
from hybridgl.errors import (
    ExpressionError,
    HybridGLError,
    ImageError,
    ImageTooLargeError,
    InputError,
    MissingExtraError,
    UsageError,
    WeightsError,
)
from hybridgl.spec import ModelSpec
from hybridgl.types import Candidate, Parse, Prediction

if TYPE_CHECKING:  # the lazy names below, typed for mypy and IDEs
    from hybridgl.search.hits import SearchHit, SearchResults
    from hybridgl.search.index import Index
    from hybridgl.segmenter import Segmenter
    from hybridgl.state import ImageState

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Candidate",
    "ExpressionError",
    "HybridGLError",
    "ImageError",
    "ImageState",
    "ImageTooLargeError",
    "Index",
    "InputError",
    "MethodConfig",
    "MissingExtraError",
    "ModelSpec",
    "Parse",
    "Prediction",
    "SamConfig",
    "SearchHit",
    "SearchResults",
    "Segmenter",
    "UsageError",
    "WeightsError",
    "get_preset",
    "__version__",
]

_LAZY = {
    "Segmenter": "hybridgl.segmenter",
    "ImageState": "hybridgl.state",
    "Index": "hybridgl.search.index",  # collection search; LanceDB loads on first use
    "SearchHit": "hybridgl.search.hits",
    "SearchResults": "hybridgl.search.hits",
}


def __getattr__(name: str):  # lazy: torch and friends load on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hybridgl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
