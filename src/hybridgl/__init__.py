"""hybridgl: zero-shot referring image segmentation (HybridGL, CVPR 2025).

Import is cheap and side-effect free: models load only in
:meth:`Segmenter.from_pretrained`.
"""

from hybridgl.config import PRESETS, MethodConfig, SamConfig, get_preset
from hybridgl.types import Candidate, Parse, Prediction

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Candidate",
    "Index",
    "MethodConfig",
    "Parse",
    "Prediction",
    "SamConfig",
    "SearchHit",
    "Segmenter",
    "get_preset",
    "__version__",
]


def __getattr__(name: str):  # lazy: torch and friends load on first use
    if name == "Segmenter":
        from hybridgl.segmenter import Segmenter

        return Segmenter
    if name in ("Index", "SearchHit"):  # collection search; LanceDB loads on first use
        from hybridgl.search import index

        return getattr(index, name)
    raise AttributeError(name)
