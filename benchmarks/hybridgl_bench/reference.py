"""The reference implementation's schedule, built from the library's public stages.

The reference code recomputes SAM's proposals and the hybrid features for every referred
object, and GEM's image pass and the text encoder for every expression; it caches nothing.
Emulated here with ``Segmenter.propose``, ``encode_image`` (proposals given), GEM's model
functions and the text encoder without the library's cache, then ``score`` on the
resulting state, so both schedules make the same choices.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

from hybridgl_bench.stages import (
    autocast_for,
    encode_image,
    encode_texts_uncached,
    expression_texts,
    now,
)


def _gem_tokens(seg: Any, image: Any) -> Any:
    import torch
    import torch.nn.functional as F

    from hybridgl.models.gem import gem_input, gem_patch_tokens

    cfg = seg.config
    with torch.no_grad(), autocast_for(seg):
        pixels = gem_input(image, cfg.gem_size, cfg.keep_aspect).to(seg.device)
        tokens = gem_patch_tokens(seg.clip.visual, pixels, cfg.gem_depth, cfg.gem_ss_iters)
    return F.normalize(tokens[0].float(), dim=-1)


def run_reference_schedule(seg: Any, work: list[dict], gt: dict[int, Any] | None) -> dict:
    """Run ``work`` on the reference schedule; the same result shape as ``run_ours``."""
    from hybridgl.images import load_image

    chosen, pure, proposals = [], [], []
    counts: collections.Counter[str] = collections.Counter()
    t0, c0 = now(seg), time.process_time()
    for item in work:
        for obj in item["objects"]:
            img = load_image(item["path"])
            if gt is not None:
                masks = gt[item["image_id"]]
            else:
                masks, _ = seg.propose(img)
                counts["sam_runs"] += 1
            proposals.append(int(masks.shape[0]))
            # hybrid features (and GEM, which the first expression reuses) per object
            state = encode_image(seg, img, proposals=masks)
            counts["feature_passes"] += int(masks.shape[0] > 0)
            counts["gem_passes"] += 1
            for k, expr in enumerate(obj):
                if k:  # GEM's image pass again for every further expression
                    state = dataclasses.replace(state, gem_tokens=_gem_tokens(seg, img))
                    counts["gem_passes"] += 1
                parse = seg.parse(expr)
                encode_texts_uncached(seg, expression_texts(seg, parse))
                p = seg.score(state, parse)
                chosen.append(p.index)
                pure.append(p.pure_index)
    total = now(seg) - t0
    return {
        "seconds": total,
        "cpu_seconds": time.process_time() - c0,
        "chosen": chosen,
        "pure": pure,
        "proposals": proposals,
        "stats": dict(counts),
    }
