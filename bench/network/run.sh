#!/usr/bin/env bash
# Network versions benchmark, one command: the chain benchmark's transfer load on a 4-validator
# devnet started at network v1, then on one started at v2; block bytes each validator sends per
# finalized block, side by side. Results to stdout and to docs/benchmarks.md
# ("## Network versions").
#
#   bench/network/run.sh [--validators 4] [--accounts 400] [--seconds 30]
#
# BENCH_NO_DOCS=1 leaves docs/benchmarks.md alone.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
ensure_system_packages
ensure_cargo
cd "$PLEXUS_ROOT"
say "building plexus and plexus-bench (release)"
cargo build --release --locked -p plexus -p plexus-bench
DOCS=()
[[ -n "${BENCH_NO_DOCS:-}" ]] || DOCS=(--docs "$PLEXUS_ROOT/docs/benchmarks.md")
exec "$CARGO_TARGET_DIR/release/plexus-bench" network --plexus "$CARGO_TARGET_DIR/release/plexus" "${DOCS[@]}" "$@"
