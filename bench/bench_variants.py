#!/usr/bin/env python3
"""The operator variants (points per level, discrete sampling) side by side, in one process:
msda's time per sampling point with equal counts, unequal counts and the discrete method, and
the pure-PyTorch function the models themselves call (transformers'
``multi_scale_deformable_attention_v2``, RT-DETRv2 / D-FINE / DEIMv2), forward and
forward + backward, median of interleaved repeats.

    python bench/bench_variants.py                 # D-FINE-like decoder: 300 queries, 3 levels
    python bench/bench_variants.py --queries 8400 --repeats 9 --threads 1

Shape: batch 1 (--batch), 8 heads of 32 dims, a 640x640 image's strides 8/16/32 (80x80,
40x40, 20x20), locations a few pixels around random reference points (realistic).
"""
import argparse
import statistics
import time

import torch

import msda
import msda.ops


def _inputs(batch, queries, counts, heads=8, dims=32, levels=((80, 80), (40, 40), (20, 20)),
            seed=0):
    g = torch.Generator().manual_seed(seed)
    K = sum(h * w for h, w in levels)
    N = sum(counts)
    value = torch.randn(batch, K, heads, dims, generator=g)
    ref = torch.rand(batch, queries, 1, 1, 2, generator=g)
    sizes = torch.tensor([[levels[l][1], levels[l][0]] for l, c in enumerate(counts)
                          for _ in range(c)], dtype=torch.float32)
    offsets = torch.randn(batch, queries, heads, N, 2, generator=g) * 2.0 / sizes
    loc = (ref + offsets).clamp(-0.05, 1.05)
    attn = torch.rand(batch, queries, heads, N, generator=g).softmax(-1)
    return value, torch.tensor(levels), loc, attn


def _time(fn, repeats):
    fn()  # Warm-up.
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.models.rt_detr_v2.modeling_rt_detr_v2 import (
        multi_scale_deformable_attention_v2 as hf_v2,
    )

    cases = [("equal [4,4,4]", [4, 4, 4], "default"), ("unequal [3,6,3]", [3, 6, 3], "default"),
             ("unequal [2,8,2]", [2, 8, 2], "default"), ("discrete [3,6,3]", [3, 6, 3],
                                                         "discrete")]
    runs = {}
    for name, counts, method in cases:
        value, ss, loc, attn = _inputs(args.batch, args.queries, counts)
        lsi = msda.ops.level_start_index(ss)
        shapes_list = [tuple(r) for r in ss.tolist()]

        def ours(backward, value=value, ss=ss, lsi=lsi, loc=loc, attn=attn, counts=counts,
                 method=method):
            v, l_, a = (t.detach().requires_grad_(backward) for t in (value, loc, attn))
            out = msda.ms_deform_attn(v, ss, lsi, l_, a, num_points_list=counts, method=method)
            if backward:
                out.sum().backward()

        def theirs(backward, value=value, loc=loc, attn=attn, counts=counts, method=method):
            v, l_, a = (t.detach().requires_grad_(backward) for t in (value, loc, attn))
            out = hf_v2(v, shapes_list, l_, a, counts, method)
            if backward:
                out.sum().backward()

        runs[name] = (ours, theirs, args.batch * args.queries * 8 * sum(counts))
    # Interleaved: each repeat runs every case once, so drift hits all alike.
    results = {(name, impl, mode): [] for name in runs for impl in ("msda", "hf") for mode in
               (False, True)}
    for _ in range(args.repeats):
        for name, (ours, theirs, _) in runs.items():
            for mode in (False, True):
                results[(name, "msda", mode)] += _time(lambda: ours(mode), 1)
                results[(name, "hf", mode)] += _time(lambda: theirs(mode), 1)
    print(f"batch {args.batch}, queries {args.queries}, 8 heads x 32 dims, maps 80x80/40x40/20x20, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved runs")
    print()
    print("| case | pass | msda ms | ns per point | transformers v2 ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, (_, _, points) in runs.items():
        for mode in (False, True):
            ours = statistics.median(results[(name, "msda", mode)])
            theirs = statistics.median(results[(name, "hf", mode)])
            print(f"| {name} | {'fwd+bwd' if mode else 'fwd'} | {ours * 1e3:.3f} | "
                  f"{ours / points * 1e9:.1f} | {theirs * 1e3:.3f} | {theirs / ours:.1f}x |")


if __name__ == "__main__":
    main()
