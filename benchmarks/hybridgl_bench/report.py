"""Reporting: cross-configuration summaries, targets and the Markdown tables."""

from __future__ import annotations

from typing import Any

# Targets of the issue; checked and reported, never asserted.
TARGET_SCHEDULE_SPEEDUP = 3.0  # our cached path vs the reference schedule
TARGET_FURTHER_FRACTION = 0.01  # further expression / first (set_image + predict), SAM ViT-H
TARGET_PEAK_GIB = 6.0  # peak resident memory with SAM ViT-H + CLIP
TARGET_FIRST_ANSWER_CPU = 10.0  # seconds, 640 x 480 photo, a documented CPU configuration


def _cos(a: list, b: list) -> float | None:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0 or x.shape != y.shape:
        return None
    num = (x * y).sum(-1)
    den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    return float((num / np.maximum(den, 1e-12)).min())


def summarise(configs: list[dict]) -> dict[str, Any]:
    """Cross-configuration comparisons: bf16 vs fp32 speed and agreement."""
    by = {(c["sam"], c["dtype"]): c for c in configs if "gt_stages" in c}
    out: dict[str, Any] = {"bf16_vs_fp32": {}}
    for (sam, dtype), c in by.items():
        if dtype == "fp32" or (sam, "fp32") not in by:
            continue
        f = by[(sam, "fp32")]
        entry: dict[str, Any] = {"speedup": {}}
        for key in ("sam_encoder", "mask_decoding"):
            a, b = f["sam_stages"][key], c["sam_stages"][key]
            entry["speedup"][key] = a / b if b else None
        for key in ("views", "hybrid_features", "gem", "text"):
            a, b = f["gt_stages"][key], c["gt_stages"][key]
            entry["speedup"][key] = a / b if b else None
        entry["speedup"]["e2e"] = f["e2e_seconds"] / c["e2e_seconds"]
        wa, wb = f.get("workload_gt", {}).get("ours"), c.get("workload_gt", {}).get("ours")
        if wa and wb:
            n = len(wa["chosen"])
            entry["agreement"] = (
                sum(x == y for x, y in zip(wa["chosen"], wb["chosen"], strict=True)) / n
            )
            entry["agreement_pure"] = (
                sum(x == y for x, y in zip(wa["pure"], wb["pure"], strict=True)) / n
            )
            entry["compared"] = n
        entry["feature_min_cosine"] = _cos(f.get("gt_features", []), c.get("gt_features", []))
        out["bf16_vs_fp32"][f"{sam} {dtype}"] = entry
    return out


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def _counts(e: dict | None) -> str:
    if not e or "reference" not in e:
        return "-"

    def one(st: dict) -> str:
        return "/".join(str(st.get(k, 0)) for k in ("sam_runs", "feature_passes", "gem_passes"))

    return f"{one(e['ours']['stats'])} vs {one(e['reference']['stats'])}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    configs = [c for c in report["configs"] if "gt_stages" in c]
    failed = [c for c in report["configs"] if "error" in c]
    names = [f"{c['sam']} {c['dtype']}" for c in configs]
    w = report["workload"]
    lines = [
        "# HybridGL benchmark",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {m['date']}; CPU: {m['cpu']} ({m['cpus']} CPUs, {m['memory_gib']} GiB); "
        f"torch {m['torch']}, {m['threads']} threads; bf16 in hardware: "
        f"{'yes' if m['bf16_native'] else 'no'}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average'] or [])}",
        f"- Weights: {report['weights']} (compute does not depend on their values; choices do)",
        f"- Workload: {w['images']} images x {w['objects']} referred objects x "
        f"{w['expressions']} expressions = {w['total']} expressions "
        f"({w['real']} real RefCOCO/RefCOCO+/RefCOCOg expressions), COCO image ids "
        f"{', '.join(str(i) for i in w['image_ids'])}",
        "",
    ]
    if failed:
        for c in failed:
            lines.append(f"- **{c['sam']} {c['dtype']} failed**: {c['error']}")
        lines.append("")
    if not configs:
        return "\n".join(lines) + "\n"

    def row(label: str, vals: list[str]) -> str:
        return "| " + " | ".join([label, *vals]) + " |"

    head = row("", names)
    sep = "|" + "---|" * (len(names) + 1)
    lines += [
        "## Time per stage (one image)",
        "",
        "SAM path on the first image; the CLIP stages also with the image's real COCO instance "
        "masks as proposals (a fixed workload). Text, parsing and guidance are per expression "
        "(text cache cleared).",
        "",
        head,
        sep,
        row(
            "image size (H x W)", [f"{c['image_size'][0]} x {c['image_size'][1]}" for c in configs]
        ),
        row("SAM image encoder", [_ms(c["sam_stages"]["sam_encoder"]) for c in configs]),
        row(
            "SAM mask decoding (generate - encoder)",
            [_ms(c["sam_stages"]["mask_decoding"]) for c in configs],
        ),
        row("SAM proposals (random weights)", [str(c["sam_proposals"]) for c in configs]),
        row("building views, SAM proposals", [_ms(c["sam_stages"]["views"]) for c in configs]),
        row(
            "hybrid features, SAM proposals",
            [_ms(c["sam_stages"]["hybrid_features"]) for c in configs],
        ),
        row("COCO mask proposals", [str(c["gt_proposals"]) for c in configs]),
        row("building views, COCO masks", [_ms(c["gt_stages"]["views"]) for c in configs]),
        row(
            "hybrid features, COCO masks", [_ms(c["gt_stages"]["hybrid_features"]) for c in configs]
        ),
        row(
            "hybrid features per proposal",
            [_ms(c["gt_stages"]["hybrid_features"] / max(1, c["gt_proposals"])) for c in configs],
        ),
        row("GEM image pass", [_ms(c["gt_stages"]["gem"]) for c in configs]),
        row("text encoding (per expression)", [_ms(c["gt_stages"]["text"]) for c in configs]),
        row("parsing (per expression)", [_ms(c["gt_stages"]["parse"]) for c in configs]),
        row(
            "guidance and choice (per expression)",
            [_ms(c["gt_stages"]["guidance"]) for c in configs],
        ),
        row("model loading (random init)", [_ms(c["load_seconds"]) for c in configs]),
        "",
        "## End to end and further expressions (SAM path)",
        "",
        head,
        sep,
        row(
            "one image, one expression (set_image + predict)",
            [_ms(c["e2e_seconds"]) for c in configs],
        ),
        row(
            "a further expression on the same image",
            [_ms(c.get("further_seconds")) for c in configs],
        ),
        row(
            f"further / first (target <= {TARGET_FURTHER_FRACTION:.0%} with ViT-H)",
            [
                f"{c['further_fraction'] * 100:.2f}%" if c.get("further_fraction") else "-"
                for c in configs
            ],
        ),
        "",
        "## RefCOCO-shaped workload: cached path vs the reference schedule",
        "",
        "Reference schedule: SAM and hybrid features recomputed for every referred object, "
        "GEM and the text encoder for every expression (as the reference code does). Ours: "
        "`set_image` once per image, `predict` per expression. Both run in the same process, "
        "image by image, alternating which goes first. Speedup from wall-clock time and from "
        "process CPU time (less sensitive to other load on a shared machine). "
        f"Target speedup >= {TARGET_SCHEDULE_SPEEDUP:.0f}x.",
        "",
        head,
        sep,
    ]
    for name, label in (("workload_sam", "SAM proposals"), ("workload_gt", "COCO masks")):
        if not any(name in c for c in configs):
            continue
        cells = [c.get(name) for c in configs]
        lines += [
            row(f"{label}: ours", [_ms(e["ours"]["seconds"]) if e else "-" for e in cells]),
            row(
                f"{label}: reference schedule",
                [_ms(e["reference"]["seconds"]) if e and "reference" in e else "-" for e in cells],
            ),
            row(
                f"**{label}: speedup (wall clock)**",
                [f"**{e['speedup']:.2f}x**" if e and e.get("speedup") else "-" for e in cells],
            ),
            row(
                f"**{label}: speedup (CPU time)**",
                [
                    f"**{e['speedup_cpu']:.2f}x**" if e and e.get("speedup_cpu") else "-"
                    for e in cells
                ],
            ),
            row(
                f"{label}: SAM runs / feature passes / GEM passes, ours vs reference",
                [_counts(e) for e in cells],
            ),
            row(
                f"{label}: same choices in both schedules",
                [
                    ("yes" if e["same_choices"] else "NO") if e and "same_choices" in e else "-"
                    for e in cells
                ],
            ),
            row(
                f"{label}: proposals per image",
                [", ".join(str(n) for n in e["ours"]["proposals"]) if e else "-" for e in cells],
            ),
        ]
    lines += [
        "",
        "## Memory and models",
        "",
        head,
        sep,
        row(
            f"peak resident memory (target <= {TARGET_PEAK_GIB:.0f} GiB with ViT-H)",
            [f"{c['peak_rss_gib']:.2f} GiB" for c in configs],
        ),
        row("resident after loading", [f"{_f(c['rss_after_load_gib'])} GiB" for c in configs]),
        row("CLIP models loaded (must be 1)", [str(c["clip_models"]) for c in configs]),
        row("torch threads", [str(c["threads"]) for c in configs]),
        "",
    ]
    bf = report["summary"]["bf16_vs_fp32"]
    if bf:
        keys = list(bf)
        lines += [
            "## bf16 vs fp32 (speedup = fp32 time / bf16 time)",
            "",
            "Agreement: the chosen mask index of each workload expression (COCO masks as "
            "proposals, so both dtypes choose among the same masks). With random weights the "
            "scores are near ties, so agreement is a weak signal of what trained weights do.",
            "",
            row("", keys),
            "|" + "---|" * (len(keys) + 1),
        ]
        for key, label in (
            ("sam_encoder", "SAM image encoder"),
            ("mask_decoding", "SAM mask decoding"),
            ("views", "building views"),
            ("hybrid_features", "hybrid features"),
            ("gem", "GEM image pass"),
            ("text", "text encoding"),
            ("e2e", "end to end"),
        ):
            lines.append(row(label, [f"{_f(bf[k]['speedup'].get(key))}x" for k in keys]))
        lines.append(
            row(
                "chosen index agreement",
                [
                    f"{bf[k]['agreement'] * 100:.0f}% of {bf[k]['compared']}"
                    if "agreement" in bf[k]
                    else "-"
                    for k in keys
                ],
            )
        )
        lines.append(
            row(
                "pure CLIP choice agreement",
                [
                    f"{bf[k]['agreement_pure'] * 100:.0f}%" if "agreement_pure" in bf[k] else "-"
                    for k in keys
                ],
            )
        )
        lines.append(
            row(
                "min cosine of features (COCO masks)",
                [_f(bf[k]["feature_min_cosine"], 4) for k in keys],
            )
        )
        lines.append("")
    t = report["targets"]
    lines += ["## Targets", ""]
    for name, v in t.items():
        lines.append(f"- {name}: {v}")
    lines.append("")
    return "\n".join(lines) + "\n"


def check_targets(configs: list[dict]) -> dict[str, str]:
    out = {}
    fp32 = [c for c in configs if "gt_stages" in c and c["dtype"] == "fp32"]
    for c in fp32:
        for name, label in (("workload_sam", "SAM proposals"), ("workload_gt", "COCO masks")):
            e = c.get(name)
            if not e or not e.get("speedup"):
                continue
            wall, cpu = e["speedup"], e.get("speedup_cpu") or 0.0
            ok = min(wall, cpu or wall) >= TARGET_SCHEDULE_SPEEDUP
            okish = max(wall, cpu) >= TARGET_SCHEDULE_SPEEDUP
            verdict = "met" if ok else ("met on one measure only" if okish else "NOT met")
            out[f"speedup vs reference schedule ({c['sam']}, {label})"] = (
                f"{wall:.2f}x wall clock, {cpu:.2f}x CPU time ({verdict}, target >= "
                f"{TARGET_SCHEDULE_SPEEDUP:.0f}x)"
            )
    for c in fp32:
        if c["sam"] == "vit_h" and c.get("further_fraction") is not None:
            ok = c["further_fraction"] <= TARGET_FURTHER_FRACTION
            cpu = c.get("further_cpu_fraction")
            cpu_txt = f", {cpu * 100:.2f}% CPU time" if cpu is not None else ""
            out["further expression / first (vit_h)"] = (
                f"{c['further_fraction'] * 100:.2f}% wall clock{cpu_txt} ({'met' if ok else 'NOT met'}, "
                f"target <= {TARGET_FURTHER_FRACTION:.0%})"
            )
            ok = c["peak_rss_gib"] <= TARGET_PEAK_GIB
            out["peak memory (vit_h)"] = (
                f"{c['peak_rss_gib']:.2f} GiB ({'met' if ok else 'NOT met'}, target <= "
                f"{TARGET_PEAK_GIB:.0f} GiB)"
            )
    for c in configs:
        if "clip_models" in c:
            out[f"CLIP models loaded ({c['sam']} {c['dtype']})"] = (
                f"{c['clip_models']} ({'met' if c['clip_models'] == 1 else 'NOT met'}, must be 1)"
            )
    return out


# ---------------------------------------------------------------------------- backends suite
def _label(item: dict[str, Any]) -> str:
    kind = item["kind"]
    if kind == "hybridgl":
        return f"{item['sam']} {item['dtype']} pps{item.get('pps', 8)}"
    if kind == "gdino_sam":
        return f"GDINO-T -> {item['sam']} {item['dtype']}"
    if kind == "clipseg":
        return f"CLIPSeg {item['dtype']}"
    if kind == "agreement":
        return f"agreement {item.get('low', 'bf16')} vs fp32"
    return kind


def render_backends(report: dict[str, Any]) -> str:
    """Markdown of the backends suite: backends, peers, micro-benchmarks."""
    m = report["machine"]
    items = report["items"]
    ok = [i for i in items if "error" not in i]
    lines = [
        "# HybridGL proposal backends, precision and peers",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {m['date']}; CPU: {m['cpu']} ({m['cpus']} CPUs, {m['memory_gib']} GiB); "
        f"flags: {' '.join(m['cpu_flags'])}; torch CPU capability {m['cpu_capability']}; "
        f"native bf16: {'yes' if m['bf16_native'] else 'no'}; GPU: "
        f"{m['gpu']['name'] if m.get('gpu') else 'none'}; torch {m['torch']}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}",
        "- Weights: random, built from the published configurations (compute does not "
        "depend on the values; proposal counts and choices do).",
        "",
    ]
    for i in items:
        if "error" in i:
            lines.append(f"- **{_label(i)} failed**: {i['error']}")
    hyb = [i for i in ok if i["kind"] == "hybridgl"]
    if hyb:

        def row(label: str, vals: list[str]) -> str:
            return "| " + " | ".join([label, *vals]) + " |"

        lines += [
            "## Proposal backends: hybridgl end to end on a 640 x 480 photo",
            "",
            "First answer = `set_image` + `predict` on a fresh photo. Random weights keep "
            "about one proposal per image, so the CLIP stages are also run on the photo's "
            "COCO instance masks (a realistic count), and the first answer with that many "
            "proposals is the backend's time plus those stages.",
            "",
            row("", [_label(i) for i in hyb]),
            "|" + "---|" * (len(hyb) + 1),
            row("model loading (random init)", [_ms(i["load_seconds"]) for i in hyb]),
            row("image encoder", [_ms(i["image_encoder"]) for i in hyb]),
            row("mask generation (rest of the backend)", [_ms(i["mask_generation"]) for i in hyb]),
            row("proposals / image (random weights)", [str(i["proposals"]) for i in hyb]),
            row("**first answer**, random-weight proposals", [f"**{_ms(i['first_answer'])}**" for i in hyb]),
            row("  process CPU time of it", [_ms(i.get("first_answer_cpu")) for i in hyb]),
            row("CLIP stages (features + GEM), COCO masks", [f"{_ms(i['clip_stages_coco'])} ({i['coco_proposals']} masks)" for i in hyb]),
            row("**first answer with the COCO masks' count**", [f"**{_ms(i['first_answer_coco'])}**" for i in hyb]),
            row("backend compute: encoder again / decoder on the grid (wall)", [
                f"{_ms(i['compute']['encoder'])} / {_ms(i['compute']['decoder'])}" if i.get("compute") else "-"
                for i in hyb]),
            row("backend compute, CPU time", [
                f"{_ms(i['compute']['encoder_cpu'])} / {_ms(i['compute']['decoder_cpu'])}" if i.get("compute") else "-"
                for i in hyb]),
            row("**first answer for trained weights** (encoder + decoder + CLIP stages, COCO count): wall", [
                f"**{_ms(i.get('first_answer_est'))}**" for i in hyb]),
            row("  same, process CPU time", [_ms(i.get("first_answer_est_cpu")) for i in hyb]),
            row("  **idle-machine estimate: CPU time / threads**", [
                f"**{_ms(i['first_answer_est_cpu'] / i['threads'])}**" if i.get("first_answer_est_cpu") else "-"
                for i in hyb]),
            row("further phrase, wall (CPU time)", [
                f"{_ms(i['further_phrase'])} ({_ms(i.get('further_phrase_cpu'))})" for i in hyb]),
            row("peak resident memory", [f"{i['peak_rss_gib']:.2f} GiB" for i in hyb]),
            row("threads", [str(i["threads"]) for i in hyb]),
            "",
        ]  # fmt: skip
    peers = [i for i in ok if i["kind"] in ("gdino_sam", "clipseg")]
    if peers:
        paper = [i for i in hyb if (i["sam"], i["dtype"], i.get("pps", 8)) == ("vit_h", "fp32", 8)]
        others = [i for i in hyb if i not in paper and i.get("first_answer_est_cpu")]
        refs = paper + ([min(others, key=lambda i: i["first_answer_est_cpu"])] if others else [])

        def cpu_first(i: dict[str, Any]) -> float | None:
            return i.get("first_answer_est_cpu") or i.get("first_answer_cpu")

        lines += [
            "## Peers side by side (same photo, random weights, transformers)",
            "",
            "Process CPU time (the machine was shared; wall clock in brackets). Ratios are "
            "hybridgl's CPU time divided by the peer's (below 1: hybridgl does less work); "
            "hybridgl's first answer is its trained-weights estimate.",
            "",
            "| pipeline | first answer, CPU (wall) | further phrase, CPU (wall) | peak memory | "
            + " | ".join(f"hybridgl {_label(r)}: first / further vs this" for r in refs)
            + " |",
            "|---|---|---|---|" + "---|" * len(refs),
        ]
        for r in refs:
            lines.append(
                f"| hybridgl {_label(r)} | {_ms(cpu_first(r))} ({_ms(r.get('first_answer_est'))}) | "
                f"{_ms(r.get('further_phrase_cpu'))} ({_ms(r['further_phrase'])}) | "
                f"{r['peak_rss_gib']:.2f} GiB | " + " | ".join("-" for _ in refs) + " |"
            )
        for p in peers:
            ratios = []
            for r in refs:
                a, b = cpu_first(r), p.get("first_answer_cpu")
                fa, fb = r.get("further_phrase_cpu"), p.get("further_phrase_cpu")
                ratios.append(
                    (f"{a / b:.2f}x" if a and b else "-")
                    + " / "
                    + (f"{fa / fb:.3f}x" if fa and fb else "-")
                )
            lines.append(
                f"| {_label(p)} | {_ms(p.get('first_answer_cpu'))} ({_ms(p['first_answer'])}) | "
                f"{_ms(p.get('further_phrase_cpu'))} ({_ms(p['further_phrase'])}) | "
                f"{p['peak_rss_gib']:.2f} GiB | " + " | ".join(ratios) + " |"
            )
        lines.append("")
    for ag in (i for i in ok if i["kind"] == "agreement"):
        lines += [
            f"## {ag['low']} vs fp32 (COCO masks as proposals, random weights)",
            "",
            f"{ag['expressions']} expressions on {ag['images']} images: chosen index agrees "
            f"on **{ag['agreement']:.0%}**, the pure CLIP choice on {ag['agreement_pure']:.0%}, "
            f"mean IoU of the chosen masks {ag['mean_iou']:.3f}. Time for the workload: fp32 "
            f"{_ms(ag['seconds']['fp32'])}, {ag['low']} {_ms(ag['seconds'][ag['low']])}. "
            "Random weights make near ties, so this is a weak signal of what trained weights do.",
            "",
        ]
    micro = [i for i in ok if i["kind"] == "micro"]
    for mi in micro:
        lines += ["## Compute efficiency", "", "| | " + " | ".join(mi["matmul_gflops"]) + " |"]
        lines.append("|---|" + "---|" * len(mi["matmul_gflops"]))
        lines.append(
            "| matmul peak (2048^3), GFLOP/s | "
            + " | ".join(f"{v:.0f}" for v in mi["matmul_gflops"].values())
            + " |"
        )
        sv = mi["sam_vit_h"]
        cells = []
        for dt in mi["matmul_gflops"]:
            e = sv.get(dt)
            cells.append(
                f"{e['seconds']:.1f} s, {e['gflops']:.0f} GFLOP/s "
                f"({e['gflops'] / mi['matmul_gflops'][dt]:.0%} of peak)"
                if e
                else "-"
            )
        lines.append(
            f"| SAM ViT-H encoder ({sv['gflop']:.0f} GFLOP at 1024 px) | "
            + " | ".join(cells)
            + " |"
        )
        fv = mi["features_vs_plain"]
        lines.append(
            "| hybrid features / plain CLIP encode_image, same views | "
            + " | ".join(
                f"{fv[dt]['ratio']:.2f} ({_ms(fv[dt]['hybrid'])} vs {_ms(fv[dt]['plain'])}, "
                f"{fv[dt]['views']} views)" if dt in fv else "-"
                for dt in mi["matmul_gflops"]
            )
            + " |"
        )  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"
