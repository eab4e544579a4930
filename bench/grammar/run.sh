#!/usr/bin/env bash
# Structured-outputs benchmark, one command: llguidance's mask cost per token against the
# model's decode time per token, measured in the same run, for three JSON schemas. Results to
# stdout and to docs/benchmarks.md ("## Structured outputs").
#
#   bench/grammar/run.sh [--requests 8] [--max-tokens 96] [--threads 2]
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
exec "$CARGO_TARGET_DIR/release/plexus-bench" grammar "${DOCS[@]}" "$@"
