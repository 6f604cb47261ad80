#!/usr/bin/env bash
# The Rust suite under AddressSanitizer (not part of CI: it needs the unstable
# -Zsanitizer flag, enabled on the stable toolchain with RUSTC_BOOTSTRAP=1, and it is slow).
#   bash scripts/sanitize.sh            # engine tests with leak detection, then the docs/testing.md
#                                       # property tests (embedded CPython) without it
# The fuzz targets (fuzz/, cargo-fuzz) run under ASan too:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O engine -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
export CARGO_TARGET_DIR=target/asan PROPTEST_CASES="${PROPTEST_CASES:-64}"
# Pure Rust: every allocation accounted for.
ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 cargo test --release --target "$target" --lib --test engine_properties
# With an embedded interpreter: CPython keeps interned objects alive at exit by design, so
# leak reports there are noise; out-of-bounds and use-after-free are still fatal.
# allocator_may_return_null: a producer claiming an absurd size must get a ValidationError
# from the fallible allocation, as it does without ASan, not an ASan abort.
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 cargo test --release --target "$target" \
    --test test_zero_copy_property --test test_equivalence_property --test test_memory_safety_property \
    --test test_error_handling_property --test test_performance_property
