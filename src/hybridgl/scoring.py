"""Per-expression scoring of HybridGL as pure functions (METHOD.md sections 4 to 7).

Given an :class:`~hybridgl.state.ImageState`, a :class:`~hybridgl.types.Parse` and the CLIP
text embeddings of the prompts that :func:`text_prompts` lists, :func:`choose` computes the
CLIP scores, the relation guidance, the spatial position and coherence guidance and the final
choice, and returns the :class:`~hybridgl.types.Prediction`. No model runs here: the
:class:`~hybridgl.segmenter.Segmenter` encodes the texts (with its cache) and calls these
functions, so the arithmetic can be tested and reused on its own.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from hybridgl import guidance
from hybridgl.config import MethodConfig
from hybridgl.state import ImageState
from hybridgl.types import Candidate, Parse, Prediction

__all__ = ["choose", "no_proposal_prediction", "prediction_for", "text_prompts"]


def text_prompts(parse: Parse, cfg: MethodConfig, use_guidance: bool) -> list[str]:
    """The texts to encode for one parse, in the order :func:`choose` reads them.

    ``[s, np, *("a photo of " + context noun), gem prompt]``; the GEM prompt
    (``"a photo of a " + np + "."``) only with guidance.
    """
    ctx_prompts = [cfg.context_prompt + c for c in parse.context_nouns]
    texts = [parse.sentence, parse.noun_phrase, *ctx_prompts]
    if use_guidance:
        texts.append(cfg.gem_prompt[0] + parse.noun_phrase + cfg.gem_prompt[1])
    return texts


def no_proposal_prediction(st: ImageState, parse: Parse, t0: float) -> Prediction:
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
) -> Prediction:
    """Score every proposal of ``st`` and choose one (METHOD.md sections 4 to 7).

    Args:
        st: an image state with at least one proposal that has a pixel.
        parse: the parse of the expression.
        emb: ``(len(text_prompts(parse, cfg, use_guidance)), E)`` text embeddings.
        cfg: the method's hyper-parameters.
        logit_scale: ``L`` of the CLIP model.
        top_k: number of ranked candidates to return.
        use_guidance: apply spatial guidance; False gives the pure CLIP choice.
        t0: ``time.perf_counter()`` at the start of the expression (for ``timings``).

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
        return prediction_for(
            st, parse, pure, pure, float(p[pure]), cands, {"predict": time.perf_counter() - t0}
        )

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
    cos = (st.gem_tokens @ F.normalize(emb[-1], dim=-1)).view(g, g)
    heat = guidance.image_heat_map(cos.float().cpu(), cfg.gem_size, wh, ww, cfg.keep_aspect)
    prior = guidance.direction_prior(parse.direction, wh, ww, vertical=cfg.vertical_priors)
    beta = guidance.beta_for(parse.relation, cfg.beta_big, cfg.beta_small, cfg.beta_default)
    t_list = t_idx.tolist()
    g_t = guidance.coherence_scores(heat, prior, torch.from_numpy(st.masks[t_list]), beta)
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
    return prediction_for(st, parse, pure, chosen, float(final[best]), cands, timings)


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
    return Prediction(
        mask=st.input_mask(chosen),
        box=box,
        score=score,
        found=True,
        candidates=cands,
        pure_index=pure,
        index=chosen,
        parse=parse,
        num_proposals=st.num_proposals,
        timings=timings,
    )
