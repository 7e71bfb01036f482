#!/usr/bin/env bash
# The GPU check: msda's Triton kernels on a real GPU. Ends in a few minutes on a bare machine
# with PyTorch, Triton, CMake, ninja, nanobind and scikit-build-core but no network.
#   bash scripts/gpu_check.sh --prepare   # here, with network: fetch Debian's Highway packages
#                                         # into .gpu/ (the C++ core's build needs them)
#   bash scripts/gpu_check.sh             # on the GPU machine (with .gpu/ copied beside)
# It unpacks Highway into .gpu/prefix, builds and installs the Python package, runs the Triton
# tests on the GPU (tests/python/test_triton.py, one fixed kernel configuration) and
# bench/bench_gpu.py (autotuned) on the standard shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$carry"
  (cd "$carry" && apt-get download libhwy-dev libhwy1 > /dev/null)
  grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> .git/info/exclude
  ls "$carry"
  exit 0
fi

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

prefix=$PWD/$carry/prefix
if ! pkg-config --exists libhwy 2> /dev/null && [ ! -d "$prefix/usr/include/hwy" ]; then
  for deb in "$carry"/libhwy*.deb; do dpkg -x "$deb" "$prefix"; done
fi
export CMAKE_PREFIX_PATH=$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
start=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps --no-index . \
  -Ccmake.define.CMAKE_PREFIX_PATH="$prefix/usr" -Cbuild-dir=build-gpu
echo "gpu_check: built and installed in $(($(date +%s) - start)) s"

export PYTHONUNBUFFERED=1
MSDA_TRITON_AUTOTUNE=0 python3 -m pytest -q -p no:cacheprovider tests/python/test_triton.py
python3 bench/bench_gpu.py --repeats 20
python3 bench/bench_gpu.py --shapes encoder --repeats 20 --dtype bfloat16
echo "gpu_check: done in $(($(date +%s) - start)) s"
