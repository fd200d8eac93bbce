#!/usr/bin/env bash
# Build llama-cpp-python once into a wheel cache, then install it with its [server] extras.
# Opt-in tooling for the "proof on public data" benchmark: never part of the default install or CI.
#
# Usage: bash bench/real/setup.sh            (from the repo root, venv at .venv or $VENV)
# Env:   LLAMA_CPP_VERSION (default 0.3.36), WHEEL_DIR (default bench/.cache/wheels),
#        CMAKE_ARGS (default: portable x86-64-v3 CPU build, see below), NICE (default 19).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
WHEEL_DIR="${WHEEL_DIR:-$ROOT/bench/.cache/wheels}"
NICE="${NICE:-19}"

# Why these flags: GGML_NATIVE=OFF keeps -march=native out so the cached wheel runs on any
# AVX2 machine of the same kind; AVX/AVX2/FMA/F16C are enabled explicitly because with
# NATIVE=OFF ggml otherwise falls back to plain SSE kernels (several times slower).
# LLAVA_BUILD=OFF skips the multimodal mtmd library (text-only benchmark, saves build time).
DEFAULT_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_ARGS="${CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"

mkdir -p "$WHEEL_DIR"
shopt -s nullglob
wheels=("$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "[setup] building llama-cpp-python==$VERSION wheel (CPU, ~10-15 min on 2 cores)"
    echo "[setup] CMAKE_ARGS=$CMAKE_ARGS"
    start=$(date +%s)
    nice -n "$NICE" "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python \
        -w "$WHEEL_DIR" "llama-cpp-python==$VERSION"
    echo "[setup] wheel built in $(( $(date +%s) - start )) s"
    wheels=("$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl)
else
    echo "[setup] using cached wheel ${wheels[0]}"
fi

# --find-links + --only-binary makes pip take our wheel (never rebuild) and resolve the
# [server] extras (fastapi, sse-starlette, starlette-context, pydantic-settings, ...) from PyPI.
"$PY" -m pip install --find-links "$WHEEL_DIR" --only-binary llama-cpp-python \
    "llama-cpp-python[server]==$VERSION"
"$PY" -c "import llama_cpp, llama_cpp.server.app; print('[setup] llama_cpp', llama_cpp.__version__, 'ok')"
