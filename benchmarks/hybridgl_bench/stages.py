"""The timing primitives of the benchmark: clocks, memory, uncached stages.

Shared by our schedule (:mod:`hybridgl_bench.measure`), the reference schedule
(:mod:`hybridgl_bench.reference`) and the backends suite, which import this module and not
each other.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import warnings
from typing import Any


def autocast_for(seg: Any):
    """The autocast context the segmenter runs its models under (public attributes)."""
    import torch

    if seg.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(seg.device.type, dtype=seg.dtype)


def now(seg: Any | None = None) -> float:
    dev = getattr(seg, "device", None)
    if dev is not None and dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)
    return time.perf_counter()


def peak_rss_gib() -> float:
    import resource

    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def rss_gib() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**30


def count_clip_models() -> int:
    """open_clip CLIP models alive in this process (one serves features, text and GEM)."""
    import open_clip

    kinds = tuple(
        c
        for c in (getattr(open_clip, "CLIP", None), getattr(open_clip, "CustomTextCLIP", None))
        if c
    )
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, kinds))


def encode_image(seg: Any, image: Any, proposals: Any = None) -> Any:
    """``Segmenter.encode_image``: the image stages, the current image untouched."""
    return seg.encode_image(image, proposals=proposals)


def expression_texts(seg: Any, parse: Any) -> list[str]:
    """The prompts ``Segmenter.score`` encodes for one parsed expression (METHOD.md 4-6)."""
    cfg = seg.config
    ctx = [cfg.context_prompt + c for c in parse.context_nouns]
    gem = cfg.gem_prompt[0] + parse.noun_phrase + cfg.gem_prompt[1]
    return [parse.sentence, parse.noun_phrase, *ctx, gem]


def _text_encoder() -> Any:
    from hybridgl.models.clip import encode_text_trimmed

    return encode_text_trimmed


def encode_texts_uncached(seg: Any, texts: list[str]) -> None:
    """Encode ``texts`` the way ``Segmenter.encode_texts`` does, bypassing its cache."""
    import torch

    enc = _text_encoder()
    with torch.no_grad(), autocast_for(seg):
        for t in texts:
            enc(seg.clip, seg.tokenizer([t]).to(seg.device))
