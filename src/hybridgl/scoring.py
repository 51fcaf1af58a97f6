"""Per-expression scoring of HybridGL as pure functions (METHOD.md sections 4 to 7).

Given an :class:`~hybridgl.state.ImageState`, a :class:`~hybridgl.types.Parse` and the CLIP
text embeddings of the prompts that :func:`text_prompts` lists, :func:`choose` computes the
CLIP scores, the relation guidance, the spatial position and coherence guidance and the final
choice, and returns the :class:`~hybridgl.types.Prediction`. No model runs here: the
:class:`~hybridgl.segmenter.Segmenter` encodes the texts (with its cache) and calls these
functions, so the arithmetic can be tested and reused on its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from hybridgl import coherence, guidance
from hybridgl.config import MethodConfig
from hybridgl.masks import masks_to_boxes_xywh
from hybridgl.state import ImageState
from hybridgl.targets import (
    TargetRules,
    dedupe,
    eligible_targets,
    no_target_check,
    overlap_counts,
    wants_many,
)
from hybridgl.types import Candidate, Parse, Prediction, Target, TargetEvidence

__all__ = ["choose", "no_proposal_prediction", "prediction_for", "text_prompts", "with_targets"]


def text_prompts(
    parse: Parse, cfg: MethodConfig, use_guidance: bool, contrast: Sequence[str] = ()
) -> list[str]:
    """The texts to encode for one parse, in the order :func:`choose` reads them.

    ``[s, np, *("a photo of " + context noun), gem prompt, *contrast]``; the GEM prompt
    (``"a photo of a " + np + "."``) only with guidance; the contrast prompts of the
    no-target test (:class:`~hybridgl.targets.TargetRules`) only for ``targets`` other
    than ``"one"``.
    """
    ctx_prompts = [cfg.context_prompt + c for c in parse.context_nouns]
    texts = [parse.sentence, parse.noun_phrase, *ctx_prompts]
    if use_guidance:
        texts.append(cfg.gem_prompt[0] + parse.noun_phrase + cfg.gem_prompt[1])
    return texts + list(contrast)


def _num_base_prompts(parse: Parse, use_guidance: bool) -> int:
    return 2 + len(parse.context_nouns) + (1 if use_guidance else 0)


def no_proposal_prediction(
    st: ImageState, parse: Parse, t0: float, mode: str = "one"
) -> Prediction:
    """The answer on an image without a proposal that has a pixel: nothing found."""
    return Prediction(
        mask=np.zeros((st.height, st.width), dtype=bool),
        box=(0.0, 0.0, 0.0, 0.0),
        score=0.0,
        found=False,
        candidates=[],
        pure_index=None,
        index=None,
        parse=parse,
        num_proposals=st.num_proposals,
        timings={"predict": time.perf_counter() - t0},
        evidence=TargetEvidence(mode=mode, rule="no_proposal", number_cues=parse.number_cues),
    )


@torch.no_grad()
def choose(
    st: ImageState,
    parse: Parse,
    emb: torch.Tensor,
    cfg: MethodConfig,
    logit_scale: float,
    top_k: int,
    use_guidance: bool,
    t0: float,
    mode: str = "one",
    rules: TargetRules | None = None,
) -> Prediction:
    """Score every proposal of ``st`` and choose one (METHOD.md sections 4 to 7).

    With ``mode="many"`` or ``"auto"`` the answer is then tested and extended by
    :func:`with_targets` (zero, one or several targets).

    Args:
        st: an image state with at least one proposal that has a pixel.
        parse: the parse of the expression.
        emb: ``(len(text_prompts(parse, cfg, use_guidance, contrast)), E)`` text
            embeddings (``contrast``: ``rules.contrast_prompts`` unless ``mode="one"``).
        cfg: the method's hyper-parameters.
        logit_scale: ``L`` of the CLIP model.
        top_k: number of ranked candidates to return.
        use_guidance: apply spatial guidance; False gives the pure CLIP choice.
        t0: ``time.perf_counter()`` at the start of the expression (for ``timings``).
        mode: ``"one"`` (the method as published), ``"many"`` or ``"auto"``.
        rules: the target thresholds (modes other than ``"one"``; None: the defaults).

    Returns:
        The :class:`~hybridgl.types.Prediction`.
    """
    n_ctx = len(parse.context_nouns)
    f_text = guidance.phrase_embedding(emb[0], emb[1], cfg.text_weight)
    c = guidance.clip_logits(st.features, f_text, logit_scale)
    p = guidance.softmax(c)
    pure = int(torch.argmax(c).item())
    t_text = time.perf_counter()

    if not use_guidance:
        order = torch.argsort(c, descending=True, stable=True)[:top_k].tolist()
        cands = [Candidate(index=i, clip_score=float(c[i]), probability=float(p[i])) for i in order]
        one = prediction_for(
            st, parse, pure, pure, float(p[pure]), cands, {"predict": time.perf_counter() - t0}
        )
        if mode == "one":
            return one
        ctx = _Scores(c, p, None, None, None, None, None)
        return with_targets(st, parse, emb, cfg, logit_scale, one, ctx, mode, rules, t0)

    q = None
    if n_ctx:
        f_ctx = emb[2 : 2 + n_ctx].mean(dim=0)
        q = guidance.softmax(guidance.clip_logits(st.features, f_ctx, logit_scale))
    boxes = torch.as_tensor(st.boxes, dtype=torch.float32, device=c.device)
    t_idx, r = guidance.relation_guidance(p, q, boxes, parse.relation, cfg.k1, cfg.k2)

    # spatial position and coherence guidance on the top-k1 masks only, at the
    # masks' (working) resolution
    g = st.gem_grid
    wh, ww = st.work_size
    n_base = _num_base_prompts(parse, use_guidance)
    cos = (st.gem_tokens @ F.normalize(emb[n_base - 1], dim=-1)).view(g, g)
    heat = coherence.image_heat_map(cos.float().cpu(), cfg.gem_size, wh, ww, cfg.keep_aspect)
    prior = guidance.direction_prior(parse.direction, wh, ww, vertical=cfg.vertical_priors)
    beta = guidance.beta_for(parse.relation, cfg.beta_big, cfg.beta_small, cfg.beta_default)
    t_list = t_idx.tolist()
    g_t = coherence.coherence_scores(heat, prior, torch.from_numpy(st.masks[t_list]), beta)
    final = guidance.final_scores(r.cpu().float(), g_t.float(), cfg.alpha)
    best = int(torch.argmax(final).item())
    chosen = t_list[best]

    order = torch.argsort(final, descending=True, stable=True).tolist()
    cands = [
        Candidate(
            index=t_list[j],
            clip_score=float(c[t_list[j]]),
            probability=float(p[t_list[j]]),
            relation_score=float(r[j]),
            coherence_score=float(g_t[j]),
            final_score=float(final[j]),
        )
        for j in order
    ]
    if top_k > len(cands):
        rest = [
            i for i in torch.argsort(c, descending=True, stable=True).tolist() if i not in t_list
        ]
        cands += [
            Candidate(index=i, clip_score=float(c[i]), probability=float(p[i]))
            for i in rest[: top_k - len(cands)]
        ]
    cands = cands[:top_k]
    timings = {"text": t_text - t0, "predict": time.perf_counter() - t0}
    one = prediction_for(st, parse, pure, chosen, float(final[best]), cands, timings)
    if mode == "one":
        return one
    ctx = _Scores(c, p, q, boxes, heat, prior, beta)
    return with_targets(st, parse, emb, cfg, logit_scale, one, ctx, mode, rules, t0)


def prediction_for(
    st: ImageState,
    parse: Parse,
    pure: int,
    chosen: int,
    score: float,
    cands: list[Candidate],
    timings: dict[str, float],
) -> Prediction:
    """The :class:`~hybridgl.types.Prediction` of proposal ``chosen`` (mask at input size)."""
    b = st.boxes[chosen]
    box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
    mask = st.input_mask(chosen)
    first = cands[0] if cands and cands[0].index == chosen else None
    target = Target(
        index=chosen,
        mask=mask,
        box=box,
        score=score,
        clip_score=first.clip_score if first is not None else None,
        relation_score=first.relation_score if first is not None else None,
        coherence_score=first.coherence_score if first is not None else None,
    )
    return Prediction(
        mask=mask,
        box=box,
        score=score,
        found=True,
        candidates=cands,
        pure_index=pure,
        index=chosen,
        parse=parse,
        num_proposals=st.num_proposals,
        timings=timings,
        targets=[target],
        evidence=TargetEvidence(mode="one", rule="best", best_index=chosen),
    )


class _Scores(NamedTuple):
    """What :func:`choose` computed that :func:`with_targets` reuses."""

    c: torch.Tensor  # (N,) scaled cosines with the phrase
    p: torch.Tensor  # (N,) softmax of c
    q: torch.Tensor | None  # (N,) softmax of the context logits (None: no context noun)
    boxes: torch.Tensor | None  # (N, 4) XYWH; None without guidance
    heat: torch.Tensor | None  # (h, w) GEM heat map; None without guidance
    prior: torch.Tensor | None  # (h, w) direction prior
    beta: float | None


@torch.no_grad()
def with_targets(
    st: ImageState,
    parse: Parse,
    emb: torch.Tensor,
    cfg: MethodConfig,
    logit_scale: float,
    one: Prediction,
    sc: _Scores,
    mode: str,
    rules: TargetRules | None,
    t0: float,
) -> Prediction:
    """Zero, one or several targets around the ``"one"`` answer (:mod:`hybridgl.targets`).

    1. No-target test on the best proposal (the ``"one"`` answer): its phrase cosine
       against the floor and against the contrast prompts (:func:`no_target_check`).
    2. Several targets (``"many"``; ``"auto"`` when the parse has a number cue): the
       ``rules.pool`` proposals with the highest CLIP scores (at least ``k1``) get the
       relation and coherence guidance as candidates of their own (``k1`` = the pool),
       their final scores are the target scores; those within the margins of the best
       (:func:`eligible_targets`) are de-duplicated by overlap (:func:`dedupe`).

    The mask is the union of the targets, the box that of the union; ``index``,
    ``pure_index``, ``score`` and the candidates stay those of the ``"one"`` answer.
    """
    r_ = rules if rules is not None else TargetRules()
    best = one.index
    assert best is not None
    several = mode == "many" or wants_many(parse.number_cues)
    n_base = _num_base_prompts(parse, sc.heat is not None)
    v = F.normalize(st.features[best], dim=-1, eps=1e-12)
    cos_all = sc.c / logit_scale
    cosine = float(cos_all[best])
    contrast = {}
    for k, prompt in enumerate(r_.contrast_prompts):
        t = F.normalize(emb[n_base + k].to(v.dtype), dim=-1, eps=1e-12)
        contrast[prompt] = float(v @ t)
    found, rule = no_target_check(cosine, contrast, r_.floor, r_.contrast_margin)
    evidence = TargetEvidence(
        mode=mode,
        rule=rule,
        several=several,
        number_cues=parse.number_cues,
        best_index=best,
        cosine=cosine,
        contrast=contrast,
        floor=r_.floor,
        contrast_margin=r_.contrast_margin,
        margin=r_.margin if several and sc.heat is not None else None,
        cosine_margin=r_.cosine_margin if several else None,
    )
    timings = dict(one.timings)
    if not found:
        timings["predict"] = time.perf_counter() - t0
        return Prediction(
            mask=np.zeros((st.height, st.width), dtype=bool),
            box=(0.0, 0.0, 0.0, 0.0),
            score=one.score,
            found=False,
            candidates=one.candidates,
            pure_index=one.pure_index,
            index=None,
            parse=parse,
            num_proposals=st.num_proposals,
            timings=timings,
            targets=[],
            evidence=evidence,
        )
    if not several:
        evidence = dataclasses.replace(evidence, considered=1)
        return _finish(one, one.targets, evidence, st, timings, t0)

    pool_k = max(r_.pool, cfg.k1)
    if sc.heat is not None and sc.prior is not None and sc.boxes is not None:
        t_idx, r = guidance.relation_guidance(sc.p, sc.q, sc.boxes, parse.relation, pool_k, cfg.k2)
        pool = t_idx.tolist()
        g_t = coherence.coherence_scores(
            sc.heat, sc.prior, torch.from_numpy(st.masks[pool]), float(sc.beta or 0.0)
        )
        final = guidance.final_scores(r.cpu().float(), g_t.float(), cfg.alpha)
        scores = [float(x) for x in final]
        rel = [float(x) for x in r]
        coh = [float(x) for x in g_t]
        margin: float | None = r_.margin
    else:
        pool = torch.argsort(sc.c, descending=True, stable=True)[:pool_k].tolist()
        scores = [float(cos_all[i]) for i in pool]
        rel = coh = [float("nan")] * len(pool)
        margin = None
    if best not in pool:  # cannot happen (the answer is among the top k1); stay safe
        pool.append(best)
        scores.append(one.score)
        rel.append(float("nan"))
        coh.append(float("nan"))
    cosines = [float(cos_all[i]) for i in pool]
    ranked = eligible_targets(best, pool, scores, cosines, margin, r_.cosine_margin)
    inter, areas = overlap_counts(st.masks[ranked])
    kept = [ranked[k] for k in dedupe(inter, areas, r_.dedup_iou, r_.containment, r_.max_targets)]
    evidence = dataclasses.replace(
        evidence,
        considered=len(pool),
        duplicates=len(ranked) - len(kept),
        pool=tuple((int(i), s, c) for i, s, c in zip(pool, scores, cosines, strict=True)),
    )
    pos = {i: k for k, i in enumerate(pool)}
    targets = [one.targets[0]]
    for i in kept[1:]:
        b = st.boxes[i]
        k = pos[i]
        targets.append(
            Target(
                index=i,
                mask=st.input_mask(i),
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=scores[k],
                clip_score=float(sc.c[i]),
                relation_score=rel[k],
                coherence_score=coh[k],
            )
        )
    return _finish(one, targets, evidence, st, timings, t0)


def _finish(
    one: Prediction,
    targets: list[Target],
    evidence: TargetEvidence,
    st: ImageState,
    timings: dict[str, float],
    t0: float,
) -> Prediction:
    if len(targets) == 1:
        mask, box = targets[0].mask, targets[0].box
    else:
        mask = np.logical_or.reduce([t.mask for t in targets])
        b = masks_to_boxes_xywh(mask[None])[0]
        box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
    timings["predict"] = time.perf_counter() - t0
    return Prediction(
        mask=mask,
        box=box,
        score=one.score,
        found=True,
        candidates=one.candidates,
        pure_index=one.pure_index,
        index=one.index,
        parse=one.parse,
        num_proposals=st.num_proposals,
        timings=timings,
        targets=targets,
        evidence=evidence,
    )
