#!/usr/bin/env bash
# The main job on the example photo shipped in examples/ (see examples/README.md for its
# source and licence): segment what a phrase refers to, writing the mask, an overlay and
# the JSON result under demo-out/. The first run downloads the pretrained weights (SAM
# ViT-H 2.4 GiB, CLIP ViT-B/16 335 MiB); where they cannot be downloaded it ends with the
# weights error (which names each file, its URL and where to put it) and exit code 4.
#
# Exits with hybridgl's exit code. VENV (default .venv), DEMO_OUT (default demo-out),
# DEMO_IMAGE and DEMO_EXPRESSION can be set.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
out=${DEMO_OUT:-demo-out}
image=${DEMO_IMAGE:-examples/coffee.jpg}
expression=${DEMO_EXPRESSION:-the spoon on the right of the cup}

echo "demo: hybridgl segment $image \"$expression\" (outputs in $out/)"
exec "$VENV/bin/hybridgl" segment "$image" "$expression" \
  --mask "$out/mask.png" --overlay "$out/overlay.jpg" --json "$out/result.json"
