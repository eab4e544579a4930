#!/usr/bin/env bash
# Chain benchmark, one command: a 4-validator devnet on loopback, finality latency (idle and
# under load) and sustained transfer throughput. Results to stdout and to docs/benchmarks.md
# ("## Chain").
#
#   bench/chain/run.sh [--validators 4] [--accounts 400] [--seconds 30]
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
exec "$CARGO_TARGET_DIR/release/plexus-bench" chain --plexus "$CARGO_TARGET_DIR/release/plexus" "${DOCS[@]}" "$@"
