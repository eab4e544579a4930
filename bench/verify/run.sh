#!/usr/bin/env bash
# Verified-inference benchmark, one command: false challenges among honest providers (different
# thread counts, batch sizes and load), detection of a substitute model and of outputs no model
# produced, and audit cost. Results to stdout and to docs/benchmarks.md ("## Verified inference").
#
#   bench/verify/run.sh [--honest 1000] [--cheating 200] [--max-tokens 32]
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
GGUF=$("$CARGO_TARGET_DIR/release/plexus" model list --json | "$PLEXUS_PYTHON" -c '
import json, sys, os
m = [x for x in json.load(sys.stdin) if x["name"] == "smollm2-135m-instruct"][0]
print(os.path.join(m["dir"], m["files"]["gguf"]))')
SUBSTITUTE="$PLEXUS_CACHE/bench/smollm2-135m-substitute.gguf"
mkdir -p "$(dirname "$SUBSTITUTE")"
[[ -f "$SUBSTITUTE" ]] || "$PLEXUS_PYTHON" "$PLEXUS_ROOT/scripts/make-substitute.py" "$GGUF" "$SUBSTITUTE"
DOCS=()
[[ -n "${BENCH_NO_DOCS:-}" ]] || DOCS=(--docs "$PLEXUS_ROOT/docs/benchmarks.md")
exec "$CARGO_TARGET_DIR/release/plexus-bench" verify --substitute "$SUBSTITUTE" "${DOCS[@]}" "$@"
