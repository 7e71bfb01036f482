"""The example and the benchmark's PyTorch path (cheap checks; the benchmark itself is run by
hand)."""
import os
import subprocess
import sys

import torch

import msda

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_one_layer_example(tmp_path):
    plot = tmp_path / "loss.png"
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "train_one_layer.py"), "--plot", str(plot)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "relative MSE" in res.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert plot.stat().st_size > 0


def test_bench_torch_path_matches_msda():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import bench_torch
    finally:
        sys.path.pop(0)
    for name in ("encoder", "deep-dims"):
        shape = bench_torch.quick_shape(bench_torch.quick_shape(bench_torch.SHAPES[name]))
        v, ss, lsi, loc, attn, _ = bench_torch.make_inputs(torch, shape)
        ours = msda.ms_deform_attn(v, ss, lsi, loc, attn)
        theirs = bench_torch.torch_path(torch, v, ss, lsi, loc, attn)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
