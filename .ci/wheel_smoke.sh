#!/usr/bin/env bash
# CI wheel stage (issue 24):
# 1. the portable CPU wheel: .ci/build_wheel.sh builds it (FASTNN_CUDA=OFF),
#    repairs it to manylinux_2_X with auditwheel (libgomp vendored), and tests
#    the installed wheel from outside the source tree (tag, auditwheel show, no
#    _cuda inside, import, every backend against NumPy, training to 95%);
# 2. the sdist's file list (python -m build --sdist): everything a from-scratch
#    build needs, the digits data included, and no build output. Building it
#    from scratch costs minutes, so CI checks the list; the full build was
#    proven by hand: pip install dist/fastnn_train-*.tar.gz in a fresh venv;
# 3. where nvcc exists, the CUDA variant (FASTNN_CUDA=ON), its own distribution
#    fastnn-train-cuda<major>x (as CuPy names its wheels): CI machines have the
#    toolkit but no GPU, so this is where the CUDA code is compiled, and where a
#    GPU-less import of fastnn._cuda must work and say the backend is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(mktemp -d /tmp/fastnn-dist.XXXXXX)
trap 'rm -rf "$out"' EXIT

echo "-- the CPU wheel"
bash "$root/.ci/build_wheel.sh" "$out/cpu"

echo "-- the sdist"
python3 -m venv "$out/tools"
"$out/tools/bin/python" -m pip install -q build
"$out/tools/bin/python" -m build --sdist -o "$out/sdist" "$root" >"$out/sdist.log" || { cat "$out/sdist.log"; exit 1; }
sdist=$(ls "$out"/sdist/fastnn_train-*.tar.gz)
"$out/tools/bin/python" - "$sdist" "$root" <<'PY'
import subprocess, sys, tarfile
sdist, root = sys.argv[1:]
with tarfile.open(sdist) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
need = {"pyproject.toml", "CMakeLists.txt", "cmake/flags.cmake", "csrc/cpu/CMakeLists.txt", "csrc/bindings.cpp",
        "csrc/kernels.h", "fastnn/__init__.py", "fastnn/data/_data/digits.npz", "README.md", "PKG-INFO"}
# every tracked source the build or the package uses
tracked = subprocess.run(["git", "-C", root, "ls-files", "csrc", "cmake", "fastnn"], capture_output=True,
                         text=True, check=True).stdout.split()
missing = sorted((need | set(tracked)) - names)
assert not missing, f"the sdist lacks {missing}"
junk = sorted(n for n in names if n.startswith(("build/", "dist/")) or n.endswith((".so", ".pyc")))
assert not junk, f"the sdist carries build output: {junk[:10]}"
print(f"sdist {sdist.rsplit('/', 1)[1]}: {len(names)} files, all {len(tracked)} tracked sources, digits data")
PY

if command -v nvcc >/dev/null 2>&1; then
  echo "-- the CUDA variant (nvcc found: compile check, GPU-less import)"
  bash "$root/.ci/build_wheel.sh" --cuda "$out/cuda"
else
  echo "-- no nvcc: the CUDA variant is not built"
fi
echo "wheel smoke test passed"
