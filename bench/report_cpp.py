"""Runs the C++ benchmark (bench_msda) and writes its results into docs/benchmarks.md (the
section "C++ kernels") with a bar chart beside it (docs/benchmarks_cpp.png).

    cmake -S . -B build-bench -DMSDA_BUILD_BENCH=ON && cmake --build build-bench
    python bench/report_cpp.py [--binary build-bench/bench/bench_msda] [--repeats 7]

bench_msda measures, in the same run, the machine's memory bandwidth and FMA peak, and times
every standard shape forward and backward with 1 thread and all threads, on the dispatched
SIMD target, on the scalar one, and (backward) with the counting
sort instead of the by-head mode. Two diagnostic runs follow on the encoder: every value row
aliased to one L1-resident row (--hot-value, with the head-major copies off), whose gap to the
first run is what cache misses on the value rows cost; and every tensor 16 bytes off a 64-byte
boundary, where glibc's malloc puts large blocks (--misalign 16). Last, bench_loops times the
kernels' inner loops alone on rows in L1 and in L2, which gives the encoder's floor: the time
of its row work if every row were that close.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The encoder shape of bench_msda: (query, head) items and points per item.
ENCODER_ITEMS = 20197 * 8
ENCODER_POINTS_PER_ITEM = 4 * 4


def parse_table(text):
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| shape") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(cells)
    return rows


def plot(rows, path):
    """Three panels, one group of bars per shape: the time against the same-run roofline, the
    SIMD target's speed-up over the scalar one, and (backward only) the by-head mode's speed-up
    over the counting sort. Every bar carries its value; a missing figure is marked "n/a"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cell(rest, i):
        return float(rest[i]) if len(rest) > i and rest[i] != "-" else None

    shapes = list(dict.fromkeys(r[0] for r in rows))
    series = list(dict.fromkeys((r[1], r[2]) for r in rows))  # (pass, threads)
    table = {(r[0], r[1], r[2]): r[3:] for r in rows}
    colours = ["#4477aa", "#66ccee", "#ee6677", "#ccbb44", "#228833", "#aa3377"]
    panels = [
        ("time / same-run roofline (lower is better)", "x roofline", 4, series),
        ("SIMD target vs scalar target (higher is better)", "scalar time / SIMD time", 8, series),
        ("backward: by-head vs counting sort (higher is better)",
         "counting-sort time / by-head time", 10, [s for s in series if s[0] == "backward"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for ax, (title, ylabel, column, panel_series) in zip(axes, panels):
        width = 0.8 / max(len(panel_series), 1)
        for k, (pass_, threads) in enumerate(panel_series):
            xs = [i + (k - (len(panel_series) - 1) / 2) * width for i in range(len(shapes))]
            values = [cell(table.get((shape, pass_, threads), []), column) for shape in shapes]
            colour = colours[series.index((pass_, threads)) % len(colours)]
            bars = ax.bar(xs, [v or 0.0 for v in values], width,
                          label=f"{pass_}, {threads} thread{'s' if threads != '1' else ''}",
                          color=colour)
            for bar, v in zip(bars, values):
                ax.annotate("n/a" if v is None else f"{v:.1f}",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        if column != 4:
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes)
        ax.set_xlabel("shape (docs/benchmarks.md lists them)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # Room for the legend above the bars.
        ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_section(markdown_path, section):
    text = ""
    if os.path.exists(markdown_path):
        with open(markdown_path) as f:
            text = f.read()
    pattern = re.compile(r"^## C\+\+ kernels\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    elif text:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = "# Benchmarks\n\n" + section + "\n"
    with open(markdown_path, "w") as f:
        f.write(text)


def machine_name():
    """The CPU model and the number of CPUs this process may use, as /proc/cpuinfo names them."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--binary", default=os.path.join(REPO, "build-bench", "bench", "bench_msda"))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--shapes", default="encoder,decoder,wide-batch,deep-dims")
    p.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"))
    p.add_argument("--png", default=os.path.join(REPO, "docs", "benchmarks_cpp.png"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        table_path = os.path.join(tmp, "table.md")
        command = [args.binary, "--repeats", str(args.repeats), "--shapes", args.shapes,
                   "--vs-scalar", "--vs-counting-sort", "--markdown",
                   table_path]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        with open(table_path) as f:
            table = f.read()
        hot_path = os.path.join(tmp, "hot.md")
        hot_command = [args.binary, "--repeats", str(args.repeats), "--shapes", "encoder",
                       "--hot-value", "--markdown", hot_path]
        print("running: MSDA_HEAD_MAJOR=0", " ".join(hot_command), flush=True)
        subprocess.run(hot_command, check=True, env=dict(os.environ, MSDA_HEAD_MAJOR="0"))
        with open(hot_path) as f:
            hot_rows = parse_table(f.read())
        # Aligned and misaligned runs alternate, three rounds, the fastest of each kept: the
        # machine's noise is larger than the effect in any single pair of runs.
        aligned_best, misaligned_best = {}, {}
        for _ in range(3):
            for misalign, best in (("0", aligned_best), ("16", misaligned_best)):
                path = os.path.join(tmp, "misalign.md")
                command = [args.binary, "--repeats", str(args.repeats), "--shapes", "encoder",
                           "--misalign", misalign, "--markdown", path]
                print("running:", " ".join(command), flush=True)
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                with open(path) as f:
                    for _, pass_, threads, median, *_ in parse_table(f.read()):
                        key = (pass_, threads)
                        best[key] = min(best.get(key, float("inf")), float(median))
        loops_path = os.path.join(tmp, "loops.md")
        loops_command = [os.path.join(os.path.dirname(args.binary), "bench_loops"), "--markdown",
                         loops_path]
        print("running:", " ".join(loops_command), flush=True)
        subprocess.run(loops_command, check=True)
        with open(loops_path) as f:
            loops_text = f.read()
    rows = parse_table(table)
    plot(rows, args.png)
    loops = {cells[0]: (float(cells[1]), float(cells[2])) for cells in parse_table(loops_text)
             if not cells[0].startswith("loop")}
    # The encoder's row work at the floors: every corner (forward) or point (backward) at the
    # loop's L1 and L2 speed, one thread, against its roofline and its measured time.
    points = ENCODER_ITEMS * ENCODER_POINTS_PER_ITEM
    floor_lines = ["| pass | loop | ns each, rows in L1 / L2 | encoder floor ms, L1 / L2 | "
                   "floor in L1 x roofline | encoder ms | encoder / L2 floor |",
                   "|---|---|---|---|---|---|---|"]
    for pass_, label, count in (("forward", "forward gather, ns per corner", 4 * points),
                                ("backward", "backward by-head row work, ns per point", points)):
        l1, l2 = loops[label]
        for shape, r_pass, threads, median, _, _, roofline, *_ in rows:
            if (shape, r_pass, threads) == ("encoder", pass_, "1"):
                f1, f2 = count * l1 * 1e-6, count * l2 * 1e-6
                floor_lines.append(
                    f"| {pass_} | {label.split(',')[0]}, {count / 1e6:.1f} M | {l1:.3f} / {l2:.3f} "
                    f"| {f1:.2f} / {f2:.2f} | {f1 / float(roofline):.2f}x | {float(median):.2f} | "
                    f"{float(median) / f2:.2f}x |")
    # The encoder's times against the L1-resident diagnostic (same geometry and work).
    hot_lines = ["| pass | threads | encoder ms | value rows in L1 ms | share of time in cache "
                 "misses |", "|---|---|---|---|---|"]
    for shape, pass_, threads, median, *_ in rows:
        if shape != "encoder":
            continue
        for h_shape, h_pass, h_threads, h_median, *_ in hot_rows:
            if (h_pass, h_threads) == (pass_, threads):
                real, hot = float(median), float(h_median)
                hot_lines.append(f"| {pass_} | {threads} | {real:.2f} | {hot:.2f} | "
                                 f"{(real - hot) / real:.0%} |")
    misaligned_lines = ["| pass | threads | 64-byte aligned ms | 16 bytes off ms | slowdown |",
                        "|---|---|---|---|---|"]
    for key in sorted(aligned_best):
        real, off = aligned_best[key], misaligned_best[key]
        misaligned_lines.append(f"| {key[0]} | {key[1]} | {real:.2f} | {off:.2f} | "
                                f"{off / real:.2f}x |")
    load = os.getloadavg()[0]
    section = "\n".join([
        "## C++ kernels",
        "",
        f"Machine: {machine_name()}. "
        "Generated by `python bench/report_cpp.py` (which runs `build-bench/bench/bench_msda "
        f"--repeats {args.repeats} --vs-scalar --vs-counting-sort`): float32, "
        "realistic "
        "locations, median of "
        f"{args.repeats} runs, every tensor 64-byte aligned as PyTorch allocates it. Roofline: "
        "inputs read once and outputs written once at the "
        "triad bandwidth, or the FLOPs at the FMA peak, whichever is slower, both measured in the "
        "same run (the fastest of 7 tries each). The scalar columns run the same shapes on Highway's scalar target "
        "(MSDA_SIMD_TARGET=SCALAR) right after, the "
        "counting-sort columns with the backward's by-head mode off (MSDA_BY_HEAD=0). Load "
        f"average before the run: {load:.1f}.",
        "",
        table.strip(),
        "",
        f"![C++ kernels]({os.path.basename(args.png)})",
        "",
        "Where the time goes: the encoder again with every value row of a head aliased to one "
        "row (`MSDA_HEAD_MAJOR=0 bench_msda --hot-value`), so that every gather hits L1 while "
        "the geometry and all other work stay the same (the backward's accumulator rows are "
        "not aliased). The difference is the cost of cache misses on the value rows.",
        "",
        "\n".join(hot_lines),
        "",
        "Alignment: the encoder again with every tensor 16 bytes off a 64-byte boundary "
        "(`bench_msda --misalign 16`), where glibc's malloc puts large blocks; the fastest of "
        "three runs each, alternating with aligned runs. A 128-byte "
        "slice of a row (a head's 32 floats, or a (query, head)'s 16 locations) then spans "
        "three cache lines instead of two. The head-major value copies are aligned whatever the "
        "caller's tensors, so the cost falls on the per-query tensors, and on value where "
        "nothing is copied. Memory from PyTorch or `aligned_alloc(64, ...)` does not pay it.",
        "",
        "\n".join(misaligned_lines),
        "",
        "Loop floors (`build-bench/bench/bench_loops`): the kernels' inner loops alone, one "
        "thread, on synthetic rows that fit in L1 or in L2, with the encoder's layout (D = 32, "
        "4 levels of 4 points, each level's points a normal spread of 2 pixels): the forward's "
        "gather (`GatherRows`) per corner, and the by-head backward's row work per point (four "
        "dots with grad_output reduced together, four accumulator rows read, updated and "
        "stored). Times the encoder's corners or points, they are the time its row work would "
        "take if every row were that close, before any geometry, point gradient or memory "
        "traffic of the per-query tensors. The gather loads a vector of a row for every FMA, and "
        "a weight and a row index per corner besides, so it cannot reach the FMA peak the "
        "roofline assumes.",
        "",
        loops_text.strip().splitlines()[0],
        "",
        "\n".join(floor_lines),
        "",
    ])
    write_section(args.markdown, section)
    print(f"wrote {args.markdown} (section 'C++ kernels') and {args.png}")


if __name__ == "__main__":
    sys.exit(main())
