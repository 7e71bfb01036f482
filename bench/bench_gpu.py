#!/usr/bin/env python3
"""msda's Triton kernels against the grid_sample composition on a GPU, side by side.

For each standard shape (bench/bench_torch.py's) it times, with CUDA events (median of
--repeats after warm-up runs), the forward and the forward + backward of
  * msda's Triton kernels (what torch.ops.msda.ms_deform_attn runs on CUDA tensors), with the
    backward's atomic adds and in its deterministic mode,
  * the grid_sample composition (Deformable DETR's pure-PyTorch path),
measures each one's peak memory (torch.cuda.max_memory_allocated above the inputs), and
reports the forward's achieved bandwidth (the bytes it must move: value, locations, weights
read once, output written once) against a device-to-device copy timed in the same run.

    python bench/bench_gpu.py                    # every shape, float32
    python bench/bench_gpu.py --shapes encoder --repeats 20 --dtype bfloat16
    python bench/bench_gpu.py --smoke            # tiny shapes, any device (the interpreter
                                                 # on CPU tensors): checks the script runs
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import SHAPES, make_inputs, torch_path  # noqa: E402

SMOKE_SHAPES = {"smoke": (1, 40, 2, 2, 8, [(6, 5), (3, 3)])}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, repeats, warmup):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def peak_mib(fn, device):
    if device.type != "cuda":
        return float("nan")
    _sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth(device, repeats):
    """GB/s of a device-to-device copy of 1 GiB (read + write counted)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(2**28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, repeats, 3)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def bench_shape(name, shape, dtype, device, repeats, warmup):
    import msda.triton as mt

    v, ss, lsi, loc, attn, grad_out = (t.to(device) for t in make_inputs(torch, shape))
    v, attn, grad_out = v.to(dtype), attn.to(dtype), grad_out.to(dtype)
    forward_bytes = sum(t.numel() * t.element_size() for t in (v, loc, attn))
    forward_bytes += grad_out.numel() * grad_out.element_size()  # The output.

    # msda.triton's entries: on CUDA tensors the kernels torch.ops.msda.ms_deform_attn runs,
    # and on CPU tensors still the Triton kernels (under the interpreter).
    def msda_forward():
        return mt.ms_deform_attn(v, ss, lsi, loc, attn)

    def torch_forward():
        return torch_path(torch, v, ss, lsi, loc, attn)

    def msda_step(deterministic):
        def run():
            mt.set_deterministic(deterministic)
            try:
                return mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
            finally:
                mt.set_deterministic(None)
        return lambda: (msda_forward(), run())

    leaves = [t.detach().requires_grad_(True) for t in (v, loc, attn)]

    def torch_step():
        out = torch_path(torch, leaves[0], ss, lsi, leaves[1], leaves[2])
        return torch.autograd.grad(out, leaves, grad_out)

    rows = []
    for impl, mode, fn in (("msda", "forward", msda_forward),
                           ("torch", "forward", torch_forward),
                           ("msda", "forward+backward", msda_step(False)),
                           ("msda deterministic", "forward+backward", msda_step(True)),
                           ("torch", "forward+backward", torch_step)):
        ms = time_ms(fn, device, repeats, warmup)
        rows.append((name, impl, mode, ms, peak_mib(fn, device)))
    return rows, forward_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        shapes, repeats, warmup = SMOKE_SHAPES, 1, 0
    else:
        shapes = {n: SHAPES[n] for n in args.shapes.split(",")}
        repeats, warmup = args.repeats, 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("bench_gpu: no GPU; run with TRITON_INTERPRET=1 --smoke to check the script")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)"
    copy = copy_bandwidth(device, max(repeats, 5))
    print(f"# {name}, {args.dtype}, torch {torch.__version__}; device copy {copy:.0f} GB/s")
    print(f"{'shape':<11} {'impl':<19} {'mode':<17} {'ms':>9} {'peak MiB':>9}  vs torch")
    for shape_name, shape in shapes.items():
        rows, forward_bytes = bench_shape(shape_name, shape, dtype, device, repeats, warmup)
        torch_ms = {mode: ms for _, impl, mode, ms, _ in rows if impl == "torch"}
        for _, impl, mode, ms, peak in rows:
            ratio = torch_ms[mode] / ms
            print(f"{shape_name:<11} {impl:<19} {mode:<17} {ms:9.3f} {peak:9.1f}  {ratio:6.2f}x")
        fwd = next(ms for _, impl, mode, ms, _ in rows if impl == "msda" and mode == "forward")
        gbs = forward_bytes / (fwd * 1e-3) / 1e9
        det = {impl: ms for _, impl, mode, ms, _ in rows if mode == "forward+backward"}
        print(f"{shape_name:<11} msda forward moves {forward_bytes / 2**20:.1f} MiB: {gbs:.0f} GB/s, "
              f"{100 * gbs / copy:.0f}% of the copy; deterministic step "
              f"{det['msda deterministic'] / det['msda']:.2f}x the atomic one")


if __name__ == "__main__":
    main()
