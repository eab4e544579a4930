#!/usr/bin/env bash
# Edge tensor-model benchmark, one command: the tract engine against onnxruntime on the same
# ONNX files and inputs, batch 1 and 32, latency p50/p99 and inferences per second; then one
# heartbeat per request end to end: `plexus serve` over HTTP and a devnet's gateway (paid). Results to
# stdout and to docs/benchmarks.md ("## Edge tensor models").
#
#   bench/edge/run.sh [--calls 2000]
#
# BENCH_NO_DOCS=1 leaves docs/benchmarks.md alone.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
ensure_system_packages
ensure_cargo
ensure_python
cd "$PLEXUS_ROOT"
say "building plexus and plexus-bench (release)"
cargo build --release --locked -p plexus -p plexus-bench
# Builds the three edge models (and the training environment with onnxruntime) when missing.
"$CARGO_TARGET_DIR/release/plexus" model pull ecg-heartbeat
DOCS=()
[[ -n "${BENCH_NO_DOCS:-}" ]] || DOCS=(--docs "$PLEXUS_ROOT/docs/benchmarks.md")
exec "$CARGO_TARGET_DIR/release/plexus-bench" edge --script "$PLEXUS_ROOT/bench/edge/ort_bench.py" \
  --plexus "$CARGO_TARGET_DIR/release/plexus" "${DOCS[@]}" "$@"
