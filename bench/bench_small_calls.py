#!/usr/bin/env python3
"""Per-call cost of msda's small calls against PyTorch's own dispatch floor, in one process.

The one-query call (B=1 Q=1 H=8 D=32, one 8x8 level, P=4, float32, locations in (0, 1)) on
1 thread through each entry: the C API through the binding on preallocated NumPy arrays
(msda._C.forward), msda.numpy.ms_deform_attn, the torch op's forward on tensors that do not
require grad, and forward + backward through autograd (with the C++ autograd node where
msda/_torch_ops.so is loaded, and with the Python one); next to two PyTorch baselines timed in
the same loop (torch.add on small tensors, a trivial autograd round trip), so the figures can
be read against this machine's dispatch cost. Then the decoder layer's forward (Q=900, four
levels 100x152 .. 13x19), msda's torch op against the pure-PyTorch grid_sample composition of
Deformable DETR, at 1 and 2 threads, with value evicted from the caches by the composition (the
target's figure), just produced by a Linear as in a model, and warm from msda's previous call.

Every candidate is timed in round-robin over all of them (interleaved repeats, after a
warm-up round), with glibc told to keep freed blocks of up to 32 MiB in the heap (mallopt) so
that no candidate's page faults depend on the process's allocator state; one sample of a small call is the mean of --number back-to-back calls, one
sample of the decoder is one call; the figures are medians over the samples.

    python bench/bench_small_calls.py [--repeats N] [--number N] [--markdown]
"""
import argparse
import inspect
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import SHAPES, describe, make_inputs, torch_path  # noqa: E402

import msda  # noqa: E402
import msda.numpy as mnp  # noqa: E402
import msda.ops  # noqa: E402,F401
from msda import _C  # noqa: E402

# The torch op runs on torch.get_num_threads() threads; a num_threads keyword, where the
# installed msda has one, is passed as well.
_HAS_THREADS_KW = "num_threads" in inspect.signature(msda.ms_deform_attn).parameters


def op_kwargs(threads):
    return {"num_threads": threads} if _HAS_THREADS_KW else {}


SMALL = (1, 1, 8, 4, 32, [(8, 8)])  # (batch, queries, heads, points, dims, levels)
TARGET_FORWARD_US = 15.0
TARGET_AUTOGRAD_US = 60.0
TARGET_DECODER_SPEEDUP = 15.0
# The autograd row is the node the install uses: C++ where msda/_torch_ops.so is loaded.
AUTOGRAD = "torch op forward+backward (autograd)"
AUTOGRAD_PYTHON_NODE = "same, Python autograd.Function node"


def small_inputs():
    value, ss, lsi, loc, attn, grad = make_inputs(torch, SMALL)
    # Reference point plus offsets of a few pixels, kept inside (0, 1) as the issue asks.
    loc = loc.clamp(0.01, 0.99).contiguous()
    return value, ss, lsi, loc, attn, grad


def small_candidates():
    """name -> a zero-argument callable making one call."""
    value, ss, lsi, loc, attn, grad = small_inputs()
    np_args = [t.numpy().copy() for t in (value, ss, lsi, loc, attn)]
    np_out = np.empty((1, 1, 8 * 32), dtype=np.float32)

    def c_api():
        _C.forward(np_args[0], np_args[1], np_args[2], np_args[3], np_args[4], np_out, 1)

    def numpy_entry():
        mnp.ms_deform_attn(*np_args, num_threads=1)

    kw = op_kwargs(1)

    def torch_forward():
        msda.ms_deform_attn(value, ss, lsi, loc, attn, **kw)

    gv, gl, ga = (t.clone().requires_grad_(True) for t in (value, loc, attn))

    def torch_autograd():
        gv.grad = gl.grad = ga.grad = None
        msda.ms_deform_attn(gv, ss, lsi, gl, ga, **kw).backward(grad)

    # The same with the Python autograd.Function node, where the C++ node is loaded (see
    # docs/python.md: msda/_torch_ops.so), for the side-by-side figure.
    eager_op = getattr(msda.ops, "_eager_op", None)

    def torch_autograd_python_node():
        msda.ops._eager_op = None
        try:
            torch_autograd()
        finally:
            msda.ops._eager_op = eager_op

    a, b = torch.randn(4), torch.randn(4)

    def add():
        torch.add(a, b)

    x = torch.randn(4, requires_grad=True)

    def trivial_autograd():
        x.grad = None
        (x * 1).sum().backward()

    # The C API and the torch op agree (a cheap check that each candidate does the work).
    c_api()
    ref = msda.ms_deform_attn(value, ss, lsi, loc, attn).numpy()
    np.testing.assert_allclose(np_out, ref, rtol=1e-5, atol=1e-6)
    candidates = {
        "C API (msda._C.forward, NumPy)": c_api,
        "msda.numpy.ms_deform_attn": numpy_entry,
        "torch op forward (no grad)": torch_forward,
        AUTOGRAD: torch_autograd,
    }
    if eager_op is not None:
        candidates[AUTOGRAD_PYTHON_NODE] = torch_autograd_python_node
    candidates["baseline: torch.add (4 elements)"] = add
    candidates["baseline: (x * 1).sum().backward() (4 elements)"] = trivial_autograd
    return candidates


def time_small(candidates, repeats, number):
    samples = {name: [] for name in candidates}
    for repeat in range(repeats + 1):  # The first round warms up.
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed = (time.perf_counter() - start) / number
            if repeat:
                samples[name].append(elapsed * 1e6)
    return {name: statistics.median(s) for name, s in samples.items()}


def time_decoder(repeats, thread_counts):
    """The decoder's forward, msda against the composition, in three cache states of value:
    right after the composition ran (which evicts it: the target's figure); right after a
    Linear produced it, as the value projection does in a model (value_proj then the op); and
    right after msda's own previous call (warm)."""
    value, ss, lsi, loc, attn, _ = make_inputs(torch, SHAPES["decoder"])
    keys, heads, dims = value.shape[1:]
    g = torch.Generator().manual_seed(7)
    memory = torch.randn(1, keys, heads * dims, generator=g)
    value_proj = torch.nn.Linear(heads * dims, heads * dims)
    kw = {}
    impls = {
        "msda": lambda v: msda.ms_deform_attn(v, ss, lsi, loc, attn, **kw),
        "torch": lambda v: torch_path(torch, v, ss, lsi, loc, attn),
    }
    kinds = ("msda", "torch", "msda projected", "msda warm")
    with torch.no_grad():
        diff = (impls["msda"](value) - impls["torch"](value)).abs().max().item()
        samples = {(t, kind): [] for t in thread_counts for kind in kinds}
        for repeat in range(repeats + 1):
            for threads in thread_counts:
                torch.set_num_threads(threads)  # The torch op runs msda on as many threads.
                kw.clear()
                kw.update(op_kwargs(threads))
                times = {}
                for kind in ("torch", "msda", "msda warm"):
                    start = time.perf_counter()
                    impls[kind.split()[0]](value)
                    times[kind] = time.perf_counter() - start
                projected = value_proj(memory).view_as(value)
                start = time.perf_counter()
                impls["msda"](projected)
                times["msda projected"] = time.perf_counter() - start
                del projected
                if repeat:
                    for kind, t in times.items():
                        samples[(threads, kind)].append(t * 1e3)
    torch.set_num_threads(1)
    return {k: statistics.median(s) for k, s in samples.items()}, diff


def keep_freed_blocks():
    """glibc only: blocks of up to 32 MiB come from the heap and freed memory stays there, so
    that after the warm-up neither candidate pays page faults for its outputs and temporaries.
    Left to glibc's adaptive thresholds, the composition's 30-60 MB of temporaries are fresh
    pages in some processes and not in others (28 against 38 ms, 8000 faults a call), and
    the ratio with them. Returns whether it applied."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and
                    libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def python_loop_ms():
    """A fixed pure-Python loop (1e6 additions), the fastest of 3: a reading of how fast this
    machine runs Python at the time of the run, next to which the dispatch figures scale."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(header, rows, md):
    if md:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header)] + [fmt.format(*r) for r in rows]
    print("\n".join(lines))


def verdict(ok):
    return "met" if ok else "not met"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--repeats", type=int, default=41,
                   help="samples per candidate, interleaved round-robin (default 41)")
    p.add_argument("--number", type=int, default=200,
                   help="back-to-back calls per sample of a small call (default 200)")
    p.add_argument("--decoder-threads", default="1,2",
                   help="thread counts of the decoder comparison (default 1,2)")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    args = p.parse_args(argv)
    thread_counts = [int(t) for t in args.decoder_threads.split(",") if t]

    pinned = keep_freed_blocks()
    load_before = os.getloadavg()[0]
    loop_ms = python_loop_ms()
    torch.set_num_threads(1)
    small = time_small(small_candidates(), args.repeats, args.number)
    decoder, diff = time_decoder(args.repeats, thread_counts)
    load_after = os.getloadavg()[0]

    print(f"Machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, "
          f"numpy {np.__version__}, msda {msda.__version__}, Python "
          f"{platform.python_version()}, load average {load_before:.2f} before the run, "
          f"{load_after:.2f} after; a pure-Python loop of 1e6 additions {loop_ms:.0f} ms; "
          f"median of {args.repeats} interleaved samples ({args.number} calls each for the "
          "small calls); freed blocks up to 32 MiB "
          f"{'kept in the heap (mallopt)' if pinned else 'left to the allocator'}.")
    print()
    node = "C++ (msda/_torch_ops.so)" if msda.ops._eager_op is not None else "Python"
    print(f"Small call: {describe(SMALL)}, float32, 1 thread (torch.set_num_threads(1), "
          f"msda num_threads=1); the autograd node of this install: {node}.")
    print()
    add = small["baseline: torch.add (4 elements)"]
    trivial = small["baseline: (x * 1).sum().backward() (4 elements)"]
    c_api = small["C API (msda._C.forward, NumPy)"]
    forward = small["torch op forward (no grad)"]
    autograd = small[AUTOGRAD]
    targets = {"torch op forward (no grad)": f"<= {TARGET_FORWARD_US:.0f}",
               AUTOGRAD: f"<= {TARGET_AUTOGRAD_US:.0f}"}
    rows = []
    for name, us in small.items():
        rows.append([name, f"{us:.2f}", targets.get(name, "-"), f"{us / c_api:.2f}",
                     f"{us / add:.2f}", f"{us / trivial:.2f}"])
    table(["call", "median us", "target us", "/ C API", "/ torch.add", "/ trivial autograd"],
          rows, args.markdown)
    print()
    print(f"Decoder forward: {describe(SHAPES['decoder'])}, float32, realistic locations; "
          f"max abs difference msda vs composition {diff:.1e}.")
    print()
    print("Each sample times the composition, then msda (value evicted by the composition: the "
          "target's figure), then msda again (value warm from that call), then msda on a value "
          "just produced by a Linear (value_proj(memory), untimed), as in a model's layer.")
    print()
    rows = []
    for threads in thread_counts:
        t = decoder[(threads, "torch")]
        m, pj, w = (decoder[(threads, k)] for k in ("msda", "msda projected", "msda warm"))
        rows.append([str(threads), f"{t:.2f}", f"{m:.2f}", f"{t / m:.1f}x",
                     f">= {TARGET_DECODER_SPEEDUP:.0f}x", f"{pj:.2f}", f"{t / pj:.1f}x",
                     f"{w:.2f}", f"{t / w:.1f}x"])
    table(["threads", "grid_sample composition ms", "msda ms, after the composition",
           "speed-up", "target", "msda ms, value just projected", "speed-up",
           "msda ms, warm", "speed-up"], rows, args.markdown)
    print()
    print(f"target: torch op forward <= {TARGET_FORWARD_US:.0f} us; measured: {forward:.2f} us "
          f"({forward / add:.1f}x torch.add, {forward / c_api:.1f}x the C API); "
          f"{verdict(forward <= TARGET_FORWARD_US)}")
    print(f"target: autograd forward+backward <= {TARGET_AUTOGRAD_US:.0f} us; measured: "
          f"{autograd:.2f} us ({autograd / trivial:.1f}x the trivial autograd round trip); "
          f"{verdict(autograd <= TARGET_AUTOGRAD_US)}")
    for threads in thread_counts:
        s = decoder[(threads, "torch")] / decoder[(threads, "msda")]
        print(f"target: decoder forward >= {TARGET_DECODER_SPEEDUP:.0f}x the composition at "
              f"{threads} thread{'s' if threads > 1 else ''}; measured: {s:.1f}x; "
              f"{verdict(s >= TARGET_DECODER_SPEEDUP)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
