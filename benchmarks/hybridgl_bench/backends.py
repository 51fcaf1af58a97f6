"""Proposal backends, precision and peers: the measurements of issue 13.

Each item runs in its own process (its peak resident memory is its own) with random
weights built from published configurations (compute does not depend on the values):

- ``hybridgl``: one (backend, dtype, points per side) configuration of the library on a
  640 x 480 coco-mini photo: model loading, the first answer (``set_image`` + ``predict``),
  the backend's image-encoder and mask-generation time (its ``last_timings``), proposals per
  image (random weights: usually 1), further phrases, and the CLIP stages again with the
  photo's COCO instance masks as proposals (the realistic proposal count that random
  weights do not give), from which the first answer with that many proposals follows.
- ``gdino_sam``: a Grounded-SAM-style peer, Grounding DINO tiny (box from the phrase) ->
  SAM ViT-H or SAM 2.1 (mask from the box), through ``transformers``.
- ``clipseg``: CLIPSeg (rd64), through ``transformers``.
- ``micro``: matmul peak of the machine per dtype, SAM ViT-H's encoder FLOPs (counted on the
  meta device) and achieved GFLOP/s, and the hybrid-features stage against plain CLIP
  ``encode_image`` on the same number of views (warmed up, timed alternately, median).

Timings are wall clock with ``torch.cuda.synchronize`` on CUDA.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Any

import numpy as np
from hybridgl_bench.stages import autocast_for, now, peak_rss_gib
from hybridgl_bench.workload import COCO, coco_index, coco_masks

# Published token lengths matter little; the text encoders see short phrases.
_PHRASE_TOKENS = 8


def _dtype(name: str):
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _autocast(device: str, dtype_name: str):
    import torch

    dt = _dtype(dtype_name)
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dt)


def pick_image(width: int = 640, height: int = 480) -> dict[str, Any]:
    """The first coco-mini image of exactly ``width`` x ``height`` with annotations."""
    images, anns, cats = coco_index()
    for img_id in sorted(images):
        im = images[img_id]
        if (im["width"], im["height"]) == (width, height) and len(anns.get(img_id, [])) >= 3:
            names = [cats[a["category_id"]] for a in anns[img_id]]
            return {"image_id": img_id, "path": im["path"], "names": names, "info": im}
    raise RuntimeError(f"no {width}x{height} annotated image under {COCO}")


def phrases(names: list[str]) -> list[str]:
    n = names[0]
    return [f"the {n} on the left", f"a {n} near the front", f"the big {n} in the middle"]


# ----------------------------------------------------------------------------- hybridgl
def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def backend_compute(backend: Any, image: Any) -> dict[str, float]:
    """The value-independent compute of a backend on one image, wall and CPU seconds: its
    image encoder, and its mask decoder on the whole point grid with the masks upsampled
    to the image and their stability scores (what the generator computes before the
    filters, NMS, run-length encoding and the minimum-area step).

    Those later steps cost little on the smooth masks of trained weights but much on the
    noisy masks of random weights (long RLEs, many connected components), which inflates
    the generator's measured time; this is the part that holds for trained weights.
    """
    import torch

    from hybridgl.models.hf_proposals import HFMaskGenerationBackend
    from hybridgl.models.proposals import SamV1Backend

    cfg = backend.config
    dev = backend.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dt = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
    enc_ctx = torch.autocast(dev.type, dtype=dt) if dt is not None else contextlib.nullcontext()
    out: dict[str, float] = {}
    if isinstance(backend, SamV1Backend):
        from segment_anything import SamPredictor
        from segment_anything.utils.amg import build_all_layer_point_grids
        from segment_anything.utils.amg import calculate_stability_score as stability

        pred = SamPredictor(backend.model)
        w0, c0 = _clock()
        with torch.no_grad(), enc_ctx:
            pred.set_image(image)
        pred.features = pred.features.float()
        sync()
        w1, c1 = _clock()
        h, w = image.shape[:2]
        grid = build_all_layer_point_grids(cfg.points_per_side, 0, 1)[0] * np.array([[w, h]])
        with torch.no_grad(), torch.autocast(dev.type, enabled=False):
            for s in range(0, len(grid), cfg.points_per_batch):
                pts = pred.transform.apply_coords(grid[s : s + cfg.points_per_batch], (h, w))
                coords = torch.as_tensor(pts, dtype=torch.float32, device=dev)[:, None, :]
                labels = torch.ones(coords.shape[:2], dtype=torch.int, device=dev)
                masks, iou, _ = pred.predict_torch(
                    coords, labels, multimask_output=True, return_logits=True
                )
                stability(masks.flatten(0, 1), pred.model.mask_threshold, 1.0)
        sync()
    elif isinstance(backend, HFMaskGenerationBackend):
        from PIL import Image

        proc, model = backend.image_processor, backend.model
        pil = Image.fromarray(image)
        target = proc.size.get("longest_edge", proc.size.get("height"))
        _, points, crops, labels = proc.generate_crop_boxes(
            pil, target, 0, 512 / 1500, cfg.points_per_side, 1
        )
        w0, c0 = _clock()
        inputs = proc(images=crops, return_tensors="pt")
        with torch.no_grad(), enc_ctx:
            emb = model.get_image_embeddings(inputs["pixel_values"].to(dev))
        from hybridgl.models.proposal_base import _float32

        emb = _float32(emb)
        sync()
        w1, c1 = _clock()
        kw: dict[str, Any] = {}
        if isinstance(emb, tuple):  # SAM-HQ
            kw["image_embeddings"], kw["intermediate_embeddings"] = emb
        else:
            kw["image_embeddings"] = emb
        sizes = inputs.get("reshaped_input_sizes")
        with torch.no_grad(), torch.autocast(dev.type, enabled=False):
            for s in range(0, points.shape[1], cfg.points_per_batch):
                o = model(
                    input_points=points[:, s : s + cfg.points_per_batch, 0:1, :].to(dev),
                    input_labels=labels[:, s : s + cfg.points_per_batch, 0:1].to(dev),
                    multimask_output=True,
                    **kw,
                )
                masks = proc.post_process_masks(
                    o.pred_masks, inputs["original_sizes"], sizes, binarize=False
                )[0] if sizes is not None else proc.post_process_masks(
                    o.pred_masks, inputs["original_sizes"], binarize=False
                )[0]  # fmt: skip
                inter = (masks > 1.0).flatten(-2).sum(-1)
                union = (masks > -1.0).flatten(-2).sum(-1)
                (inter / union.clamp(min=1)).cpu()
        sync()
    else:  # pragma: no cover
        raise TypeError(f"unknown backend {type(backend).__name__}")
    w2, c2 = _clock()
    out["encoder"], out["encoder_cpu"] = w1 - w0, c1 - c0
    out["decoder"], out["decoder_cpu"] = w2 - w1, c2 - c1
    return out


def measure_hybridgl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hybridgl import Segmenter
    from hybridgl.config import get_preset
    from hybridgl.images import load_image

    pick = pick_image()
    images, anns, _ = coco_index()
    img = load_image(pick["path"])
    gt = coco_masks(images[pick["image_id"]], anns[pick["image_id"]])
    exprs = phrases(pick["names"])
    base = get_preset("paper")
    from dataclasses import replace

    cfg = base.with_options(sam=replace(base.sam, points_per_side=spec.get("pps", 8)))
    t = time.perf_counter()
    seg = Segmenter.from_pretrained(
        sam=spec["sam"], dtype=None if spec["dtype"] == "fp32" else spec["dtype"],
        device=spec.get("device", "cpu"), config=cfg,
    )  # fmt: skip
    res: dict[str, Any] = {"load_seconds": time.perf_counter() - t}
    res["image"] = {"id": pick["image_id"], "size": list(img.shape[:2])}

    # first answer on a fresh photo
    t0, c0 = now(seg), time.process_time()
    st = seg.set_image(img)
    seg.predict(exprs[0])
    res["first_answer"] = now(seg) - t0
    res["first_answer_cpu"] = time.process_time() - c0
    res["proposals"] = st.num_proposals
    lt = dict(seg.proposer.last_timings) if seg.proposer is not None else {}
    res["image_encoder"] = lt.get("image_encoder")
    res["mask_generation"] = lt.get("mask_generation")
    res["propose_total"] = lt.get("total")
    further, further_cpu = [], []
    for e in exprs[1:]:
        t1, c1 = now(seg), time.process_time()
        seg.predict(e)
        further.append(now(seg) - t1)
        further_cpu.append(time.process_time() - c1)
    res["further_phrase"] = statistics.mean(further)
    res["further_phrase_cpu"] = statistics.mean(further_cpu)

    # the CLIP stages with the photo's COCO masks as proposals (realistic count)
    t2, c2 = now(seg), time.process_time()
    st2 = seg.encode_image(img, proposals=gt)
    res["clip_stages_coco"] = now(seg) - t2
    res["clip_stages_coco_cpu"] = time.process_time() - c2
    res["coco_proposals"] = st2.num_proposals
    t3 = now(seg)
    seg.score(st2, seg.parse(exprs[0]))
    res["predict_coco"] = now(seg) - t3
    res["first_answer_coco"] = (res["propose_total"] or 0.0) + res["clip_stages_coco"]
    res["first_answer_coco"] += res["predict_coco"]
    # the value-independent part of the backend, and the first answer it implies for
    # trained weights with the COCO masks' count of proposals (wall and CPU time)
    with torch.no_grad(), autocast_for(seg):
        comp = backend_compute(seg.proposer, img)
    res["compute"] = comp
    res["first_answer_est"] = (
        comp["encoder"] + comp["decoder"] + res["clip_stages_coco"] + res["predict_coco"]
    )
    res["first_answer_est_cpu"] = (
        comp["encoder_cpu"] + comp["decoder_cpu"] + res["clip_stages_coco_cpu"]
        + res["predict_coco"]
    )  # fmt: skip
    res["peak_rss_gib"] = peak_rss_gib()
    res["threads"] = torch.get_num_threads()
    res["model_info"] = seg.model_info
    return res


# ----------------------------------------------------------------------------- peers
def _random_values(model: Any, seed: int = 0) -> Any:
    """Seeded values for every floating parameter (the published initialisers of some
    models leave parts at zero; compute does not depend on the values)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _ids(vocab: int, n: int = _PHRASE_TOKENS, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab - 1, (1, n), generator=g)
    ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
    return ids


def measure_gdino_sam(spec: dict[str, Any]) -> dict[str, Any]:
    """Grounding DINO tiny -> SAM (box prompt), as Grounded-SAM does, random weights.

    First answer: the detector on (image, phrase), the best box, SAM's image encoder, SAM's
    decoder on the box. Further phrase: the detector again (its image backbone is
    text-conditioned downstream and the transformers API recomputes it per call), SAM's
    decoder on the cached image embedding.
    """
    import torch
    import transformers as tf
    from PIL import Image

    from hybridgl.models import backends as B
    from hybridgl.models import hf_proposals as H
    from hybridgl.models import proposal_base as PB

    device = spec.get("device", "cpu")
    pick = pick_image()
    image = Image.open(pick["path"]).convert("RGB")
    torch.manual_seed(0)
    t = time.perf_counter()
    det = tf.GroundingDinoForObjectDetection(tf.GroundingDinoConfig()).eval().to(device)
    det_proc = tf.GroundingDinoImageProcessor()
    sam_name = spec["sam"]
    if sam_name == "vit_h":
        sam_spec = B.BackendSpec("vit_h", "hf_sam", "-", "vit_h")
    else:
        sam_spec = B.get_backend_spec(sam_name)
    sam = H.random_hf_model(sam_spec, "full", seed=1).to(device)
    sam_proc = H.hf_image_processor(sam_spec)
    res: dict[str, Any] = {"load_seconds": time.perf_counter() - t}
    ids = _ids(det.config.text_config.vocab_size)

    def detect(seed: int) -> list[float]:
        pix = det_proc(images=image, return_tensors="pt")
        ids_ = _ids(det.config.text_config.vocab_size, seed=seed).to(device)
        with torch.no_grad(), _autocast(device, spec["dtype"]):
            out = det(
                pixel_values=pix["pixel_values"].to(device),
                pixel_mask=pix["pixel_mask"].to(device),
                input_ids=ids_,
                attention_mask=torch.ones_like(ids_),
            )
        logits = out.logits[0].float().sigmoid().max(-1).values
        box = out.pred_boxes[0, int(logits.argmax())].float().cpu().tolist()  # cx cy w h, 0-1
        w, h = image.size
        cx, cy, bw, bh = box
        return [
            max(0.0, (cx - bw / 2) * w),
            max(0.0, (cy - bh / 2) * h),
            min(w, (cx + bw / 2) * w),
            min(h, (cy + bh / 2) * h) + 1.0,
        ]

    def decode(emb: Any, inputs: dict, box: list[float]) -> Any:
        # the box in the model's input frame: SAM resizes the longest side to 1024,
        # SAM 2.1 resizes to 1024 x 1024
        w, h = image.size
        if sam_spec.family == "hf_sam2":
            sx, sy = 1024 / w, 1024 / h
        else:
            sx = sy = 1024 / max(w, h)
        scaled = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        boxes = torch.tensor([[scaled]], dtype=torch.float32, device=device)
        kwargs: dict[str, Any] = {"input_boxes": boxes}
        if isinstance(emb, tuple):  # SAM-HQ
            kwargs["image_embeddings"], kwargs["intermediate_embeddings"] = emb
        else:
            kwargs["image_embeddings"] = emb
        with torch.no_grad():
            out = sam(multimask_output=False, **kwargs)
        if sam_spec.family == "hf_sam2":
            return sam_proc.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"])[0]
        return sam_proc.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]

    del ids
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    box = detect(0)
    sync()
    res["detector"] = time.perf_counter() - t0
    inputs = sam_proc(images=image, return_tensors="pt")
    t1 = time.perf_counter()
    with torch.no_grad(), _autocast(device, spec["dtype"]):
        emb = sam.get_image_embeddings(inputs["pixel_values"].to(device))
    emb = PB._float32(emb)
    sync()
    res["sam_encoder"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    decode(emb, inputs, box)
    sync()
    res["sam_decoder"] = time.perf_counter() - t2
    res["first_answer"] = time.perf_counter() - t0
    res["first_answer_cpu"] = time.process_time() - c0
    further, further_cpu = [], []
    for k in (1, 2):
        t3, c3 = time.perf_counter(), time.process_time()
        decode(emb, inputs, detect(k))
        sync()
        further.append(time.perf_counter() - t3)
        further_cpu.append(time.process_time() - c3)
    res["further_phrase"] = statistics.mean(further)
    res["further_phrase_cpu"] = statistics.mean(further_cpu)
    res["peak_rss_gib"] = peak_rss_gib()
    res["params_m"] = {
        "detector": sum(p.numel() for p in det.parameters()) / 1e6,
        "sam": sum(p.numel() for p in sam.parameters()) / 1e6,
    }
    return res


def measure_clipseg(spec: dict[str, Any]) -> dict[str, Any]:
    """CLIPSeg rd64 (CIDAS/clipseg-rd64's configuration), random weights: one forward per
    phrase (image and text), as its transformers API runs it."""
    import torch
    import transformers as tf
    from PIL import Image

    device = spec.get("device", "cpu")
    pick = pick_image()
    image = Image.open(pick["path"]).convert("RGB")
    torch.manual_seed(0)
    t = time.perf_counter()
    model = tf.CLIPSegForImageSegmentation(tf.CLIPSegConfig()).eval().to(device)
    res: dict[str, Any] = {"load_seconds": time.perf_counter() - t}
    proc = tf.ViTImageProcessor(
        size={"height": 352, "width": 352},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def answer(seed: int) -> None:
        pix = proc(images=image, return_tensors="pt")["pixel_values"].to(device)
        ids = _ids(model.config.text_config.vocab_size, seed=seed).to(device)
        with torch.no_grad(), _autocast(device, spec["dtype"]):
            out = model(pixel_values=pix, input_ids=ids)
        logits = out.logits.float()[None, None] if out.logits.ndim == 2 else out.logits.float()
        mask = torch.nn.functional.interpolate(
            logits.reshape(1, 1, *logits.shape[-2:]), size=image.size[::-1], mode="bilinear"
        )
        (mask > 0).cpu()
        sync()

    t0, c0 = time.perf_counter(), time.process_time()
    answer(0)
    res["first_answer"] = time.perf_counter() - t0
    res["first_answer_cpu"] = time.process_time() - c0
    further, further_cpu = [], []
    for k in (1, 2):
        t1, c1 = time.perf_counter(), time.process_time()
        answer(k)
        further.append(time.perf_counter() - t1)
        further_cpu.append(time.process_time() - c1)
    res["further_phrase"] = statistics.mean(further)
    res["further_phrase_cpu"] = statistics.mean(further_cpu)
    res["peak_rss_gib"] = peak_rss_gib()
    res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return res


# ----------------------------------------------------------------------------- micro
def matmul_peak(dtype_name: str, device: str = "cpu", n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` (plain tensors of that dtype)."""
    import torch

    dt = _dtype(dtype_name) or torch.float32
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def sam_encoder_flops(arch: str = "vit_h") -> float:
    """FLOPs of one SAM image-encoder forward at 1024 px, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hybridgl.models.sam import build_sam

    with torch.device("meta"):
        sam = build_sam(arch)
        x = torch.empty(1, 3, 1024, 1024)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        sam.image_encoder(x)
    return float(fc.get_total_flops())


def measure_micro(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hybridgl.config import get_preset
    from hybridgl.images import load_image
    from hybridgl.models import hybrid_clip
    from hybridgl.models.clip import build_clip, randomize_clip
    from hybridgl.models.sam import random_sam

    device = spec.get("device", "cpu")
    res: dict[str, Any] = {"matmul_gflops": {}, "sam_vit_h": {}, "features_vs_plain": {}}
    for dt in spec.get("dtypes", ["fp32", "bf16"]):
        res["matmul_gflops"][dt] = matmul_peak(dt, device)
    flops = sam_encoder_flops("vit_h")
    res["sam_vit_h"]["gflop"] = flops / 1e9
    sam = random_sam("vit_h", 1).to(device).eval()
    x = torch.randn(1, 3, 1024, 1024, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for dt in spec.get("sam_dtypes", spec.get("dtypes", ["fp32", "bf16"])):
        with torch.no_grad(), _autocast(device, dt):
            sync()
            t = time.perf_counter()
            sam.image_encoder(x)
            sync()
            s = time.perf_counter() - t
        res["sam_vit_h"][dt] = {"seconds": s, "gflops": flops / s / 1e9}
    del sam
    gc.collect()

    # hybrid features of n masks vs plain CLIP encode_image on the same 2n views: both
    # warmed up at the measured shapes (oneDNN builds its kernels per shape and dtype),
    # then timed alternately, median of `reps`, so that a change of load on a shared
    # machine hits both sides alike
    pick = pick_image()
    images, anns, _ = coco_index()
    img = load_image(pick["path"])
    masks = torch.from_numpy(coco_masks(images[pick["image_id"]], anns[pick["image_id"]]))
    cfg = get_preset("paper")
    clip = randomize_clip(build_clip("ViT-B-16", "full"), 0).to(device).eval()
    n = int(masks.shape[0])
    views = torch.randn(2 * n, 3, cfg.view_size, cfg.view_size, device=device)
    reps = int(spec.get("reps", 3))

    def hybrid() -> None:
        hybrid_clip.encode_proposals(clip.visual, img, masks, cfg, torch.device(device))

    def plain() -> None:
        for s0 in range(0, 2 * n, 2 * cfg.feature_batch):
            clip.encode_image(views[s0 : s0 + 2 * cfg.feature_batch])

    def timed(fn: Any) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    for dt in spec.get("dtypes", ["fp32", "bf16"]):
        with torch.no_grad(), _autocast(device, dt):
            hybrid()
            plain()
            hyb_s, plain_s = [], []
            for _ in range(reps):
                hyb_s.append(timed(hybrid))
                plain_s.append(timed(plain))
        hyb, pl = statistics.median(hyb_s), statistics.median(plain_s)
        res["features_vs_plain"][dt] = {
            "masks": n, "views": 2 * n, "reps": reps, "hybrid": hyb, "plain": pl,
            "ratio": hyb / pl, "hybrid_runs": hyb_s, "plain_runs": plain_s,
        }  # fmt: skip
    res["peak_rss_gib"] = peak_rss_gib()
    return res


def measure_agreement(spec: dict[str, Any]) -> dict[str, Any]:
    """Low precision vs fp32 with COCO masks as proposals (both choose among the same
    masks): chosen-index agreement, pure-CLIP agreement and the IoU of the chosen masks,
    on a RefCOCO-shaped workload. Random weights make near ties: a weak signal."""
    from hybridgl_bench.workload import build_workload

    from hybridgl import Segmenter
    from hybridgl.images import load_image

    work = build_workload(spec.get("images", 4), 3, 3)
    images, anns, _ = coco_index()
    device = spec.get("device", "cpu")
    low = spec.get("low", "bf16")
    chosen: dict[str, list[Any]] = {}
    t = {}
    for dt in ("fp32", low):
        seg = Segmenter.from_pretrained(sam=None, dtype=None if dt == "fp32" else dt, device=device)
        out = []
        t0 = time.perf_counter()
        for item in work:
            masks = coco_masks(images[item["image_id"]], anns[item["image_id"]])
            st = seg.set_image(load_image(item["path"]), proposals=masks)
            for obj in item["objects"]:
                for e in obj:
                    p = seg.predict(e)
                    out.append((p.index, p.pure_index, p.mask))
        t[dt] = time.perf_counter() - t0
        chosen[dt] = out
        del seg, st
        gc.collect()
    a, b = chosen["fp32"], chosen[low]
    n = len(a)
    ious = []
    for (_, _, ma), (_, _, mb) in zip(a, b, strict=True):
        inter, union = np.logical_and(ma, mb).sum(), np.logical_or(ma, mb).sum()
        ious.append(float(inter / union) if union else 1.0)
    return {
        "low": low,
        "expressions": n,
        "images": len(work),
        "agreement": sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) / n,
        "agreement_pure": sum(x[1] == y[1] for x, y in zip(a, b, strict=True)) / n,
        "mean_iou": float(np.mean(ious)),
        "seconds": t,
        "peak_rss_gib": peak_rss_gib(),
    }


MEASURES = {
    "agreement": measure_agreement,
    "hybridgl": measure_hybridgl,
    "gdino_sam": measure_gdino_sam,
    "clipseg": measure_clipseg,
    "micro": measure_micro,
}


def run_item(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hybridgl.models.runtime import configure_threads

    configure_threads(spec.get("threads"))
    with torch.inference_mode(False):
        out = MEASURES[spec["kind"]](spec)
    return {**spec, **out}
