#!/usr/bin/env python3
"""msda against the pure-PyTorch grid_sample path, on the standard shapes, side by side.

For each shape and each implementation it times the forward and the forward + backward
(median of --repeats runs after a warm-up) and measures the peak memory of one run. Every
(shape, implementation, mode) runs in a fresh subprocess, so that one case's allocations do
not hide another's peak: the peak is the rise of the process's peak resident set (VmHWM,
reset through /proc/self/clear_refs just before the run) above its resident set before it,
which counts the output, the gradients and every temporary. Timing uses the same process.

    python bench/bench_torch.py                  # all shapes; writes docs/benchmarks.md
                                                 # ("PyTorch comparison") and
                                                 # docs/benchmarks_torch.png
    python bench/bench_torch.py --quick          # reduced shapes, 3 repeats, prints only
    python bench/bench_torch.py --shapes encoder --repeats 5

Both paths use float32 and torch.get_num_threads() threads (--threads to change it).
Locations are realistic: a reference point per query (for the encoder, the centre of the
query's own pixel) plus offsets of a few pixels, as in bench/bench_msda.cc.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

SHAPES = {
    # name: (batch, queries, heads, points, dims, levels)
    "encoder": (1, 20197, 8, 4, 32, [(100, 152), (50, 76), (25, 38), (13, 19)]),
    "decoder": (1, 900, 8, 4, 32, [(100, 152), (50, 76), (25, 38), (13, 19)]),
    "wide-batch": (4, 10000, 8, 4, 32, [(64, 64), (32, 32), (16, 16), (8, 8)]),
    "deep-dims": (1, 4096, 1, 8, 256, [(64, 64)]),
}
IMPLS = ("msda", "torch")
MODES = ("forward", "forward+backward")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_shape(shape):
    """--quick: each map a quarter of the area, a quarter of the queries."""
    b, q, h, p, d, levels = shape
    levels = [((hh + 1) // 2, (ww + 1) // 2) for hh, ww in levels]
    keys = sum(hh * ww for hh, ww in levels)
    full_keys = sum(hh * ww for hh, ww in shape[5])
    q = keys if q == full_keys else max(1, q // 4)
    return (b, q, h, p, d, levels)


# ----------------------------------------------------------------------------------------
# Worker: one (shape, implementation, mode) in this process.


def make_inputs(torch, shape, seed=42):
    b, q, h, p, d, levels = shape
    g = torch.Generator().manual_seed(seed)
    L = len(levels)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    lsi = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    keys = int(areas.sum())
    value = torch.randn(b, keys, h, d, generator=g)
    if q == keys:  # Encoder: query i is pixel i of the multi-level map.
        ref = []
        for hh, ww in levels:
            ys, xs = torch.meshgrid(torch.arange(hh), torch.arange(ww), indexing="ij")
            ref.append(torch.stack([(xs.flatten() + 0.5) / ww, (ys.flatten() + 0.5) / hh], -1))
        ref = torch.cat(ref)[None].expand(b, q, 2)
    else:
        ref = torch.rand(b, q, 2, generator=g)
    size = torch.tensor([[ww, hh] for hh, ww in levels], dtype=torch.float32)  # (W, H)
    offsets = 2.0 * torch.randn(b, q, h, L, p, 2, generator=g) / size[None, None, None, :, None, :]
    loc = ref[:, :, None, None, None, :] + offsets
    attn = torch.rand(b, q, h, L, p, generator=g) / (L * p)
    grad_out = torch.randn(b, q, h * d, generator=g)
    return value, spatial_shapes, lsi, loc.contiguous(), attn, grad_out


def torch_path(torch, value, spatial_shapes, level_start_index, loc, attn):
    """Deformable DETR's pure-PyTorch MSDA (F.grid_sample, align_corners=False)."""
    F = torch.nn.functional
    B, K, H, D = value.shape
    _, Q, _, L, P, _ = loc.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * loc - 1
    samples = []
    for level, (h, w) in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(B * H, D, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    weights = attn.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(B, H * D, Q)
    return out.transpose(1, 2).contiguous()


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Resets VmHWM to the current RSS (Linux >= 4.0).
        return True
    except OSError:
        return False


def worker(spec):
    import gc

    import torch

    import msda
    import msda.ops  # noqa: F401

    torch.set_num_threads(spec["threads"])
    shape = tuple(spec["shape"][:5]) + ([tuple(l) for l in spec["shape"][5]],)
    value, ss, lsi, loc, attn, grad_out = make_inputs(torch, shape)
    backward = spec["mode"] == "forward+backward"
    fn = msda.ms_deform_attn if spec["impl"] == "msda" else (
        lambda *a: torch_path(torch, *a))
    leaves = (value, loc, attn)
    if backward:
        for t in leaves:
            t.requires_grad_(True)

    def run():
        if backward:
            for t in leaves:
                t.grad = None
            fn(value, ss, lsi, loc, attn).backward(grad_out)
        else:
            with torch.no_grad():
                fn(value, ss, lsi, loc, attn)

    # A first run loads every code path (lazy imports, the thread pools). In the "fresh"
    # process, the driver fixes glibc's mmap threshold, so large blocks freed by the warm-up go
    # back to the OS rather than being reused unseen: then the peak memory of one run counts
    # everything it allocates (output, gradients, temporaries), and every timed run pays the
    # page faults of fresh memory. The "default" process keeps glibc's default (a large block
    # freed is reused by the next call of the same size, as in a training loop).
    run()
    if backward:
        for t in leaves:
            t.grad = None
    peak_mib, exact = None, None
    if spec["part"] == "fresh":
        gc.collect()
        rss_before = _status_kib("VmRSS")
        exact = _reset_peak()
        if exact:
            run()
            peak = _status_kib("VmHWM")
        else:  # Fallback: the process's lifetime peak (an upper bound on what the run needs).
            import resource

            run()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mib = max(0, peak - rss_before) / 1024.0
        if backward:
            for t in leaves:
                t.grad = None

    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak_mib,
            "peak_exact": exact}


# ----------------------------------------------------------------------------------------
# Driver.


def run_case(name, shape, impl, mode, args):
    """Times the case in two fresh processes: glibc's default allocator (median_s, what a
    training loop sees) and fresh pages for every large block (median_fresh_s, with peak_mib)."""
    result = {}
    for part in ("default", "fresh"):
        spec = {"shape": [*shape[:5], [list(l) for l in shape[5]]], "impl": impl, "mode": mode,
                "repeats": args.repeats, "threads": args.threads, "part": part}
        env = dict(os.environ)
        for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
            env.pop(key, None)
            if part == "fresh":
                env[key] = "131072"
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{name} {impl} {mode} ({part}): worker failed "
                             f"(exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if part == "default":
            result["median_s"] = r["median_s"]
        else:
            result.update(median_fresh_s=r["median_s"], peak_mib=r["peak_mib"],
                          peak_exact=r["peak_exact"])
    return result


def fmt_ms(s):
    return f"{s * 1e3:.1f}" if s * 1e3 >= 10 else f"{s * 1e3:.2f}"


def fmt_mib(m):
    # The resident-set counters are accurate to a few hundred KiB.
    return "< 1" if m < 1.0 else f"{m:.1f}"


def mem_ratio(m, t):
    if m < 1.0 or t < 1.0:
        return "n/a"
    return f"{t / m:.1f}x"


def describe(shape):
    b, q, h, p, d, levels = shape
    keys = sum(hh * ww for hh, ww in levels)
    lv = ",".join(f"{hh}x{ww}" for hh, ww in levels)
    return f"B={b} Q={q} K={keys} ({lv}) H={h} L={len(levels)} P={p} D={d}"


def markdown(results, args, shapes):
    import torch

    lines = [
        "## PyTorch comparison",
        "",
        "Generated by `python bench/bench_torch.py"
        + (f" --shapes {','.join(args.shape_list)}" if args.shapes else "")
        + (f" --repeats {args.repeats}" if args.repeats_given else "")
        + (" --quick" if args.quick else "") + "`: msda's PyTorch op "
        "(`msda.ms_deform_attn`) against the pure-PyTorch `F.grid_sample` path of Deformable "
        "DETR, float32, realistic locations (reference point plus offsets of a few pixels). "
        f"Median of {args.repeats} runs after a warm-up, in a fresh process per case with "
        "glibc's default allocator settings (a large block freed by one call is reused by the "
        "next, as in a training loop). The *fresh pages* columns time the same runs in a "
        "process where every block over 128 KiB is a new mapping "
        "(`MALLOC_MMAP_THRESHOLD_=131072`), so every call also pays the page faults of its "
        "outputs and temporaries; that process also measures the peak memory: the rise of the "
        "peak resident set during one run after a warm-up run (accurate to a few hundred KiB). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"load average {args.load_before:.1f} before the run (other work on the machine slows "
        "both paths, the multi-threaded PyTorch ops most).",
        "",
        "| shape | mode | msda ms | torch ms | speed-up | fresh pages: msda ms | torch ms | "
        "speed-up | msda peak MiB | torch peak MiB | memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in shapes:
        for mode in MODES:
            m, t = results[(name, "msda", mode)], results[(name, "torch", mode)]
            lines.append(
                f"| {name} | {mode} | {fmt_ms(m['median_s'])} | {fmt_ms(t['median_s'])} | "
                f"{t['median_s'] / m['median_s']:.1f}x | {fmt_ms(m['median_fresh_s'])} | "
                f"{fmt_ms(t['median_fresh_s'])} | "
                f"{t['median_fresh_s'] / m['median_fresh_s']:.1f}x | {fmt_mib(m['peak_mib'])} | "
                f"{fmt_mib(t['peak_mib'])} | {mem_ratio(m['peak_mib'], t['peak_mib'])} |")
    lines += ["", "Shapes:", ""]
    lines += [f"- {name}: {describe(shapes[name])}" for name in shapes]
    lines += ["", "![msda vs PyTorch](benchmarks_torch.png)", ""]
    return "\n".join(lines)


def write_markdown(path, section):
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        pattern = re.compile(r"^## PyTorch comparison\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _: section + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = "# Benchmarks\n\n" + section + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def plot(path, results, shapes):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart written")
        return
    names = list(shapes)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [("forward", "median_s", "forward time (ms)", 1e3),
              ("forward+backward", "median_s", "forward + backward time (ms)", 1e3),
              ("forward+backward", "peak_mib", "forward + backward peak memory (MiB)", 1.0)]
    width = 0.38
    for ax, (mode, key, title, scale) in zip(axes, panels):
        for i, (impl, color) in enumerate((("msda", "tab:blue"), ("torch", "tab:orange"))):
            vals = [results[(n, impl, mode)][key] * scale for n in names]
            xs = [j + (i - 0.5) * width for j in range(len(names))]
            bars = ax.bar(xs, vals, width, label="msda" if impl == "msda" else "PyTorch grid_sample",
                          color=color)
            if impl == "torch":
                for j, bar in enumerate(bars):
                    m = results[(names[j], "msda", mode)][key]
                    ratio = results[(names[j], "torch", mode)][key] / max(m, 0.5 if key == "peak_mib" else 1e-9)
                    ax.annotate(f"{ratio:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=15)
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 6)  # Headroom for the ratio labels and the legend.
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left", ncol=2)
    fig.suptitle("msda vs PyTorch grid_sample path (labels: PyTorch / msda)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--shapes", default="", help=f"comma-separated, from {','.join(SHAPES)} (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5; 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="reduced shapes (a quarter of the map area and queries), 3 repeats; "
                        "prints the table but writes docs only with --write")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    p.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"))
    p.add_argument("--png", default=os.path.join(REPO, "docs", "benchmarks_torch.png"))
    p.add_argument("--write", action="store_true", help="write the docs even with --quick")
    p.add_argument("--no-write", action="store_true", help="only print the table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    args.threads = args.threads or torch.get_num_threads()
    args.repeats_given = args.repeats is not None
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    args.shape_list = [s for s in args.shapes.split(",") if s] or list(SHAPES)
    unknown = [s for s in args.shape_list if s not in SHAPES]
    if unknown:
        p.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
    shapes = {n: quick_shape(SHAPES[n]) if args.quick else SHAPES[n] for n in args.shape_list}

    args.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = {}
    print(f"{args.threads} threads, {args.repeats} repeats, float32" + (" (quick shapes)" if args.quick else ""))
    header = (f"{'shape':<11} {'mode':<17} {'msda ms':>9} {'torch ms':>9} {'speed-up':>8} "
              f"{'fresh ms':>9} {'torch ms':>9} {'speed-up':>8} "
              f"{'msda MiB':>9} {'torch MiB':>9} {'mem ratio':>9}")
    print(header)
    for name, shape in shapes.items():
        for mode in MODES:
            for impl in IMPLS:
                results[(name, impl, mode)] = run_case(name, shape, impl, mode, args)
            m, t = results[(name, "msda", mode)], results[(name, "torch", mode)]
            print(f"{name:<11} {mode:<17} {fmt_ms(m['median_s']):>9} {fmt_ms(t['median_s']):>9} "
                  f"{t['median_s'] / m['median_s']:>7.1f}x {fmt_ms(m['median_fresh_s']):>9} "
                  f"{fmt_ms(t['median_fresh_s']):>9} "
                  f"{t['median_fresh_s'] / m['median_fresh_s']:>7.1f}x {fmt_mib(m['peak_mib']):>9} "
                  f"{fmt_mib(t['peak_mib']):>9} {mem_ratio(m['peak_mib'], t['peak_mib']):>9}",
                  flush=True)
    if not all(r["peak_exact"] for r in results.values()):
        print("note: /proc/self/clear_refs unavailable; peaks are process lifetime peaks")

    if args.no_write or (args.quick and not args.write):
        return 0
    write_markdown(args.markdown, markdown(results, args, shapes))
    print(f"table: {args.markdown} (section 'PyTorch comparison')")
    plot(args.png, results, shapes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
