#!/usr/bin/env bash
# Set up what the WebGPU backend needs. Idempotent: each step runs only when its result is
# missing. Steps: Debian packages (chromium, emscripten, wabt, npm), the pinned tvmjs npm
# package (web/package-lock.json), then the wasm runtime build (python -m sdparity.backends.webgpu.toolchain,
# about 2-4 minutes once per TVM version, cached under $SDPARITY_CACHE/toolchain/).
# Never runs `playwright install`: Playwright drives the system Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v emcc >/dev/null 2>&1 || missing+=(emscripten)
command -v wasm2wat >/dev/null 2>&1 || missing+=(wabt)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup_webgpu: apt-get install ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# npm ci when node_modules is missing or was installed from another package-lock.json
lock_sum="$(sha256sum web/package-lock.json | cut -d' ' -f1)"
stamp=web/node_modules/.sdparity-lock.sha256
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
  echo "setup_webgpu: npm ci in web/"
  (cd web && npm ci --no-audit --no-fund)
  echo "$lock_sum" > "$stamp"
fi

"$PYTHON" -m sdparity.backends.webgpu.toolchain
