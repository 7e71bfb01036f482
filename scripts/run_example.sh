#!/usr/bin/env bash
# The main job: install what is missing, build msda, run the one-layer training simulation.
# Extra arguments go to the example, e.g. `bash scripts/run_example.sh --dtype bfloat16`.
# With --aclnn it runs the same simulation written against the Ascend API (AscendCL and the
# spec's aclnn headers) on msda::aclnn instead, e.g. `bash scripts/run_example.sh --aclnn`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

example=simu_one_layer
args=()
for arg in "$@"; do
  if [ "$arg" = --aclnn ]; then example=aclnn_one_layer; else args+=("$arg"); fi
done

build=${MSDA_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMSDA_BUILD_TESTS=OFF \
  -DMSDA_BUILD_EXAMPLES=ON -DMSDA_BUILD_ACLNN=ON > /dev/null
cmake --build "$build" --target "$example"
"$build/examples/$example" ${args[@]+"${args[@]}"}
