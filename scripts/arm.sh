#!/usr/bin/env bash
# Cross-builds msda for aarch64 Linux (library, tests, examples; -Werror) with Debian's
# g++-aarch64-linux-gnu and multiarch arm64 libraries, then runs the tests under qemu-user:
#
#   bash scripts/arm.sh          # a bounded subset, a few minutes (scripts/test.sh runs it)
#   bash scripts/arm.sh --all    # every test on every Arm target and SVE vector length
#
# The subset runs the kernel tests (forward, backward, determinism, half types; the largest
# envelope shapes left out) on SVE2, SVE and NEON at 512 bits, each with 1 and 2 threads, the
# SIMD primitives at 128, 256 and 512 bits (SVE2_128, SVE_256 and the rest), and the training
# example with 2 threads. --all runs the whole ctest suite of the cross build (every test,
# every target, the examples, the install consumer) at 512 bits, then the kernel tests and
# primitives at 128, 256 and 2048 bits.
#
# Emulation says nothing about speed: qemu translates every vector instruction, so timings
# under it are not those of any Arm core.
set -euo pipefail
cd "$(dirname "$0")/.."
all=0
case "${1:-}" in
  "") ;;
  --all) all=1 ;;
  *) echo "usage: bash scripts/arm.sh [--all]" >&2; exit 2 ;;
esac

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The cross compiler, qemu-user, and Highway and GoogleTest for arm64 (multiarch: the
# arm64 packages install beside the host's, under /usr/lib/aarch64-linux-gnu).
missing=()
command -v aarch64-linux-gnu-g++ > /dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static > /dev/null || missing+=(qemu-user-static)
for package in libhwy-dev:arm64 libgtest-dev:arm64 libc6:arm64; do
  dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "ok installed" ||
    missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "msda arm: installing Debian packages: ${missing[*]}"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    as_root dpkg --add-architecture arm64
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

build=${MSDA_ARM_BUILD_DIR:-build-arm}
jobs=$(nproc)
start=$SECONDS
cmake -S . -B "$build" -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
  -DCMAKE_BUILD_TYPE=Release -DMSDA_WERROR=ON -DMSDA_BUILD_TESTS=ON -DMSDA_BUILD_EXAMPLES=ON
cmake --build "$build" -j "$jobs"
echo "msda arm: cross build took $((SECONDS - start)) s"

emulate=cmake/qemu-aarch64.sh
# qemu-user CPUs: "max" has NEON, SVE and SVE2; its SVE vector length is set in bytes.
cpu_128="max,sve-default-vector-length=16"
cpu_256="max,sve-default-vector-length=32"
cpu_512="max,sve-default-vector-length=64"
cpu_2048="max,sve-default-vector-length=256"

# The kernel tests: msda_tests less the host-side ones (validation, executors, thread
# settings and errors do not depend on the SIMD target), as tests/cpp/CMakeLists.txt picks
# them for its per-target runs.
kernel_tests="-Workspace.*:Validation.*:ThreadSetting.*:Executor.*:ErrorCatalogue.*:Describe.*"
kernel_tests+=":Api.*"
# The subset leaves out the tests that take over 10 s each emulated (a run of the rest takes
# under a minute): the 3000-query envelope shapes, the backward's many-contributions and
# several-reduction-passes cases, the by-head/counting-sort comparison at whole-vector dims,
# and the across-thread-count determinism test except in fp32.
subset_tests="${kernel_tests}:*ThreeThousandQueries*:BackwardEnvelope.ManyContributionsPerQuery"
subset_tests+=":*BackwardDeterminism.SeveralReductionPasses/*"
subset_tests+=":*BackwardWholeVectorDims.ByHeadAgreesWithCountingSort*"
subset_tests+=":*CollidingQueriesAcrossThreadCounts/BF16:*CollidingQueriesAcrossThreadCounts/F16"
subset_tests+=":*CollidingQueriesAcrossThreadCounts/F64"

# The best target qemu's CPU offers at that vector length, e.g. SVE2_128 at 128 bits.
best_target() {
  MSDA_QEMU_CPU=$1 "$emulate" "$build/tests/cpp/simd_targets_probe" | cut -d';' -f1
}

# Runs a gtest binary under one emulated CPU, target and thread count, and prints one line;
# a failed run leaves its log in $failed (runs go two at a time, in subshells).
failed=$(mktemp -d)
run_tests() {
  local cpu=$1 target=$2 threads=$3 binary=$4 filter=$5
  local name="$binary.$target.$threads-threads.cpu-$cpu" t0=$SECONDS
  if MSDA_QEMU_CPU=$cpu MSDA_SIMD_TARGET=$target MSDA_NUM_THREADS=$threads \
    "$emulate" "$build/tests/cpp/$binary" --gtest_filter="$filter" --gtest_brief=1 \
    > "$failed/$name" 2>&1; then
    echo "msda arm: $binary on $target (cpu $cpu, $threads threads):" \
      "$(grep -o '[0-9]* tests\? from [0-9]* test suites\? ran' "$failed/$name")," \
      "passed in $((SECONDS - t0)) s"
    rm "$failed/$name"
  else
    echo "msda arm: FAILED: $binary on $target (cpu $cpu, $threads threads)"
    cat "$failed/$name"
  fi
}

start=$SECONDS
if [ "$all" = 1 ]; then
  MSDA_QEMU_CPU=$cpu_512 ctest --test-dir "$build" --output-on-failure -j "$jobs" ||
    touch "$failed/ctest"
  for cpu in "$cpu_128" "$cpu_256" "$cpu_2048"; do
    target=$(best_target "$cpu")
    run_tests "$cpu" "$target" 1 msda_tests "$kernel_tests" &
    run_tests "$cpu" "$target" 2 msda_tests "$kernel_tests" &
    wait
    run_tests "$cpu" "$target" 2 simd_primitives_test "*"
  done
else
  # Two runs at a time, one per core; each waits for the pair before the next.
  for target in SVE2 SVE NEON; do
    run_tests "$cpu_512" "$target" 1 msda_tests "$subset_tests" &
    run_tests "$cpu_512" "$target" 2 msda_tests "$subset_tests" &
    wait
  done
  for cpu in "$cpu_128" "$cpu_256" "$cpu_512"; do
    run_tests "$cpu" "$(best_target "$cpu")" 2 simd_primitives_test "*"
  done
  # The example that once stalled with two threads: it must train and exit.
  MSDA_QEMU_CPU=$cpu_512 MSDA_NUM_THREADS=2 "$emulate" "$build/examples/simu_one_layer" \
    --queries 300 --epochs 4 | tail -1 || touch "$failed/simu_one_layer"
fi
echo "msda arm: emulated tests took $((SECONDS - start)) s"
if [ -n "$(ls -A "$failed")" ]; then
  echo "msda arm: failed: $(ls "$failed" | tr '\n' ' ')" >&2
  exit 1
fi
rmdir "$failed"
echo "msda arm: all passed"
