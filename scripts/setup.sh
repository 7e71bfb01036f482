#!/usr/bin/env bash
# Installs what msda needs to build and test on a fresh Debian machine, skipping what is there.
# Sourced by run_example.sh and test.sh; safe to run again.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v g++ > /dev/null || missing+=(g++)
command -v cmake > /dev/null || missing+=(cmake)
command -v ninja > /dev/null || missing+=(ninja-build)
# The host's own builds of the libraries: headers alone may come from another architecture's
# package (scripts/arm.sh installs the arm64 ones, multiarch, beside the host's).
native_package() {
  dpkg-query -W -f='${Status}' "$1:$(dpkg --print-architecture)" 2> /dev/null |
    grep -q "ok installed"
}
native_package libgtest-dev || missing+=(libgtest-dev)
native_package libhwy-dev || missing+=(libhwy-dev)  # Google Highway: SIMD dispatch.
command -v python3 > /dev/null || missing+=(python3 python3-pip python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "msda setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# CMake >= 3.25 is needed; Debian 12 has 3.25, older systems get it from PyPI.
cmake_version=$(cmake --version | head -1 | awk '{print $3}')
if [ "$(printf '%s\n3.25\n' "$cmake_version" | sort -V | head -1)" != "3.25" ]; then
  python3 -m pip install -q "cmake>=3.25"
fi
