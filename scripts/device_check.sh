#!/usr/bin/env bash
# The GPU check of issue 13, as one bounded run (at most 10 minutes; installs nothing).
#
#   OUT=/some/folder bash scripts/device_check.sh
#
# 1. the machine: nvidia-smi, torch, CUDA, bf16 support          -> $OUT/env.txt
# 2. the CUDA test subset (pytest -m cuda: fp16/bf16 autocast, device placement, no host
#    round-trips in the per-proposal loop, one-pass CLIP batches)  -> $OUT/cuda-tests.txt
# 3. the backends benchmark on CUDA with full-size random weights: SAM ViT-H and
#    SAM 2.1 Hiera-L in fp32/fp16/bf16, matmul peak and SAM ViT-H GFLOP/s, the peers
#    (Grounding DINO tiny -> SAM, CLIPSeg)                        -> $OUT/bench/backends.{md,json}
# 4. the video trackers on CUDA with full-size random weights: SAM 2.1 tiny and large and
#    EdgeTAM, fp32 and bf16, frames/s at 480p, memory over 100 frames -> $OUT/video/results.md
# Everything is summarised in $OUT/SUMMARY.md. It uses the Python on PATH (or $PYTHON)
# with the project's sources on PYTHONPATH; a missing dependency is reported, not installed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results/device}
PY=${PYTHON:-python3}
mkdir -p "$OUT/bench"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HYBRIDGL_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $((570 - ($(date +%s) - T0))); }

{
  echo "# device check $(date -u '+%Y-%m-%d %H:%M UTC')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 || true
  "$PY" - <<'PY' 2>&1
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, round(p.total_memory / 2**30, 1), "GiB, capability", f"{p.major}.{p.minor}",
          "bf16", torch.cuda.is_bf16_supported())
for m in ("hybridgl", "open_clip", "segment_anything", "spacy", "transformers", "pytest"):
    try:
        mod = importlib.import_module(m)
        print("ok", m, getattr(mod, "__version__", ""))
    except Exception as e:
        print("MISSING", m, type(e).__name__, e)
PY
} > "$OUT/env.txt"
cat "$OUT/env.txt"

echo "== CUDA tests (budget 150 s)"
timeout 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
  --junitxml="$OUT/cuda-tests.xml" > "$OUT/cuda-tests.txt" 2>&1
echo "pytest exit $?" >> "$OUT/cuda-tests.txt"
tail -5 "$OUT/cuda-tests.txt"

echo "== video trackers on CUDA (budget 120 s)"
mkdir -p "$OUT/video"
timeout 120 "$PY" benchmarks/video_bench.py --device cuda --random full \
  --trackers sam2.1_hiera_tiny,sam2.1_hiera_large,edgetam --dtypes fp32,bf16 \
  --lengths 100 --fps-frames 30 --in-process --sam vit_b \
  --out "$OUT/video" > "$OUT/video/stdout.txt" 2> "$OUT/video/stderr.txt"
echo "video benchmark exit $?" >> "$OUT/video/stderr.txt"
tail -3 "$OUT/video/stderr.txt"

B=$(left)
echo "== benchmark on CUDA (budget ${B} s)"
timeout "$B" "$PY" benchmarks/run.py --suite backends --device cuda --items cuda \
  --out "$OUT/bench" > "$OUT/bench/stdout.txt" 2> "$OUT/bench/stderr.txt"
echo "benchmark exit $?" >> "$OUT/bench/stderr.txt"
tail -3 "$OUT/bench/stderr.txt"

{
  echo "# Device check summary"
  echo; echo '```'; cat "$OUT/env.txt"; echo '```'
  echo; echo "## CUDA tests"; echo; echo '```'; tail -15 "$OUT/cuda-tests.txt"; echo '```'
  echo; cat "$OUT/bench/backends.md" 2>/dev/null || echo "(no benchmark tables: see bench/stderr.txt)"
  echo; cat "$OUT/video/results.md" 2>/dev/null || echo "(no video table: see video/stderr.txt)"
  echo; echo "total $(( $(date +%s) - T0 )) s"
} > "$OUT/SUMMARY.md"
echo "== done in $(( $(date +%s) - T0 )) s; tables in $OUT/SUMMARY.md"
