#!/usr/bin/env bash
# Builds the CPU wheel with `pip wheel . -w dist`, installs it into a fresh
# virtual environment (outside the source tree) and proves it works: import,
# every backend, one kernel against NumPy, and a short training run.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=$(mktemp -d /tmp/fastnn-dist.XXXXXX)
venv=$(mktemp -d /tmp/fastnn-wheel-venv.XXXXXX)
trap 'rm -rf "$dist" "$venv"' EXIT

# Where nvcc exists the wheel also carries fastnn._cuda (FASTNN_CUDA=ON): CI
# machines have the toolkit but no GPU, so this is where the CUDA code is
# compiled, and where a GPU-less import of it must still work.
cuda=OFF
command -v nvcc >/dev/null 2>&1 && cuda=ON
FASTNN_CUDA=$cuda pip wheel . -w "$dist" --no-deps
wheel=$(ls "$dist"/fastnn_train-*.whl)
echo "built $wheel"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "$wheel"
cd /tmp
"$venv/bin/python" - <<'PY'
import numpy as np
import fastnn as fnn
from fastnn.backend import cpp
assert "cpp" in fnn.backend.available(), fnn.backend.failures()
print("installed from", fnn.__file__, "backends", fnn.backend.available(), "isa", cpp._C.cpu_isa())
from fastnn.backend import cuda
print("cuda backend:", cuda.reason or "available")
rng = np.random.default_rng(0)
x, w = rng.standard_normal((33, 70)).astype(np.float32), rng.standard_normal((70, 21)).astype(np.float32)
for name in fnn.backend.available():
    with fnn.backend.using(name):
        y, _ = fnn.ops.linear_act(x, w, None, "relu")
        assert np.allclose(y, np.maximum(x.astype(np.float64) @ w, 0), rtol=1e-4, atol=1e-4), name
PY
"$venv/bin/fastnn" train --quiet --epochs 20 | tail -1 | tee /dev/stderr | \
  awk '{ if ($NF + 0 < 0.95) { print "wheel smoke: accuracy too low"; exit 1 } }'
echo "wheel smoke test passed"
