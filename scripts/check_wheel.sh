#!/usr/bin/env bash
# Build the wheel with `python -m build` and check that it works in a fresh, plain virtual
# environment (no system site-packages, no checkout on the path):
#   - `hybridgl --version` prints the version of the wheel;
#   - `import hybridgl` comes from the environment, not from this checkout;
#   - the JSON Schema and the web page's static files are inside the wheel;
#   - `hybridgl serve` (tiny random models, 127.0.0.1) answers GET / with the page and
#     GET /static/<each asset the page names> with the file.
# torch is installed pinned from this machine's disk first (as scripts/setup.sh does);
# the wheel's other dependencies come from the package index.
#
# PY_BUILD: the Python that has `build` (default .venv/bin/python). WHEEL_CHECK_DIR: where
# the environment goes (default a temporary folder, removed at the end); a folder given
# here is kept, and its environment is reused by the next check (the wheel reinstalled).
# Every step is bounded in time; the whole check normally takes a few minutes, most of it
# installing torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_BUILD=${PY_BUILD:-.venv/bin/python}
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
export PIP_DISABLE_PIP_VERSION_CHECK=1

work=${WHEEL_CHECK_DIR:-$(mktemp -d -t hybridgl-wheel.XXXXXX)}
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  if [ -z "${WHEEL_CHECK_DIR:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
step() { echo "check_wheel: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

step "building the wheel (python -m build)"
rm -rf "$work/dist"
timeout 600 "$PY_BUILD" -m build --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; fail "python -m build"; }
wheel=$(ls "$work"/dist/hybridgl-*.whl)
step "built $(basename "$wheel")"

# the files that are not Python must be in the wheel
listing=$("$PY_BUILD" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel")
for f in hybridgl/server/static/index.html hybridgl/server/static/app.js \
  hybridgl/server/static/style.css hybridgl/schemas/prediction.schema.json hybridgl/py.typed; do
  grep -qx "$f" <<<"$listing" || fail "$f is not in the wheel"
done

vpy="$work/venv/bin/python"
if [ -n "${WHEEL_CHECK_DIR:-}" ] && [ -x "$vpy" ]; then
  step "reusing the virtual environment in $work/venv (WHEEL_CHECK_DIR)"
else
  step "fresh virtual environment in $work/venv"
  rm -rf "$work/venv"
  python3 -m venv "$work/venv"
  timeout 900 "$vpy" -m pip install -q "${TORCH_PINS[@]}" || fail "installing ${TORCH_PINS[*]}"
fi
timeout 900 "$vpy" -m pip install -q "$wheel[server]" || fail "installing the wheel"
timeout 300 "$vpy" -m pip install -q --force-reinstall --no-deps "$wheel" || fail "reinstalling the wheel"

# everything below runs outside the checkout, so that nothing can come from src/
cd "$work"
unset PYTHONPATH
export HYBRIDGL_CACHE_DIR="$work/cache" HYBRIDGL_OFFLINE=1
expected=$(basename "$wheel" | cut -d- -f2)  # hybridgl-VERSION-py3-none-any.whl
got=$(timeout 120 "$work/venv/bin/hybridgl" --version)
step "hybridgl --version: $got"
[ "$got" = "hybridgl $expected" ] || fail "expected 'hybridgl $expected'"
where=$(timeout 120 "$vpy" -c 'import hybridgl; print(hybridgl.__file__)')
case $where in
  "$work/venv/"*) ;;
  *) fail "import hybridgl found $where, not the installed wheel" ;;
esac

port=$("$vpy" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
step "hybridgl serve on 127.0.0.1:$port (HYBRIDGL_RANDOM_WEIGHTS=tiny)"
HYBRIDGL_RANDOM_WEIGHTS=tiny timeout 600 "$work/venv/bin/hybridgl" serve \
  --host 127.0.0.1 --port "$port" --device cpu >"$work/serve.log" 2>&1 &
server_pid=$!
timeout 300 "$vpy" - "$port" <<'PY' || { tail -30 "$work/serve.log" >&2; fail "the served page"; }
import re
import sys
import time
import urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"


def get(path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


deadline = time.monotonic() + 240
while True:
    try:
        page_status, page_type, page = get("/")
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the server did not answer within 240 s")
        time.sleep(1)
assert page_status == 200 and page_type.startswith("text/html"), (page_status, page_type)
assets = sorted(set(re.findall(rb'(?:src|href)="(/static/[^"]+)"', page)))
assert assets, "the page names no /static/ file"
for asset in assets:
    status, ctype, body = get(asset.decode())
    assert status == 200 and body, (asset, status)
    print(f"check_wheel: GET {asset.decode()}: {status}, {len(body)} bytes, {ctype}")
print(f"check_wheel: GET /: {page_status}, {len(page)} bytes, {page_type}")
PY
kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=""
step "ok"
