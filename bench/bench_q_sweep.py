"""Time per sampling point as the query count Q grows, on the encoder's value map.

    python bench/bench_q_sweep.py [--queries 500,1000,...] [--repeats N] [--threads N]
                                  [--kinds realistic,uniform] [--plot FILE.png]

Deformable DETR's four levels for an 800 x 1216 image (K = 20197 keys), H=8, L=4, P=4, D=32,
float32, through msda.numpy, value 64-byte aligned as PyTorch allocates it. For each Q the forward and the backward (all three gradients)
are timed in fresh child processes with the planner's default rules, with the head-major
value copy turned off (MSDA_HEAD_MAJOR=0) and with the copy made whatever the rule says
(MSDA_HEAD_MAJOR=always), alternating, each child the median of --repeats runs after a
warm-up, each figure the median of --processes children. Two
location kinds: realistic (a random reference point per query, samples a few pixels around
it on every level) and uniform on [0, 1]^2.

The figure of merit is nanoseconds per sampling point (B*Q*H*L*P of them). Two ratios per
row: the default's time per point against the best default time per point over all Q (the
issue's "no cliffs" target, 1.3x), and against the better of copy off / copy always at that
Q (whether the planner's rule picks the faster mode). --plot draws ns per point against Q.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LEVELS = ((100, 152), (50, 76), (25, 38), (13, 19))
H, P, D = 8, 4, 32
DEFAULT_QUERIES = "500,1000,2000,3000,4000,5000,5049,5100,7500,10000,20197,40000,80000"
MODES = {"default": None, "copy off": "0", "copy always": "always"}


def aligned(a, alignment=64):
    """A copy of `a` starting on a 64-byte boundary, where PyTorch's CPU allocator places a
    tensor. NumPy's large arrays start 16 bytes into a page, where each 128-byte row of value
    spans three cache lines instead of two (a third more lines to read)."""
    import numpy as np

    buf = np.empty(a.nbytes + alignment, np.uint8)
    start = -buf.ctypes.data % alignment
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def child(args):
    import numpy as np

    import msda.numpy as mnp

    q, kind, repeats, threads = args.child_q, args.child_kind, args.repeats, args.threads
    rng = np.random.default_rng(q)
    L = len(LEVELS)
    ss = np.array(LEVELS, np.int64)
    keys = int((ss[:, 0] * ss[:, 1]).sum())
    value = aligned(rng.standard_normal((1, keys, H, D), np.float32))
    if kind == "uniform":
        loc = rng.random((1, q, H, L, P, 2), np.float32)
    else:
        ref = rng.random((1, q, 1, 1, 1, 2), np.float32)
        scale = 2.0 / np.array([[w, h] for h, w in LEVELS], np.float32).reshape(1, 1, 1, L, 1, 2)
        loc = (ref + scale * rng.standard_normal((1, q, H, L, P, 2), np.float32)).astype(np.float32)
    attn = (rng.random((1, q, H, L, P), np.float32) / (L * P)).astype(np.float32)
    grad = rng.standard_normal((1, q, H * D), np.float32)
    lsi = mnp.level_start_index(ss)
    out = np.empty((1, q, H * D), np.float32)

    def fwd():
        mnp.ms_deform_attn(value, ss, lsi, loc, attn, out=out, num_threads=threads)

    def bwd():
        mnp.ms_deform_attn_backward(value, ss, lsi, loc, attn, grad, num_threads=threads)

    result = {}
    for name, fn in (("forward", fwd), ("backward", bwd)):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        result[name] = statistics.median(times)
    print(json.dumps(result))


def run_child(q, kind, mode, repeats, threads):
    env = dict(os.environ)
    env.pop("MSDA_HEAD_MAJOR", None)
    if MODES[mode] is not None:
        env["MSDA_HEAD_MAJOR"] = MODES[mode]
    cmd = [sys.executable, __file__, "--child-q", str(q), "--child-kind", kind, "--repeats",
           str(repeats), "--threads", str(threads)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", default=DEFAULT_QUERIES)
    ap.add_argument("--kinds", default="realistic,uniform")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--processes", type=int, default=3,
                    help="child processes per (Q, mode); the median of their medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", help="write a PNG of ns per point against Q")
    ap.add_argument("--child-q", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-kind", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_q is not None:
        child(args)
        return

    queries = [int(x) for x in args.queries.split(",")]
    kinds = args.kinds.split(",")
    load = os.getloadavg()[0]
    print(f"Machine: {os.uname().machine}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"Python "
          f"{sys.version.split()[0]}, load average {load:.1f} before the run.")
    print(f"Encoder value (K=20197, H={H}, D={D}), L=4, P={P}, float32; ns per sampling point, "
          f"median over {args.processes} processes of the median of {args.repeats} runs.\n")
    worst, worst_pick, curves = {}, {}, {}
    for kind in kinds:
        rows = {}
        for q in queries:
            # --processes children per mode, alternating: one process's page placement can
            # make it 1.4x slower than the next on these machines.
            runs = {m: [] for m in MODES}
            for _ in range(args.processes):
                for m in MODES:
                    runs[m].append(run_child(q, kind, m, args.repeats, args.threads))
            rows[q] = {m: {name: statistics.median(r[name] for r in runs[m])
                           for name in ("forward", "backward")} for m in MODES}
        points = {q: H * len(LEVELS) * P * q for q in queries}
        print(f"### {kind} locations\n")
        print("| Q | pass | default ns/point | copy off ns/point | copy always ns/point | "
              "default / best default | default / better mode at this Q |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for name in ("forward", "backward"):
            best = min(rows[q]["default"][name] / points[q] for q in queries)
            for q in queries:
                ns = {m: rows[q][m][name] / points[q] * 1e9 for m in MODES}
                ratio = ns["default"] / (best * 1e9)
                pick = ns["default"] / min(ns["copy off"], ns["copy always"])
                worst[(kind, name)] = max(worst.get((kind, name), 0), ratio)
                worst_pick[(kind, name)] = max(worst_pick.get((kind, name), 0), pick)
                for m in MODES:
                    curves.setdefault((kind, name, m), []).append(ns[m])
                print(f"| {q} | {name} | {ns['default']:.1f} | {ns['copy off']:.1f} | "
                      f"{ns['copy always']:.1f} | {ratio:.2f}x | {pick:.2f}x |")
        print()
    for (kind, name), ratio in worst.items():
        verdict = "met" if ratio <= 1.3 else "not met"
        print(f"target: {kind} {name}, per-point time for Q in [{queries[0]}, {queries[-1]}] "
              f"<= 1.3x the best; measured worst {ratio:.2f}x: {verdict}")
    for (kind, name), pick in worst_pick.items():
        print(f"rule: {kind} {name}, default against the better of copy off / always at each Q: "
              f"worst {pick:.2f}x")
    if args.plot:
        plot(args.plot, queries, kinds, curves, args.threads)


def plot(path, queries, kinds, curves, threads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(kinds), figsize=(5 * len(kinds) * 2, 4), sharex=True)
    styles = {"default": ("k", "o", "-"), "copy off": ("tab:red", "v", "--"),
              "copy always": ("tab:blue", "^", ":")}
    for ax, (kind, name) in zip(axes, [(k, n) for k in kinds for n in ("forward", "backward")]):
        for mode, (color, marker, line) in styles.items():
            ax.plot(queries, curves[(kind, name, mode)], color=color, marker=marker,
                    linestyle=line, label=mode)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name}, {kind} locations")
        ax.set_xlabel("queries Q")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("ns per sampling point")
    axes[0].legend()
    fig.suptitle(f"msda on the encoder's value map (K=20197, H=8, L=4, P=4, D=32, fp32), "
                 f"{threads} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
