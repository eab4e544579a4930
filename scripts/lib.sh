# Shared set-up for the scripts in this directory: system packages, the Python tools, and where
# build output and models are cached. Sourced, not run.
#
# Everything installed here comes from Debian packages, crates.io or PyPI. The cargo target
# directory and the model cache live outside the clone, so a second run (or CI on a machine that
# has built before) only rebuilds what changed and never downloads a model twice.

set -euo pipefail

PLEXUS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLEXUS_CACHE="${PLEXUS_CACHE:-$HOME/.cache/plexus}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PLEXUS_CACHE/target}"
# Incremental compilation data grew the shared build cache by ~30 GB over a few weeks of edits and
# filled this disk; scripts rebuild from whole crates instead.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Test and binary builds of older commits stay in the cache: drop the large ones not touched for
# three days (cargo relinks anything it still needs).
prune_build_cache() {
    [ -d "$CARGO_TARGET_DIR/debug/deps" ] || return 0
    find "$CARGO_TARGET_DIR/debug/deps" "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -type f -size +20M -mtime +3 -delete 2>/dev/null || true
    rm -rf "$CARGO_TARGET_DIR/debug/incremental" "$CARGO_TARGET_DIR/release/incremental"
}
export PLEXUS_MODELS="${PLEXUS_MODELS:-$PLEXUS_CACHE/models}"
PLEXUS_VENV="${PLEXUS_VENV:-$PLEXUS_CACHE/venv}"

# The OpenAI SDK the end-to-end tests drive the servers with, and the GGUF library that makes
# the substitute model of the verification tests (pinned).
OPENAI_PY_VERSION="3.57.0"
GGUF_PY_VERSION="0.19.0"
PROMETHEUS_PY_VERSION="0.21.1"
SCHEMATHESIS_PY_VERSION="4.32.5"
# Triton's client, which speaks the Open Inference Protocol with binary tensors by default.
TRITONCLIENT_PY_VERSION="2.73.0"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Prints the first libclang that bindgen (clang-sys) would load from the given directories, and
# fails when there is none. clang-sys looks for `libclang.so`, `libclang-<ver>.so` and, since
# bindgen loads it at run time, their `.so.<n>` forms. `libclang-cpp.so.<n>` (the C++ API,
# installed with the compiler on Debian 12 and Ubuntu) is a different library that bindgen cannot
# use, so it must never count: taking it for libclang is how a fresh machine skipped
# `libclang-dev` and stopped in bindgen after 12 minutes of building.
find_libclang() {
    local dir file name
    for dir in "$@"; do
        [ -d "$dir" ] || continue
        for file in "$dir"/libclang.so "$dir"/libclang.so.* "$dir"/libclang-*.so "$dir"/libclang-*.so.*; do
            [ -e "$file" ] || continue
            name="${file##*/}"
            case "$name" in
                libclang-cpp*) continue ;;
            esac
            printf '%s\n' "$file"
            return 0
        done
    done
    return 1
}

# The directories clang-sys searches on Debian-like systems (LIBCLANG_PATH first, as it does).
libclang_search_dirs() {
    [ -n "${LIBCLANG_PATH:-}" ] && printf '%s\n' "$LIBCLANG_PATH"
    local root="${1:-}"
    local dir
    for dir in "$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib64 "$root"/usr/lib \
        "$root"/usr/local/lib "$root"/usr/local/llvm/lib; do
        [ -d "$dir" ] && printf '%s\n' "$dir"
    done
    return 0
}

# Installs the Debian packages llama.cpp's build needs (cmake; libclang for bindgen) when missing.
ensure_system_packages() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    local dirs
    mapfile -t dirs < <(libclang_search_dirs)
    find_libclang "${dirs[@]}" >/dev/null || missing+=(libclang-dev)
    command -v c++ >/dev/null 2>&1 || missing+=(g++)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    # Debian ships python3 without venv/ensurepip; model pulls and the edge models' training
    # environment need both.
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    # The multi-host test builds its hosts as network namespaces (ip, and tc for WAN latency).
    command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || missing+=(iproute2)
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    say "installing system packages: ${missing[*]}"
    apt_install "${missing[@]}"
}

# Installs Debian packages, as root or through sudo.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install: $*" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# What only the tests need: a headless browser for the console test (Debian's chromium).
ensure_test_packages() {
    command -v chromium >/dev/null 2>&1 && return
    say "installing chromium (the console test renders the node's web console headless)"
    apt_install chromium
}

# The tests' API checker (schemathesis) and Triton's client, in the environment `ensure_python` made.
ensure_test_python() {
    local py="$PLEXUS_VENV/bin/python3"
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_PY_VERSION')" >/dev/null 2>&1; then
        say "installing the schemathesis Python package $SCHEMATHESIS_PY_VERSION (checks the OpenAPI documents against live servers)"
        "$py" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_PY_VERSION"
    fi
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('tritonclient') != '$TRITONCLIENT_PY_VERSION')" >/dev/null 2>&1; then
        say "installing the tritonclient[http] Python package $TRITONCLIENT_PY_VERSION (drives the KServe routes as Triton's clients do)"
        "$py" -m pip install -q --disable-pip-version-check "tritonclient[http]==$TRITONCLIENT_PY_VERSION"
    fi
}

# A Python virtual environment with pip (model downloads) and the OpenAI SDK (tests, examples).
# PLEXUS_PYTHON points the binary at it.
ensure_python() {
    local py="$PLEXUS_VENV/bin/python3"
    if [ ! -x "$py" ]; then
        say "creating a Python environment in $PLEXUS_VENV"
        command -v python3 >/dev/null 2>&1 || { echo "python3 is required (with the venv module)" >&2; exit 1; }
        python3 -m venv "$PLEXUS_VENV"
    fi
    if ! "$py" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_PY_VERSION')" >/dev/null 2>&1; then
        say "installing the openai Python package $OPENAI_PY_VERSION"
        "$py" -m pip install -q --disable-pip-version-check "openai==$OPENAI_PY_VERSION"
    fi
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('gguf') != '$GGUF_PY_VERSION')" >/dev/null 2>&1; then
        say "installing the gguf Python package $GGUF_PY_VERSION"
        "$py" -m pip install -q --disable-pip-version-check "gguf==$GGUF_PY_VERSION"
    fi
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus-client') != '$PROMETHEUS_PY_VERSION')" >/dev/null 2>&1; then
        say "installing the prometheus-client Python package $PROMETHEUS_PY_VERSION (the tests' metrics parser)"
        "$py" -m pip install -q --disable-pip-version-check "prometheus-client==$PROMETHEUS_PY_VERSION"
    fi
    export PLEXUS_PYTHON="$py"
}

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 || { echo "cargo is required (install Rust with rustup)" >&2; exit 1; }
}
