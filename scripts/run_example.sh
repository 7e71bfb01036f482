#!/usr/bin/env bash
# The main job: install what is missing, build msda, run the one-layer training simulation.
# Extra arguments go to the example, e.g. `bash scripts/run_example.sh --dtype bfloat16`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

build=${MSDA_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMSDA_BUILD_TESTS=OFF \
  -DMSDA_BUILD_EXAMPLES=ON > /dev/null
cmake --build "$build" --target simu_one_layer
"$build/examples/simu_one_layer" "$@"
