#!/usr/bin/env bash
# Every test: installs what is missing, builds with -Werror, runs the C++ suite (GoogleTest on
# every SIMD target, the example, the install consumer) through ctest, the aarch64 cross build
# with a subset of its tests under qemu-user, the same suite under ASan + UBSan, a 60 s fuzz
# run, then the Python package's tests and the packages (wheel, sdist). MSDA_SKIP_ARM=1,
# MSDA_SKIP_SANITIZE=1, MSDA_FUZZ_SECONDS=0, MSDA_SKIP_PYTHON=1 and MSDA_SKIP_PACKAGING=1 skip
# parts for a quick local run. The Python tests install msda-ops (and torch, pytest, ...) into
# the python3 on PATH (MSDA_PYTHON names another interpreter, e.g. a venv's); the package tests
# use fresh venvs of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

build=${MSDA_BUILD_DIR:-build-test}
jobs=$(nproc)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMSDA_WERROR=ON \
  -DMSDA_BUILD_TESTS=ON -DMSDA_BUILD_EXAMPLES=ON -DMSDA_BUILD_BENCH=ON
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"

# The aarch64 cross build and a bounded subset of its tests under qemu-user: NEON, SVE and
# SVE2 kernels with 1 and 2 threads (scripts/arm.sh --all runs every test).
if [ "${MSDA_SKIP_ARM:-0}" != 1 ]; then
  bash scripts/arm.sh
fi

# The whole C++ suite again under ASan + UBSan (scripts/sanitize.sh thread runs TSan).
if [ "${MSDA_SKIP_SANITIZE:-0}" != 1 ]; then
  bash scripts/sanitize.sh address
fi

# A bounded fuzz run of the C API under ASan and UBSan (scripts/fuzz.sh runs longer ones).
if [ "${MSDA_FUZZ_SECONDS:-60}" != 0 ]; then
  bash scripts/fuzz.sh "${MSDA_FUZZ_SECONDS:-60}"
fi

if [ -f pyproject.toml ] && [ "${MSDA_SKIP_PYTHON:-0}" != 1 ]; then
  # torch is pinned to the CPU build kept on these machines; an unpinned install would pull a
  # multi-GB CUDA build.
  python=${MSDA_PYTHON:-python3}
  echo "msda: installing into $("$python" -c 'import sys; print(sys.prefix)')"
  # The ONNX tests export with torch.onnx's dynamo exporter (onnxscript) and run the graphs in
  # ONNX Runtime and OpenVINO, on a small transformers Deformable DETR among others.
  "$python" -m pip install -q "torch==2.13.0" "triton==3.9.0" numpy pytest hypothesis \
    scikit-build-core nanobind "onnx==1.23.2" "onnxruntime==1.32.0" "onnxscript==0.7.2" \
    "openvino==2026.4.1" "transformers==5.24.0"
  # tests/python/test_mmcv.py: mmdet 3.3.0 accepts mmcv < 2.2.0; mmcv's full build (compiled
  # ops) is not pip-installable in reasonable time, so mmcv-lite (its Python code) is used.
  "$python" -m pip install -q "mmengine==0.10.7" "mmcv-lite==2.1.0" "mmdet==3.3.0"
  "$python" -m pip install -q --no-build-isolation .
  "$python" -m pytest -q tests/python
fi

# The wheel as a user gets it, in a fresh venv, and the sdist's contents (about 3 minutes;
# scripts/test_packaging.sh --sdist-install also builds the sdist in the venv, 2 more).
if [ "${MSDA_SKIP_PACKAGING:-0}" != 1 ]; then
  bash scripts/test_packaging.sh
fi
echo "msda: all tests passed"
