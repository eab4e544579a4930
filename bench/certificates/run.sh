#!/usr/bin/env bash
# Consensus certificates benchmark, one command: bytes and verification time of a finalized
# block's certificate under consensus v1 (ed25519) and v2 (aggregated BLS12-381), at 4, 16 and 64
# validators, in one process. Results to stdout and to docs/benchmarks.md
# ("## Consensus certificates").
#
#   bench/certificates/run.sh [--validators 4,16,64] [--rounds 50]
#
# BENCH_NO_DOCS=1 leaves docs/benchmarks.md alone.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
ensure_system_packages
ensure_cargo
cd "$PLEXUS_ROOT"
say "building plexus-bench (release)"
cargo build --release --locked -p plexus-bench
DOCS=()
[[ -n "${BENCH_NO_DOCS:-}" ]] || DOCS=(--docs "$PLEXUS_ROOT/docs/benchmarks.md")
exec "$CARGO_TARGET_DIR/release/plexus-bench" certificates "${DOCS[@]}" "$@"
