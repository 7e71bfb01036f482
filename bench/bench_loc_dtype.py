#!/usr/bin/env python3
"""Half-precision sampling locations against fp32 locations, side by side.

    python bench/bench_loc_dtype.py [--shapes encoder,decoder] [--repeats N] [--threads N]

A model cast with ``model.to(torch.bfloat16)`` (or float16) hands msda half-typed value,
attention weights *and* sampling locations; a mixed-precision model keeps the locations in
fp32. For value in bf16 and in fp16, this times msda's forward and backward (all three
gradients, through ``msda.ms_deform_attn_backward``) with locations in the value's half type
and in fp32, interleaved round-robin in one process, median of --repeats samples after a
warm-up, and prints the ratio half / fp32 per pass. Target: at most 1.2x.

Shapes as in bench/bench_torch.py (realistic locations: a reference point per query plus
offsets of a few pixels): encoder B=1 Q=20197, decoder B=1 Q=900, both K=20197 H=8 L=4 P=4
D=32.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch

import msda

LEVELS = [(100, 152), (50, 76), (25, 38), (13, 19)]
SHAPES = {"encoder": 20197, "decoder": 900}
H, P, D = 8, 4, 32
TARGET = 1.2


def inputs(queries, dtype, loc_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = len(LEVELS)
    ss = torch.tensor(LEVELS, dtype=torch.int64)
    lsi = msda.level_start_index(ss)
    keys = int((ss[:, 0] * ss[:, 1]).sum())
    value = torch.randn(1, keys, H, D, generator=g).to(dtype)
    ref = torch.rand(1, queries, 1, 1, 1, 2, generator=g)
    scale = 2.0 / torch.tensor([[w, h] for h, w in LEVELS], dtype=torch.float32)
    loc = ref + scale.view(1, 1, 1, L, 1, 2) * torch.randn(1, queries, H, L, P, 2, generator=g)
    attn = torch.rand(1, queries, H, L, P, generator=g).div(L * P).to(dtype)
    grad = torch.randn(1, queries, H * D, generator=g).to(dtype)
    return value, ss, lsi, loc.to(loc_dtype), attn, grad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default="encoder,decoder")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cases = {}
    for shape in args.shapes.split(","):
        for dtype in (torch.bfloat16, torch.float16):
            for loc_dtype in (dtype, torch.float32):
                cases[(shape, dtype, loc_dtype)] = inputs(SHAPES[shape], dtype, loc_dtype)

    def forward(c):
        msda.ms_deform_attn(*c[:5])

    def backward(c):
        msda.ms_deform_attn_backward(*c)

    passes = {"forward": forward, "backward": backward}
    samples = {(k, name): [] for k in cases for name in passes}
    with torch.no_grad():
        for rep in range(args.repeats + 1):  # Round 0 warms up.
            for k, c in cases.items():
                for name, fn in passes.items():
                    t0 = time.perf_counter()
                    fn(c)
                    if rep > 0:
                        samples[(k, name)].append(time.perf_counter() - t0)

    load = os.getloadavg()[0]
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"torch {torch.__version__}, msda {msda.__version__}, load average {load:.2f} after "
          f"the run; median of {args.repeats} interleaved samples.\n")
    print("| shape | value dtype | pass | half locations ms | fp32 locations ms | half / fp32 |")
    print("|---|---|---|---:|---:|---:|")
    worst = 0.0
    for shape in args.shapes.split(","):
        for dtype in (torch.bfloat16, torch.float16):
            for name in passes:
                half = statistics.median(samples[((shape, dtype, dtype), name)])
                full = statistics.median(samples[((shape, dtype, torch.float32), name)])
                worst = max(worst, half / full)
                print(f"| {shape} | {str(dtype)[6:]} | {name} | {half * 1e3:.2f} | "
                      f"{full * 1e3:.2f} | {half / full:.2f}x |")
    verdict = "met" if worst <= TARGET else "not met"
    print(f"\ntarget: half-precision locations <= {TARGET}x the time of fp32 locations, forward "
          f"and backward; measured worst {worst:.2f}x: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
