#!/usr/bin/env bash
# Runs the C++ test suite under sanitizers, with clang.
#   bash scripts/sanitize.sh address     # ASan + UBSan, every test (CI runs this)
#   bash scripts/sanitize.sh thread      # TSan, the threaded tests
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-address}
bash scripts/setup.sh
if ! command -v clang++ > /dev/null; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev
fi

case "$kind" in
  address)
    sanitize=address,undefined
    filter=()
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    ;;
  thread)
    sanitize=thread
    # The tests that run several threads: determinism over thread counts, concurrent callers,
    # the pool's fallback and parallel runners (Pool.IdleWorkersExit counts the process's
    # threads, and TSan adds one of its own).
    filter=(-R "Thread|Concurren|Determinis|Pool\.(Refused|Parallel)")
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
    ;;
  *)
    echo "usage: $0 [address|thread]" >&2
    exit 2
    ;;
esac

build=build-$kind
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMSDA_SANITIZE="$sanitize" \
  -DMSDA_BUILD_TESTS=ON -DMSDA_BUILD_EXAMPLES=ON -DMSDA_WERROR=ON > /dev/null
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "${filter[@]}"
echo "msda: sanitizer run ($kind) passed"
