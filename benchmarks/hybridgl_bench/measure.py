"""Measuring: stage times through the Segmenter's public stages, our schedule, memory.

Stages are timed by calling them, never by patching the library: the proposal backend
reports its image-encoder and mask-generation seconds (``Segmenter.proposer.last_timings``);
views, hybrid features and GEM are timed by calling the model functions ``set_image`` /
``encode_image`` is built from, on the same image and proposals; text encoding by
encoding an expression's prompts with the model's text encoder (no cache); guidance as
``predict`` on texts already encoded minus parsing.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from hybridgl_bench.stages import (
    autocast_for,
    count_clip_models,
    encode_image,
    encode_texts_uncached,
    expression_texts,
    now,
    peak_rss_gib,
    rss_gib,
)
from hybridgl_bench.workload import coco_index, coco_masks


# ---------------------------------------------------------------------------- helpers
def clip_stage_times(seg: Any, image: Any, masks: Any) -> dict[str, float]:
    """Views, hybrid features and GEM of one image, each timed by calling the model
    functions that ``encode_image`` runs (``hybrid_clip.make_views`` and
    ``hybrid_features`` per chunk of ``feature_batch`` proposals, GEM's input and pass)."""
    import numpy as np
    import torch

    from hybridgl.models import hybrid_clip
    from hybridgl.models.gem import gem_input, gem_patch_tokens

    cfg, dev = seg.config, seg.device
    out = {"views": 0.0, "hybrid_features": 0.0, "gem": 0.0}
    with torch.no_grad(), autocast_for(seg):
        m = torch.from_numpy(np.asarray(masks, dtype=bool))
        if m.shape[0]:
            t = now(seg)
            img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(dev)
            need_global = cfg.fusion in ("G2L", "L2G", "G2L&L2G")
            blurred_t = img_t
            if need_global:
                blurred = hybrid_clip.blur_image(image, cfg.blur_kernel)
                blurred_t = torch.from_numpy(blurred).permute(2, 0, 1).to(dev)
            out["views"] += now(seg) - t
            for s in range(0, m.shape[0], cfg.feature_batch):
                t = now(seg)
                g, loc, grid = hybrid_clip.make_views(
                    img_t, blurred_t, m[s : s + cfg.feature_batch].to(dev), cfg, need_global
                )
                t1 = now(seg)
                hybrid_clip.hybrid_features(seg.clip.visual, g, loc, grid, cfg).float()
                t2 = now(seg)
                out["views"] += t1 - t
                out["hybrid_features"] += t2 - t1
        t = now(seg)
        pixels = gem_input(image, cfg.gem_size, cfg.keep_aspect).to(dev)
        gem_patch_tokens(seg.clip.visual, pixels, cfg.gem_depth, cfg.gem_ss_iters)
        out["gem"] = now(seg) - t
    return out


def expression_stage_times(seg: Any, state: Any, expressions: list[str]) -> dict[str, float]:
    """Per-expression means: text encoding (uncached), parsing, guidance and choice."""
    text = parse = guide = 0.0
    for e in expressions:
        t = now(seg)
        p = seg.parse(e)
        t1 = now(seg)
        encode_texts_uncached(seg, expression_texts(seg, p))
        t2 = now(seg)
        seg.encode_texts(expression_texts(seg, p))  # fill the library's cache
        t3 = now(seg)
        seg.score(state, p)
        t4 = now(seg)
        parse += t1 - t
        text += t2 - t1
        guide += t4 - t3
    k = max(1, len(expressions))
    return {"text": text / k, "parse": parse / k, "guidance": guide / k}


# ---------------------------------------------------------------------------- our schedule
def run_ours(seg: Any, work: list[dict], gt: dict[int, Any] | None) -> dict[str, Any]:
    """The library's schedule: ``set_image`` once per image, ``predict`` per expression."""
    before = dict(seg.stats)
    chosen, pure, proposals = [], [], []
    t0, c0 = now(seg), time.process_time()
    for item in work:
        props = gt[item["image_id"]] if gt is not None else None
        st = seg.set_image(item["path"], proposals=props)
        proposals.append(st.num_proposals)
        for obj in item["objects"]:
            for expr in obj:
                p = seg.predict(expr)
                chosen.append(p.index)
                pure.append(p.pure_index)
    total = now(seg) - t0
    return {
        "seconds": total,
        "cpu_seconds": time.process_time() - c0,
        "chosen": chosen,
        "pure": pure,
        "proposals": proposals,
        "stats": {k: seg.stats[k] - before.get(k, 0) for k in seg.stats},
    }


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    import collections

    out: dict[str, Any] = {"seconds": 0.0, "cpu_seconds": 0.0, "chosen": [], "pure": []}
    out["proposals"], stats = [], collections.Counter()
    for p in parts:
        out["seconds"] += p["seconds"]
        out["cpu_seconds"] += p["cpu_seconds"]
        for key in ("chosen", "pure", "proposals"):
            out[key] += p[key]
        stats.update(p["stats"])
    out["stats"] = dict(stats)
    return out


def compare(seg: Any, work: list[dict], gt: dict | None, reference: bool) -> dict[str, Any]:
    """Both schedules image by image, alternating which goes first, so that a change of
    machine load during the run hits both alike."""
    from hybridgl_bench.reference import run_reference_schedule

    ours, ref = [], []
    for i, item in enumerate(work):
        if reference and i % 2 == 1:
            ref.append(run_reference_schedule(seg, [item], gt))
        ours.append(run_ours(seg, [item], gt))
        if reference and i % 2 == 0:
            ref.append(run_reference_schedule(seg, [item], gt))
    entry: dict[str, Any] = {"images": len(work), "ours": _merge(ours)}
    if reference:
        a, b = entry["ours"], _merge(ref)
        entry["reference"] = b
        entry["speedup"] = b["seconds"] / a["seconds"] if a["seconds"] else None
        entry["speedup_cpu"] = b["cpu_seconds"] / a["cpu_seconds"] if a["cpu_seconds"] else None
        entry["same_choices"] = a["chosen"] == b["chosen"]
    return entry


# ---------------------------------------------------------------------------- one config
def run_worker(cfg: dict[str, Any], partial: Any = None) -> dict[str, Any]:
    """Measure one (SAM backend, dtype) configuration; returns a JSON-ready dict.

    ``partial(result)`` is called with what is measured so far after each part (a killed
    worker still reports its finished parts).
    """
    import torch

    from hybridgl import Segmenter
    from hybridgl.images import load_image
    from hybridgl.models.runtime import configure_threads

    configure_threads(cfg.get("threads"))
    res: dict[str, Any] = {"sam": cfg["sam"], "dtype": cfg["dtype"]}
    images, anns, _ = coco_index()
    work = cfg["work"]
    gt = {w["image_id"]: coco_masks(images[w["image_id"]], anns[w["image_id"]]) for w in work}

    from hybridgl.spec import ModelSpec

    # the one model spec: what the table records is what was built
    spec = ModelSpec(
        sam=cfg["sam"],
        device=cfg.get("device"),
        dtype=cfg["dtype"],
        weights_dir=cfg.get("weights_dir"),
        sam_options={"points_per_side": cfg["points_per_side"]}
        if cfg.get("points_per_side")
        else {},
    )
    t = time.perf_counter()
    seg = Segmenter.from_spec(spec)
    res["load_seconds"] = time.perf_counter() - t
    res["rss_after_load_gib"] = rss_gib()
    res["model_info"] = seg.model_info
    first = work[0]
    exprs0 = [e for obj in first["objects"] for e in obj]
    img = load_image(first["path"])

    # 1. end to end on a fresh image: set_image (proposal backend) + one expression
    t0, c0 = now(seg), time.process_time()
    st = seg.set_image(img)
    seg.predict(exprs0[0])
    res["e2e_seconds"] = now(seg) - t0
    res["e2e_cpu_seconds"] = time.process_time() - c0
    lt = dict(seg.proposer.last_timings) if seg.proposer is not None else {}
    stages = {
        "sam_encoder": lt.get("image_encoder", 0.0),
        "mask_decoding": lt.get("mask_generation", 0.0),
        **clip_stage_times(seg, img, st.masks),
    }
    res["sam_proposals"] = st.num_proposals
    res["image_size"] = [st.height, st.width]

    # 2. further expressions on the image already set
    further, further_cpu = [], []
    for e in exprs0[1:]:
        t1, c1 = now(seg), time.process_time()
        seg.predict(e)
        further.append(now(seg) - t1)
        further_cpu.append(time.process_time() - c1)
    if further:
        res["further_seconds"] = statistics.mean(further)
        res["further_fraction"] = res["further_seconds"] / res["e2e_seconds"]
        res["further_cpu_fraction"] = statistics.mean(further_cpu) / res["e2e_cpu_seconds"]
    stages.update(expression_stage_times(seg, st, exprs0[:1]))
    res["sam_stages"] = stages

    # 3. the CLIP stages with the real COCO masks as proposals (a fixed workload)
    masks = gt[first["image_id"]]
    st = encode_image(seg, img, proposals=masks)
    gstages = {"sam_encoder": 0.0, "mask_decoding": 0.0, **clip_stage_times(seg, img, masks)}
    gstages.update(expression_stage_times(seg, st, exprs0))
    res["gt_stages"] = gstages
    res["gt_proposals"] = st.num_proposals
    res["gt_features"] = st.features.float().cpu().numpy().tolist()
    if partial is not None:
        partial(res)

    # 4. the RefCOCO-shaped workload: our schedule vs the reference schedule
    if cfg.get("sam_workload", True) and seg.proposer is not None:
        sam_work = work[: cfg.get("sam_images") or len(work)]
        res["workload_sam"] = compare(seg, sam_work, None, cfg.get("sam_reference", True))
        if partial is not None:
            partial(res)
    if cfg.get("gt_workload", True):
        res["workload_gt"] = compare(seg, work, gt, cfg.get("gt_reference", True))
    res["peak_rss_gib"] = peak_rss_gib()
    res["rss_end_gib"] = rss_gib()
    res["clip_models"] = count_clip_models()
    res["threads"] = torch.get_num_threads()
    res["stats"] = dict(seg.stats)
    return res


# ---------------------------------------------------------------------------- environment
def machine_info() -> dict[str, Any]:
    import torch

    from hybridgl.models.runtime import cpu_flags, cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    interesting = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "bf16": torch.cuda.is_bf16_supported(),
        }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpu_flags": interesting,
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "bf16_native": cpu_has_native_bf16(),
        "memory_gib": mem,
        "gpu": gpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
