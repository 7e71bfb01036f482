#!/usr/bin/env bash
# Runs an aarch64 program under qemu-user (CMAKE_CROSSCOMPILING_EMULATOR of
# cmake/aarch64-linux-gnu.cmake). MSDA_QEMU_CPU picks the emulated CPU (default "max").
#
# The program is started through the multiarch loader, /lib/ld-linux-aarch64.so.1 of
# libc6:arm64, which matches the libc.so.6 that the arm64 libraries (libstdc++6:arm64, ...)
# resolve to. qemu's "-L /usr/aarch64-linux-gnu" would pick the cross toolchain's loader
# instead, with another glibc build's libc.so.6 beside it: under that pair the first
# pthread_create never returns, which is how a threaded run looked like a stalled pool.
set -euo pipefail
exec qemu-aarch64-static -cpu "${MSDA_QEMU_CPU:-max}" /lib/ld-linux-aarch64.so.1 "$@"
