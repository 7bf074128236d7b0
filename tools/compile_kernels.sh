#!/usr/bin/env bash
# Compile every kernels_cu/*.cu for sm_80 and sm_90 with nvcc (no GPU needed), so that a kernel with a
# syntax error fails here instead of on the GPU. Prints one line per file; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
sources=(kernels_cu/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "compile_kernels: no .cu files yet"
    exit 0
fi
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for src in "${sources[@]}"; do
    "$NVCC" -std=c++17 -Ikernels_cu --cubin -gencode arch=compute_80,code=sm_80 -o "$out/a.cubin" "$src"
    "$NVCC" -std=c++17 -Ikernels_cu --cubin -gencode arch=compute_90,code=sm_90 -o "$out/b.cubin" "$src"
    echo "compiled $src (sm_80, sm_90)"
done
