"""Whole-model time of every transformers family msda.nn.patch_transformers serves: patched
(msda's op) against unpatched (transformers' grid_sample path) on the small random-init models of
tests/python/_hf_families.py, forward and forward + backward, interleaved repeats in one run,
medians. Prints a markdown table; ratio < 1 means msda is faster. The A/A columns time a second
unpatched copy of the model against the first in the same rounds: how far apart two identical
models measure here (memory placement, noise), the yardstick for the patched ratio.

    python bench/bench_families.py [--repeats N] [--families A,B] [--threads N] [--image N]
"""
import argparse
import copy
import inspect
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import _hf_families  # noqa: E402

import msda  # noqa: E402
import msda.nn as mnn  # noqa: E402

V2_FAMILIES = ("RTDetrV2", "DFine", "Deimv2")


def _scalar(output):
    if isinstance(output, torch.Tensor):
        return output.float().sum() if output.is_floating_point() and output.requires_grad else 0
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return sum(_scalar(o) for o in output)
    return 0


def _clear_caches(model):
    for attribute in vars(model).values():  # OmDetTurbo's text-embedding caches
        cache = getattr(attribute, "cache", None)
        if isinstance(cache, dict):
            cache.clear()
            if hasattr(attribute, "current_load"):  # The LRU's own count of its entries.
                attribute.current_load = 0


def _time(model, inputs, backward):
    _clear_caches(model)
    start = time.perf_counter()
    if backward:
        model.zero_grad(set_to_none=True)
        _scalar(model(**inputs)).backward()
    else:
        with torch.no_grad():
            model(**inputs)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--families", default=",".join(sorted(_hf_families.FAMILIES)))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--image", type=int, default=_hf_families.IMAGE,
                        help="image side (the tests' models use 64)")
    args = parser.parse_args()
    _hf_families.IMAGE = args.image
    if args.threads:
        torch.set_num_threads(args.threads)
    has_v2 = "num_points_list" in inspect.signature(msda.ms_deform_attn).parameters
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image "
          f"{_hf_families.IMAGE}x{_hf_families.IMAGE}, batch 2, median of {args.repeats}")
    print()
    print("| family | forward unpatched (ms) | forward msda (ms) | ratio | A/A | "
          "fwd+bwd unpatched (ms) | fwd+bwd msda (ms) | ratio | A/A |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family in args.families.split(","):
        if family in V2_FAMILIES and not has_v2:
            print(f"| {family} | n/a (msda.ms_deform_attn without num_points_list) |||||||||")
            continue
        torch.manual_seed(0)
        plain, inputs = _hf_families.FAMILIES[family]()
        plain.eval()
        patched = copy.deepcopy(plain)
        twin = copy.deepcopy(plain)  # The A/A control: never patched.
        # The per-model patch swaps kernel modules and stored functions; module-level functions
        # (Mask2Former, OneFormer, RT-DETRv2) are process-wide, so they are patched and undone
        # around each patched call instead.
        mnn.patch_transformers(patched)
        mnn.unpatch_transformers()
        times = {k: [] for k in ("f0", "f1", "f2", "b0", "b1", "b2")}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for backward, key in ((False, "f"), (True, "b")):
                t0 = _time(plain, inputs, backward)
                mnn.patch_transformers(patched)
                t1 = _time(patched, inputs, backward)
                mnn.unpatch_transformers()
                t2 = _time(twin, inputs, backward)
                if repeat:
                    times[key + "0"].append(t0)
                    times[key + "1"].append(t1)
                    times[key + "2"].append(t2)
        m = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {family} | {m['f0']:.1f} | {m['f1']:.1f} | {m['f1'] / m['f0']:.2f} | "
              f"{m['f2'] / m['f0']:.2f} | {m['b0']:.1f} | {m['b1']:.1f} | "
              f"{m['b1'] / m['b0']:.2f} | {m['b2'] / m['b0']:.2f} |")


if __name__ == "__main__":
    main()
