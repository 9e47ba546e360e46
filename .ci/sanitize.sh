#!/usr/bin/env bash
# CI stage: fastnn._C built with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option FASTNN_SANITIZE=ON: -fsanitize=address,undefined
# -fno-sanitize-recover=undefined -O1 -g1), installed into its own virtual
# environment (no system packages) from its own build folder, then the tests
# that drive the C++ kernels. Any sanitizer report fails the stage: the runtime
# aborts on the first error (abort_on_error, halt_on_error), and the log is
# searched for a report as well in case a child process swallowed the abort.
#
# Python itself is not instrumented, so libasan must be the first library
# loaded: it is preloaded (with libubsan) for the test run only, not for pip.
# Leak checking is off: CPython and NumPy keep allocations alive at exit by
# design, which would drown real reports.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=$(mktemp -d /tmp/fastnn-asan-venv.XXXXXX)
log=$(mktemp /tmp/fastnn-asan-log.XXXXXX)
trap 'rm -rf "$venv" "$log"' EXIT

python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q numpy numba tqdm pytest hypothesis==6.170.17

# Only the code paths this processor runs: an instrumented build of one it
# cannot run would cost minutes and test nothing.
isas="generic;avx2"
grep -qw avx512bw /proc/cpuinfo && isas="generic;avx2;avx512"
echo "-- building fastnn._C with ASan + UBSan for $isas (build/asan)"
FASTNN_SANITIZE=ON FASTNN_CUDA=OFF "$py" -m pip install -q . \
  -C build-dir=build/asan -C cmake.build-type=Release -C "cmake.define.FASTNN_ISAS=$isas"

echo "-- built in ${SECONDS}s"
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
  [ -f "$lib" ] || { echo "sanitize: $lib not found (install gcc's sanitizer runtimes)"; exit 1; }
done

# The C++ backend only: the numba backend's JIT code is not instrumented, and
# its tests are the Numba suite's job. The backend fixture's numba params are
# deselected with -k; FASTNN_BACKEND=cpp makes every layer-level call use _C.
tests=(tests/test_gemm.py tests/test_linear_act.py tests/test_softmax_xent.py tests/test_batchnorm.py
       tests/test_dropout.py tests/test_optim.py tests/test_conv.py tests/test_nn.py tests/test_bad_input.py
       tests/test_bad_input_catalogue.py tests/test_properties.py)
cd /tmp  # import the installed, instrumented package, not the source tree
export FASTNN_BACKEND=cpp OMP_NUM_THREADS=2 PYTHONFAULTHANDLER=1
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0:strict_init_order=1:check_initialization_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
LD_PRELOAD="$asan $ubsan" "$py" -c "import fastnn, fastnn._C as C; assert fastnn.backend.current() == 'cpp'; print('sanitized _C loaded, isa', C.cpu_isa())"
status=0
LD_PRELOAD="$asan $ubsan" "$py" -m pytest -q -p no:cacheprovider --rootdir "$root" -c "$root/pyproject.toml" \
  "${tests[@]/#/$root/}" -k "not numba" 2>&1 | tee "$log" || status=$?
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$log"; then
  echo "sanitize: a sanitizer report is in the log above"
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "sanitize: the tests failed under the sanitizers (exit $status)"
  exit "$status"
fi
echo "sanitizer stage passed (${SECONDS}s)"
