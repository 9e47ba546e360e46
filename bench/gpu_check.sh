#!/usr/bin/env bash
# The prepared GPU check of the CUDA backend: ONE command on a fresh GPU machine
# (CUDA 13 + nvcc, CuPy, PyTorch, pybind11, scikit-build-core, numba; no
# network) that builds fastnn with CUDA, checks the cuBLASLt declarations
# against the real headers, runs tests/test_cuda.py, trains on the digits on
# the GPU and runs bench/bench_gpu.py, writing the logs and the results table
# under $OUT (default ./gpu_check_out). From the repository root:
#
#   bash bench/gpu_check.sh            # about 5 minutes on an H200
#   GPU_CHECK_FULL=1 bash bench/gpu_check.sh   # the full benchmark (3 more minutes)
#
# Every stage runs even when an earlier one failed; the exit status is the
# number of failed stages.
set -u
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
failed=0
stage() { echo; echo "=== $1 ($(date +%T))"; }
summary() { echo "$1" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

stage "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv; nvcc --version | tail -1
  $PY -c "import sys, numpy, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tail -1
  lscpu | grep "Model name"; } | tee -a "$OUT/summary.txt"

stage "build (FASTNN_CUDA=ON, sm_90, CPU kernels generic only to save time)"
t0=$(date +%s)
if FASTNN_CUDA=ON $PY -m pip install --no-deps --no-build-isolation --force-reinstall . \
    -Cbuild-dir=/tmp/fastnn-build -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90-real \
    -Ccmake.define.FASTNN_ISAS=generic -v > "$OUT/build.log" 2>&1; then
  summary "build: ok in $(( $(date +%s) - t0 )) s"
else
  summary "build: FAILED (build.log)"; tail -40 "$OUT/build.log"; failed=$((failed + 1))
fi
grep -E "warning|error" "$OUT/build.log" | grep -v "^  *[0-9]* |" | head -20

stage "cuBLASLt declarations vs the real headers"
inc=$($PY - <<'PYEOF'
import os, sys
for p in sys.path:
    d = os.path.join(p, "nvidia", "cu13", "include")
    if os.path.isfile(os.path.join(d, "cublasLt.h")):
        print(d); break
else:
    print("/usr/local/cuda/include")
PYEOF
)
if nvcc -std=c++17 -Icsrc -I"$inc" bench/cuda_api_check.cu -o /tmp/cuda_api_check 2>&1 && /tmp/cuda_api_check; then
  summary "cublaslt api check: ok ($inc)"
else
  summary "cublaslt api check: FAILED"; failed=$((failed + 1))
fi

cd /tmp  # run the installed package, not the source tree
stage "doctor and a digits run on the GPU"
if (fastnn doctor && fastnn train --device cuda --epochs 5) > "$OUT/train.log" 2>&1; then
  summary "doctor + train --device cuda: ok ($(grep -iE 'test acc|accuracy' "$OUT/train.log" | tail -1))"
else
  summary "doctor + train --device cuda: FAILED (train.log)"; failed=$((failed + 1))
fi
tail -25 "$OUT/train.log"
cd - > /dev/null

stage "tests/test_cuda.py tests/test_cuda_model.py tests/test_device.py"
if timeout 300 $PY -P -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/test_cuda.py tests/test_cuda_model.py tests/test_device.py > "$OUT/test_cuda.log" 2>&1; then
  summary "test_cuda: $(tail -1 "$OUT/test_cuda.log")"
else
  summary "test_cuda: FAILED: $(tail -1 "$OUT/test_cuda.log")"; failed=$((failed + 1))
fi
grep -E "^(FAILED|ERROR)" "$OUT/test_cuda.log" | head -40

stage "bench/bench_gpu.py"
quick=--quick
[ -n "${GPU_CHECK_FULL:-}" ] && quick=
if timeout 300 $PY -P bench/bench_gpu.py $quick --out "$OUT" > "$OUT/bench.log" 2>&1; then
  summary "bench: ok"
else
  summary "bench: FAILED (bench.log)"; failed=$((failed + 1))
fi
tail -40 "$OUT/bench.log"

stage "bench/gpu_host_profile.py (where a training step's host time goes)"
if timeout 120 $PY -P bench/gpu_host_profile.py --steps 100 --top 25 > "$OUT/host_profile.log" 2>&1; then
  summary "host profile: ok ($(grep -E '^=== ' "$OUT/host_profile.log" | tr '\n' ' '))"
else
  summary "host profile: FAILED (host_profile.log)"; failed=$((failed + 1))
fi
tail -16 "$OUT/host_profile.log"

echo; echo "=== summary"; cat "$OUT/summary.txt"
exit $failed
