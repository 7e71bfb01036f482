#!/usr/bin/env python3
"""msda next to PyTorch's threads: the attention step right after a PyTorch op.

    python bench/bench_threads.py [--repeats N] [--threads N]

PyTorch's CPU builds run their intra-op parallelism on an OpenMP team whose threads spin
for a while after each parallel op, waiting for the next one. A model calls msda between
such ops. This times msda's forward and backward (all gradients) right after a
``torch.mm`` (each sample: one mm, then the msda call, timed alone), and for comparison with
nothing before it, in three modes:

* ``pool``: msda's own thread pool (``msda._C.forward(..., openmp=False)``, what
  ``msda.numpy`` does);
* ``openmp``: the sections on PyTorch's OpenMP team (``openmp=True``, what the torch op
  does where PyTorch's backend is OpenMP);
* ``1 thread``: the caller alone.

Shapes: a tiny decoder call (Q=8, H=2, D=8, P=2, the test models' size), a small one
(Q=300, H=8, D=32, P=4) and Q=1000, on a 3-level map of a 128x128 image (16x16, 8x8, 4x4),
batch 2. Candidates are interleaved round-robin; medians.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import msda
import msda.numpy as mnp
from msda import _C

LEVELS = ((16, 16), (8, 8), (4, 4))
SHAPES = {  # name: (B, Q, H, D, P)
    "tiny Q=8": (2, 8, 2, 8, 2),
    "small Q=300": (2, 300, 8, 32, 4),
    "Q=1000": (2, 1000, 8, 32, 4),
}


def arrays(shape, seed=0):
    B, Q, H, D, P = shape
    rng = np.random.default_rng(seed)
    ss = np.array(LEVELS, np.int64)
    lsi = mnp.level_start_index(ss)
    K = int((ss[:, 0] * ss[:, 1]).sum())
    L = len(LEVELS)
    v = rng.standard_normal((B, K, H, D)).astype(np.float32)
    loc = rng.random((B, Q, H, L, P, 2)).astype(np.float32)
    a = rng.random((B, Q, H, L, P)).astype(np.float32)
    g = rng.standard_normal((B, Q, H * D)).astype(np.float32)
    out = np.empty((B, Q, H * D), np.float32)
    grads = [np.empty_like(x) for x in (v, loc, a)]
    return v, ss, lsi, loc, a, g, out, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    big = torch.randn(256, 256)
    modes = {"pool": (args.threads, False), "openmp": (args.threads, True), "1 thread": (1, False)}
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({args.threads} threads, OpenMP runtime {_C.openmp_runtime()}), msda "
          f"{msda.__version__}, load average {os.getloadavg()[0]:.2f} before the run; median of "
          f"{args.repeats} interleaved samples.\n")
    print("| shape | before the call | pass | pool us | openmp us | 1 thread us | "
          "openmp / pool |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, shape in SHAPES.items():
        v, ss, lsi, loc, a, g, out, grads = arrays(shape)
        samples = {}
        for rep in range(args.repeats + 1):
            for before in ("torch.mm", "nothing"):
                for mode, (threads, openmp) in modes.items():
                    for pass_name in ("forward", "backward"):
                        if before == "torch.mm":
                            torch.mm(big, big)
                        t0 = time.perf_counter()
                        if pass_name == "forward":
                            _C.forward(v, ss, lsi, loc, a, out, threads, None, False, openmp)
                        else:
                            _C.backward(v, ss, lsi, loc, a, g, *grads, threads, None, False,
                                        openmp)
                        if rep:
                            samples.setdefault((before, mode, pass_name), []).append(
                                time.perf_counter() - t0)
        for before in ("torch.mm", "nothing"):
            for pass_name in ("forward", "backward"):
                us = {m: statistics.median(samples[(before, m, pass_name)]) * 1e6 for m in modes}
                print(f"| {name} | {before} | {pass_name} | {us['pool']:.1f} | "
                      f"{us['openmp']:.1f} | {us['1 thread']:.1f} | "
                      f"{us['openmp'] / us['pool']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
