#!/usr/bin/env python3
"""msda against ONNX Runtime and OpenVINO running msda's exported graph, side by side.

A module that calls msda's op is exported with ``msda.onnx.export`` (the standard form: one
GridSample per level, dynamic batch and query count, as a deployment would export it) and
run by ONNX Runtime's CPU provider (and OpenVINO's CPU plugin in float32, when ``openvino``
is installed) on the same inputs as ``msda.ms_deform_attn``, all on the same number of
threads. For each shape and thread count it prints the median forward
time of each (after a warm-up, the two alternating so that load on the machine hits both
alike), their ratio and the largest difference between their outputs.

    python bench/bench_onnx.py                        # encoder and decoder, 1 and 2 threads
    python bench/bench_onnx.py --shapes encoder --threads 2 --repeats 9
    python bench/bench_onnx.py --markdown docs/benchmarks.md   # also writes the table there

Shapes and locations are those of bench/bench_torch.py (float32, a reference point per query
plus offsets of a few pixels).
"""
import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

from bench_torch import SHAPES, make_inputs  # noqa: E402


def describe(shape):
    b, q, h, p, d, levels = shape
    keys = sum(hh * ww for hh, ww in levels)
    sizes = ",".join(f"{hh}x{ww}" for hh, ww in levels)
    return f"B={b} Q={q} K={keys} ({sizes}) H={h} L={len(levels)} P={p} D={d}"


def openvino_runner(path, threads):
    """OpenVINO's CPU plugin on the graph at `path`, or None when openvino is not installed.
    Inference precision is pinned to float32 (the plugin would use bfloat16 where the CPU
    has it) and the latency hint keeps it to one stream, like ONNX Runtime's session."""
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda arrays: request.infer(arrays)[compiled.output(0)]


def measure(torch, msda, ort, name, shape, threads, repeats, workdir):
    import msda.onnx

    value, spatial_shapes, lsi, loc, attn, _ = make_inputs(torch, shape)

    class Op(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("spatial_shapes", spatial_shapes)
            self.register_buffer("level_start_index", lsi)

        def forward(self, value, sampling_locations, attention_weights):
            return msda.ms_deform_attn(value, self.spatial_shapes, self.level_start_index,
                                       sampling_locations, attention_weights)

    model = Op().eval()
    path = os.path.join(workdir, f"{name}.onnx")
    if not os.path.exists(path):
        # Export on small inputs with the same levels: batch 2 and 64 queries (dims of 0 or 1
        # would be specialised), so the graph keeps batch and query count dynamic.
        small = (value[:1].expand(2, -1, -1, -1).contiguous(),
                 loc[:1, :64].expand(2, -1, -1, -1, -1, -1).contiguous(),
                 attn[:1, :64].expand(2, -1, -1, -1, -1).contiguous())
        msda.onnx.export(model, small, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, (value.numpy(), loc.numpy(), attn.numpy())))

    torch.set_num_threads(threads)
    with torch.no_grad():
        expected = model(value, loc, attn)
    got = session.run(None, feeds)[0]  # Warm-up (and the output check).
    diff = float((torch.from_numpy(got) - expected).abs().max())
    scale = float(expected.abs().max())
    ov_run = openvino_runner(path, threads)
    ov_arrays = [value.numpy(), loc.numpy(), attn.numpy()]
    if ov_run is not None:
        got = ov_run(ov_arrays)  # Warm-up and check.
        diff = max(diff, float((torch.from_numpy(got) - expected).abs().max()))

    times = {"msda": [], "ort": [], "ov": []}
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.no_grad():
            model(value, loc, attn)
        times["msda"].append(time.perf_counter() - t)
        t = time.perf_counter()
        session.run(None, feeds)
        times["ort"].append(time.perf_counter() - t)
    # OpenVINO in a block of its own: its worker threads stay busy for a while after each
    # inference and, alternated, slowed msda's next call by up to 1.7x on two cores.
    for _ in range(repeats if ov_run is not None else 0):
        t = time.perf_counter()
        ov_run(ov_arrays)
        times["ov"].append(time.perf_counter() - t)
    return {
        "msda_ms": 1e3 * statistics.median(times["msda"]),
        "ort_ms": 1e3 * statistics.median(times["ort"]),
        "ov_ms": 1e3 * statistics.median(times["ov"]) if times["ov"] else None,
        "max_diff": diff,
        "scale": scale,
    }


SECTION = "## ONNX runtimes comparison"


def table(rows, repeats, header_note):
    lines = [
        SECTION,
        "",
        "Generated by `python bench/bench_onnx.py`: msda's op against ONNX Runtime "
        "(CPUExecutionProvider) and OpenVINO (CPU plugin, float32 inference precision) running "
        "the graph `msda.onnx.export` writes for it (the standard form: GridSample per level, "
        "dynamic batch and query count), on the same inputs and thread count, float32, median "
        f"of {repeats} runs after a warm-up (msda and ONNX Runtime alternating, OpenVINO after "
        "them: its worker threads stay busy after each inference and would slow the next "
        "call). The difference is the larger of the two runtimes' against msda. "
        f"{header_note}",
        "",
        "| shape | threads | msda ms | ONNX Runtime ms | msda vs ONNX Runtime | OpenVINO ms "
        "| msda vs OpenVINO | max abs difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, threads, r in rows:
        ov = (f"{r['ov_ms']:.2f} | {r['ov_ms'] / r['msda_ms']:.1f}x" if r["ov_ms"] is not None
              else "not installed | -")
        lines.append(
            f"| {name} | {threads} | {r['msda_ms']:.2f} | {r['ort_ms']:.2f} | "
            f"{r['ort_ms'] / r['msda_ms']:.1f}x | {ov} | {r['max_diff']:.1e} "
            f"(of {r['scale']:.2f}) |")
    lines += ["", "Shapes:", ""]
    lines += [f"- {name}: {describe(SHAPES[name])}" for name in dict.fromkeys(n for n, _, _ in rows)]
    lines.append("")
    return "\n".join(lines)


def write_markdown(path, section):
    with open(path) as f:
        text = f.read()
    pattern = re.compile(r"^## ONNX (Runtime comparison|runtimes comparison)\n.*?(?=^## |\Z)",
                         re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        # After the PyTorch comparison, before the C++ tables.
        marker = "## C++ kernels"
        text = text.replace(marker, section + "\n" + marker, 1) if marker in text else (
            text.rstrip("\n") + "\n\n" + section + "\n")
    with open(path, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="encoder,decoder")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--markdown", default=None, help="write the table into this file")
    args = p.parse_args()

    import onnxruntime as ort
    import torch

    import msda

    names = args.shapes.split(",")
    for name in names:
        if name not in SHAPES:
            p.error(f"--shapes: unknown shape {name!r} (known: {', '.join(SHAPES)})")
    thread_counts = [int(t) for t in args.threads.split(",")]
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            for threads in thread_counts:
                r = measure(torch, msda, ort, name, SHAPES[name], threads, args.repeats, workdir)
                rows.append((name, threads, r))
                ov = (f"OpenVINO {r['ov_ms']:8.2f} ms, {r['ov_ms'] / r['msda_ms']:5.1f}x, "
                      if r["ov_ms"] is not None else "")
                print(f"{name:8s} threads={threads}: msda {r['msda_ms']:8.2f} ms, ONNX Runtime "
                      f"{r['ort_ms']:8.2f} ms, {r['ort_ms'] / r['msda_ms']:5.1f}x, {ov}max abs "
                      f"diff {r['max_diff']:.1e} (output scale {r['scale']:.2f})", flush=True)
    try:
        import openvino
        ov_version = f", openvino {openvino.__version__.split('-')[0]}"
    except ImportError:
        ov_version = ""
    note = (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"onnxruntime {ort.__version__}{ov_version}, load average {load:.1f} before the "
            "run.")
    section = table(rows, args.repeats, note)
    print()
    print(section)
    if args.markdown:
        write_markdown(args.markdown, section)


if __name__ == "__main__":
    main()
