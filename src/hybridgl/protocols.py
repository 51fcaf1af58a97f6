"""Typed seams: what the faces (server, batch and jobs, evaluation, search) need from a
segmenter.

:class:`hybridgl.Segmenter` satisfies :class:`SegmenterLike`; a test double only has to
provide these members. Importing this module is cheap (no torch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy.typing as npt

    from hybridgl.config import MethodConfig
    from hybridgl.images import ImageInput
    from hybridgl.state import ImageState
    from hybridgl.types import Parse, Prediction

__all__ = ["SegmenterLike"]


@runtime_checkable
class SegmenterLike(Protocol):
    """The public stages of :class:`hybridgl.Segmenter` that the faces call.

    ``encode_image`` and ``score`` / ``predict(..., state=...)`` never touch the current
    image, so threads that pass their own state are independent. ``targets`` and
    ``thresholds`` (zero, one or many targets, :mod:`hybridgl.targets`) are keyword-only;
    the faces pass them only when they differ from ``"one"`` / None, so a double without
    them still serves the default.
    """

    @property
    def config(self) -> MethodConfig:
        """The method's hyper-parameters."""
        ...

    @property
    def model_info(self) -> dict[str, Any]:
        """JSON-ready description of the models (sizes, device, dtype, preset)."""
        ...

    def encode_image(
        self,
        image: ImageInput,
        proposals: npt.ArrayLike | None = None,
        *,
        max_pixels: int | None = ...,
    ) -> ImageState:
        """Everything that depends only on the image; the current image is untouched."""
        ...

    def set_image(
        self,
        image: ImageInput,
        proposals: npt.ArrayLike | None = None,
        *,
        max_pixels: int | None = ...,
    ) -> ImageState:
        """``encode_image`` and make the result the current image."""
        ...

    def parse(self, expression: str) -> Parse:
        """Parse one referring expression."""
        ...

    def score(
        self,
        state: ImageState,
        parse: Parse,
        top_k: int = 3,
        guidance: bool = True,
        *,
        targets: str = "one",
        thresholds: Any = None,
    ) -> Prediction:
        """Choose a proposal of ``state`` for a parsed expression."""
        ...

    def predict(
        self,
        expression: str,
        top_k: int = 3,
        guidance: bool = True,
        state: ImageState | None = None,
        *,
        targets: str = "one",
        thresholds: Any = None,
    ) -> Prediction:
        """Parse and score one expression on ``state`` (None: the current image)."""
        ...

    def predict_many(
        self,
        expressions: Iterable[str],
        top_k: int = 3,
        guidance: bool = True,
        state: ImageState | None = None,
        *,
        targets: str = "one",
        thresholds: Any = None,
    ) -> list[Prediction]:
        """``predict`` for several expressions on one image."""
        ...
