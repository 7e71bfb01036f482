# Cross-compiling msda for aarch64 Linux with Debian's toolchain (g++-aarch64-linux-gnu) and
# its multiarch arm64 libraries (libhwy-dev:arm64, libgtest-dev:arm64); scripts/arm.sh installs
# them and uses this file:
#   cmake -S . -B build-arm -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
# Tests, the configure-time target probe and the examples run under qemu-user through
# cmake/qemu-aarch64.sh; MSDA_QEMU_CPU (default "max": NEON, SVE and SVE2 at 512 bits) picks
# the emulated CPU when they run, e.g. "max,sve-default-vector-length=16" for 128-bit SVE.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Headers and CMake packages of the arm64 multiarch libraries live under the host's /usr;
# the host's programs (cmake, python) are still found on PATH.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_CROSSCOMPILING_EMULATOR ${CMAKE_CURRENT_LIST_DIR}/qemu-aarch64.sh)
