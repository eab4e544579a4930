#!/usr/bin/env bash
# Rolling-upgrade benchmark, one command: runs the end-to-end rolling-upgrade test (4 validators
# with models under gateway load: a rolling restart onto execution v6, consensus v2 and network
# v2 voted in together, a faulty version rolled back) several times and tabulates, per run, the
# longest gap between consecutive blocks and the block intervals (p50/p99/max) before, during and
# after each upgrade, from the proposers' own timestamps. Results to stdout and to
# docs/benchmarks.md ("## Rolling upgrades").
#
#   bench/rolling-upgrade/run.sh [runs, default 10]
#
# BENCH_NO_DOCS=1 leaves docs/benchmarks.md alone.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
ensure_system_packages
ensure_test_packages
ensure_cargo
ensure_python
ensure_test_python
command -v cargo-nextest >/dev/null 2>&1 || { say "installing cargo-nextest"; cargo install --locked cargo-nextest; }
cd "$PLEXUS_ROOT"
RUNS="${1:-10}"
FEATURES=(--features plexus/faulty-version)
FILTER='test(governance_upgrades_under_load_with_a_rolling_restart_and_a_rollback)'
say "building the tests"
cargo nextest run --locked --workspace "${FEATURES[@]}" --no-run
"$CARGO_TARGET_DIR/debug/plexus" model pull smollm2-135m-instruct >/dev/null
ROWS=""
for run in $(seq 1 "$RUNS"); do
  say "run $run of $RUNS"
  out="$(cargo nextest run --locked --workspace "${FEATURES[@]}" -E "$FILTER" --no-capture 2>&1)" || {
    echo "$out" | tail -40; echo "run $run failed" >&2; exit 1; }
  served="$(echo "$out" | grep -o '[0-9]* client requests served, [0-9]* failed' | head -1)"
  gap="$(echo "$out" | sed -n 's/.*block gaps: longest \[(\([0-9]*\), \([0-9]*\)).*/\1 ms at height \2/p' | head -1)"
  phases="$(echo "$out" | sed -n 's/.*block intervals p50\/p99\/max ms: //p' | head -1)"
  echo "run $run: longest gap $gap; $served; $phases"
  ROWS+="| $run | $gap | $served | $phases |"$'\n'
done
BODY="Command: \`bench/rolling-upgrade/run.sh $RUNS\`, commit $(git rev-parse --short HEAD), on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs.

The end-to-end rolling-upgrade test (\`crates/plexus/tests/e2e/upgrade.rs\`), $RUNS runs: 4 validators that
are also providers of SmolLM2 on one machine, continuous chat completions through the gateway; every node
restarted in turn onto a binary that runs execution v6 (which activates after the third), consensus v2 and
network v2 voted in together (consensus at an epoch boundary), then a faulty execution version that
activates and is rolled back. Block intervals are from the proposers' timestamps (p50/p99/max ms, and the
number of blocks) before the restarts, during them up to v6, from v6 to consensus v2, on consensus and
network v2, and through the faulty version's activation and rollback.

| run | longest gap between blocks | client requests | before | rolling restart | v6 to consensus v2 | consensus v2 + network v2 | faulty and rollback |
|---|---|---|---|---|---|---|---|
$ROWS"
echo "$BODY"
if [[ -z "${BENCH_NO_DOCS:-}" ]]; then
  python3 - "$PLEXUS_ROOT/docs/benchmarks.md" "Rolling upgrades" "$BODY" <<'PY'
import sys
path, title, body = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
heading = f"## {title}\n"
section = f"{heading}\n{body.rstrip()}\n"
start = text.find(heading)
if start < 0:
    text = text.rstrip("\n") + "\n\n" + section
else:
    rest = text[start + len(heading):]
    end = rest.find("\n## ")
    text = text[:start] + section + ("\n" + rest[end + 1:] if end >= 0 else "")
open(path, "w").write(text)
PY
fi
