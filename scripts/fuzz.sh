#!/usr/bin/env bash
# Fuzzes the C API with libFuzzer under ASan and UBSan.
#   bash scripts/fuzz.sh            # 60 s smoke run (part of scripts/test.sh)
#   bash scripts/fuzz.sh 600        # as long as asked, in seconds
# New inputs that reach new code go to build-fuzz/corpus; the committed seeds stay untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

if ! command -v clang++ > /dev/null || ! ls "$(clang++ -print-resource-dir 2>/dev/null)"/lib/linux/libclang_rt.fuzzer-*.a > /dev/null 2>&1; then
  echo "msda fuzz: installing clang and its runtime"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev
fi

build=build-fuzz
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DMSDA_SANITIZE=address,undefined -DMSDA_BUILD_FUZZ=ON -DMSDA_BUILD_TESTS=OFF \
  -DMSDA_BUILD_EXAMPLES=OFF -DMSDA_WERROR=ON > /dev/null
cmake --build "$build" --target fuzz_api
mkdir -p "$build/corpus"
# One worker thread count per input is chosen by the fuzzer; leak checks stay on.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$build/tests/fuzz/fuzz_api" -max_total_time="$seconds" -max_len=4096 -timeout=20 \
  -print_final_stats=1 -artifact_prefix="$build/" "$build/corpus" tests/fuzz/corpus
