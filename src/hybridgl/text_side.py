"""The text side of :class:`~hybridgl.segmenter.Segmenter`: the parse of an expression
(METHOD.md sections 4 to 6) and CLIP text embeddings, cached by string.

A mixin: the attributes it reads (models, device, locks, the cache) are set by
``Segmenter.__init__``; ``_autocast`` comes from :class:`~hybridgl.image_side.ImageSide`.
"""

from __future__ import annotations

import collections
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from hybridgl.errors import ExpressionError
from hybridgl.models.clip import encode_text_trimmed
from hybridgl.types import Parse

if TYPE_CHECKING:
    from open_clip.model import CLIP

    from hybridgl.text import TextParser

__all__ = ["TextSide"]


class TextSide:
    """Parsing and text encoding of the segmenter (see :class:`~hybridgl.Segmenter`)."""

    clip: CLIP
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    parser: TextParser
    device: torch.device
    stats: collections.Counter[str]
    lock: threading.RLock
    _parse_lock: threading.Lock
    _text_cache: OrderedDict[str, torch.Tensor]
    _text_cache_size: int
    _autocast: Callable[[], torch.autocast]  # ImageSide's

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings, cached by string.

        Texts longer than CLIP's 77-token context are truncated. Each text is encoded on
        its own (a few positions long, see :func:`~hybridgl.models.clip.encode_text_trimmed`),
        so its embedding is bitwise the same whatever else is encoded or cached: batching
        texts of other lengths would change the float rounding, and results would depend on
        the cache's history.

        Args:
            texts: the texts (duplicates allowed).

        Returns:
            ``(len(texts), E)`` float32 embeddings (unnormalised) on the model's device.
        """
        found: dict[str, torch.Tensor] = {}
        for t in dict.fromkeys(texts):
            with self.lock:
                emb = self._text_cache.get(t)
                if emb is not None:
                    self._text_cache.move_to_end(t)
            if emb is None:
                tokens = self.tokenizer([t]).to(self.device)
                with self._autocast():
                    emb = encode_text_trimmed(self.clip, tokens)[0].float()
                with self.lock:
                    self.stats["text_encodes"] += 1
                    self._text_cache[t] = emb
                    while len(self._text_cache) > self._text_cache_size:
                        self._text_cache.popitem(last=False)
            found[t] = emb
        return torch.stack([found[t] for t in texts])

    def parse(self, expression: str) -> Parse:
        """Parse an expression (METHOD.md sections 4 to 6).

        Args:
            expression: an English referring expression.

        Returns:
            The :class:`~hybridgl.types.Parse` (sentence, noun phrase, context nouns,
            relation, direction).

        Raises:
            ExpressionError: not a string, or empty.
        """
        if not isinstance(expression, str):
            raise ExpressionError(f"expression must be a string, got {type(expression).__name__}")
        if not expression.strip():
            raise ExpressionError("expression is empty")
        with self._parse_lock:
            return self.parser.parse(expression)
