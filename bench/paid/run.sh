#!/usr/bin/env bash
# Paid-inference benchmark, one command: protocol overhead (gateway + receipts vs the provider
# directly vs the engine directly), metered requests per second with a trivial workload, and
# chain bytes per settled session. Results to stdout and to docs/benchmarks.md
# ("## Paid inference").
#
#   bench/paid/run.sh [--threads 2] [--seconds 10]
#
# BENCH_NO_DOCS=1 leaves docs/benchmarks.md alone.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
ensure_system_packages
ensure_cargo
ensure_python
cd "$PLEXUS_ROOT"
say "building plexus and plexus-bench (release)"
cargo build --release --locked -p plexus -p plexus-bench
"$CARGO_TARGET_DIR/release/plexus" model pull smollm2-135m-instruct
"$CARGO_TARGET_DIR/release/plexus" model pull all-minilm-l6-v2
DOCS=()
[[ -n "${BENCH_NO_DOCS:-}" ]] || DOCS=(--docs "$PLEXUS_ROOT/docs/benchmarks.md")
exec "$CARGO_TARGET_DIR/release/plexus-bench" paid --plexus "$CARGO_TARGET_DIR/release/plexus" "${DOCS[@]}" "$@"
