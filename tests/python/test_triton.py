"""The Triton kernels (msda.triton), against the fp64 grid_sample oracle and the C++ core.

Without a GPU they run on CPU tensors under Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before triton is imported); with one, on the GPU. Tests that need a real GPU
are skipped with a reason when there is none.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

import msda  # noqa: E402
import msda.triton as mt  # noqa: E402
from _reference import assert_close, make_inputs, ms_deform_attn_ref  # noqa: E402
from test_errors import CASES, NAMES, base  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (interpreter only here)")
pytestmark = pytest.mark.skipif(
    not GPU and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no GPU and TRITON_INTERPRET is not 1",
)

DTYPES = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float64, torch.float64),
    (torch.float64, torch.float32),
]
LEVELS = ((4, 5), (1, 1), (1, 6), (3, 2))  # 1x1 and 1xW maps among them.


def _inputs(dtype=torch.float32, loc_dtype=None, device=DEVICE, **kw):
    kw.setdefault("levels", LEVELS)
    tensors = make_inputs(dtype=dtype, loc_dtype=loc_dtype, **kw)
    return [t.to(device) for t in tensors]


def _oracle(v, ss, lsi, loc, attn, grad_out=None):
    """fp64 output and, with grad_out, the three gradients by autograd through grid_sample."""
    v, loc, attn = (t.detach().cpu().double().requires_grad_(True) for t in (v, loc, attn))
    out = ms_deform_attn_ref(v, ss.cpu(), lsi.cpu(), loc, attn)
    if grad_out is None:
        return out
    out.backward(grad_out.detach().cpu().double())
    return out, v.grad, loc.grad, attn.grad


def _grad_out(B, Q, HD, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, Q, HD, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


def _close(actual, expected, dtype):
    assert_close(actual.cpu(), expected, dtype)


@pytest.mark.parametrize("dtype,loc_dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_forward_and_gradients_match_the_oracle(dtype, loc_dtype):
    v, ss, lsi, loc, attn = _inputs(dtype, loc_dtype, B=2, Q=7, H=3, D=13, P=2, safe=True)
    grad_out = _grad_out(2, 7, 39, dtype)
    ref = _oracle(v, ss, lsi, loc, attn, grad_out)
    out = mt.ms_deform_attn(v, ss, lsi, loc, attn)
    assert out.dtype == dtype and out.device.type == DEVICE
    _close(out, ref[0], dtype)
    for deterministic in (False, True):
        mt.set_deterministic(deterministic)
        try:
            grads = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
        finally:
            mt.set_deterministic(None)
        for g, like, r in zip(grads, (v, loc, attn), ref[1:]):
            assert g.dtype == like.dtype and g.shape == like.shape
            _close(g, r, g.dtype)  # grad_sampling_locations is rounded to its own dtype.


@pytest.mark.parametrize("dtype,loc_dtype", DTYPES[:2] + DTYPES[3:4] + DTYPES[5:6],
                         ids=lambda d: str(d).replace("torch.", ""))
def test_matches_the_cpp_core(dtype, loc_dtype):
    """Same inputs through the C++ core and the Triton kernels: equal to rounding."""
    v, ss, lsi, loc, attn = _inputs(dtype, loc_dtype, device="cpu", B=2, Q=6, H=2, D=8, P=3)
    grad_out = torch.randn(2, 6, 16, dtype=torch.float64).to(dtype)
    cpu = [msda.ms_deform_attn(v, ss, lsi, loc, attn)]
    cpu += msda.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
    dev = [t.to(DEVICE) for t in (v, ss, lsi, loc, attn)]
    tri = [mt.ms_deform_attn(*dev)]
    tri += mt.ms_deform_attn_backward(*dev, grad_out.to(DEVICE))
    for a, b in zip(tri, cpu):
        assert a.dtype == b.dtype
        _close(a, b.double(), dtype)


def test_autograd_through_the_direct_entry():
    v, ss, lsi, loc, attn = _inputs(torch.float64, B=1, Q=4, H=2, D=3, P=2, safe=True)
    for t in (v, loc, attn):
        t.requires_grad_(True)
    grad_out = _grad_out(1, 4, 6, torch.float64)
    mt.ms_deform_attn(v, ss, lsi, loc, attn).backward(grad_out)
    ref = _oracle(v, ss, lsi, loc, attn, grad_out)
    for t, r in zip((v, loc, attn), ref[1:]):
        _close(t.grad, r, torch.float64)


def _strided_inputs(dtype):
    """value permuted, sampling_locations sliced, attention_weights expanded over queries."""
    v, ss, lsi, loc, attn = _inputs(dtype, B=2, Q=5, H=2, D=6, P=2, safe=True, seed=4)
    v = v.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # [B, K, H, D], D not innermost.
    big = torch.zeros((2, 5, 2, len(LEVELS), 5, 3), dtype=loc.dtype, device=loc.device)
    big[:, :, :, :, 1:3, 1:] = loc
    loc = big[:, :, :, :, 1:3, 1:]
    attn = attn[:, :1].expand(attn.shape)
    assert not v.is_contiguous() and not loc.is_contiguous() and attn.stride(1) == 0
    return v, ss, lsi, loc, attn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs_are_read_in_place(dtype):
    v, ss, lsi, loc, attn = _strided_inputs(dtype)
    grad_out = _grad_out(2, 5, 12, dtype).transpose(0, 1).contiguous().transpose(0, 1)
    assert not grad_out.is_contiguous()
    ref = _oracle(v, ss, lsi, loc, attn, grad_out)
    _close(mt.ms_deform_attn(v, ss, lsi, loc, attn), ref[0], dtype)
    for g, r in zip(mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out), ref[1:]):
        _close(g, r, dtype)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("D,P,levels", [(1, 1, ((3, 3),)), (3, 2, LEVELS), (256, 1, ((2, 3),)),
                                        (4, 1, tuple((l + 1, 2) for l in range(8)))],
                         ids=["D1-P1-L1", "D3-P2-L4", "D256", "L8"])
def test_shapes(index_dtype, D, P, levels):
    dtype = torch.float32
    v, ss, lsi, loc, attn = _inputs(dtype, B=1, Q=3, H=2, D=D, P=P, levels=levels,
                                    index_dtype=index_dtype, safe=True)
    grad_out = _grad_out(1, 3, 2 * D, dtype)
    ref = _oracle(v, ss, lsi, loc, attn, grad_out)
    _close(mt.ms_deform_attn(v, ss, lsi, loc, attn), ref[0], dtype)
    for g, r in zip(mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out), ref[1:]):
        _close(g, r, dtype)


@pytest.mark.parametrize("B,Q", [(0, 3), (2, 0)])
def test_empty_batch_and_queries(B, Q):
    v, ss, lsi, loc, attn = _inputs(torch.float32, B=B, Q=Q, H=2, D=4, P=2)
    out = mt.ms_deform_attn(v, ss, lsi, loc, attn)
    assert out.shape == (B, Q, 8)
    for deterministic in (False, True):
        mt.set_deterministic(deterministic)
        try:
            gv, gl, ga = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, torch.zeros_like(out))
        finally:
            mt.set_deterministic(None)
        assert gv.shape == v.shape and bool((gv == 0).all())
        assert gl.shape == loc.shape and ga.shape == attn.shape


def test_points_off_the_map_and_non_finite_locations():
    v, ss, lsi, loc, attn = _inputs(torch.float32, B=1, Q=4, H=1, D=5, P=4, levels=((3, 4),))
    loc = loc.clone()
    loc[0, 0, 0, 0, 0] = torch.tensor([float("nan"), 0.5])
    loc[0, 0, 0, 0, 1] = torch.tensor([0.5, float("inf")])
    loc[0, 0, 0, 0, 2] = torch.tensor([-float("inf"), 1e30])
    loc[0, 0, 0, 0, 3] = torch.tensor([1.2, -0.3])  # Past the map on both axes.
    # x_im == -1, y_im == -1, x_im == W, y_im == H exactly: the strict gate fails (the
    # samples are zero anyway; the location gradients would not be).
    loc[0, 1, 0, 0] = torch.tensor([[-0.5 / 4, 0.5], [0.5, -0.5 / 3], [4.5 / 4, 0.5],
                                    [0.5, 3.5 / 3]])
    grad_out = _grad_out(1, 4, 5, torch.float32)
    out = mt.ms_deform_attn(v, ss, lsi, loc, attn)
    assert bool(torch.isfinite(out).all())
    assert bool((out[0, 0] == 0).all())  # Every point of query 0 contributes nothing.
    gv, gl, ga = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
    assert bool((gl[0, 0] == 0).all()) and bool((ga[0, 0] == 0).all())
    assert gl[0, 1].abs().sum() == 0 and ga[0, 1].abs().sum() == 0
    finite = torch.nan_to_num(loc, nan=-5.0, posinf=-5.0, neginf=-5.0)
    ref = _oracle(v, ss, lsi, finite, attn, grad_out)
    _close(out, ref[0], torch.float32)
    _close(gv, ref[1], torch.float32)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, True, True)],
                         ids=["value", "locations", "weights", "all"])
def test_each_gradient_alone_and_together(needs):
    v, ss, lsi, loc, attn = _inputs(torch.float32, B=1, Q=5, H=2, D=4, P=2, safe=True)
    grad_out = _grad_out(1, 5, 8, torch.float32)
    ref = _oracle(v, ss, lsi, loc, attn, grad_out)
    grads = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out, need_value=needs[0],
                                       need_locations=needs[1], need_weights=needs[2])
    for g, need, r in zip(grads, needs, ref[1:]):
        if need:
            _close(g, r, torch.float32)
        else:
            assert g is None


def test_deterministic_mode_is_bitwise_repeatable():
    v, ss, lsi, loc, attn = _inputs(torch.float32, B=2, Q=40, H=2, D=8, P=4, levels=((2, 2), (1, 3)))
    grad_out = _grad_out(2, 40, 16, torch.float32)
    assert not mt.is_deterministic()
    mt.set_deterministic(True)
    try:
        assert mt.is_deterministic()
        first = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
        second = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
    finally:
        mt.set_deterministic(None)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    ref = _oracle(v, ss, lsi, loc, attn, grad_out)
    _close(first[0], ref[1], torch.float32)
    # torch's switch turns it on as well.
    torch.use_deterministic_algorithms(True)
    try:
        assert mt.is_deterministic()
        third = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, grad_out)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(third[0], first[0])
    with pytest.raises(TypeError, match="^mode: must be True, False or None"):
        mt.set_deterministic(1)


@pytest.mark.parametrize("exc,pattern,changes", CASES, ids=[c[1][1:40] for c in CASES])
def test_refusals_match_the_cpu_op(exc, pattern, changes):
    """Every refusal of the CPU op, with the same exception and message."""
    args = base()
    args.update(changes)
    with pytest.raises(exc) as cpu:
        msda.ms_deform_attn(*[args[n] for n in NAMES])
    with pytest.raises(exc, match=pattern) as tri:
        mt.ms_deform_attn(*[args[n] for n in NAMES])
    assert str(tri.value) == str(cpu.value)


def test_backward_refusals_match_the_cpu_op():
    a = base()
    for g in (torch.zeros(2, 3, 6), torch.zeros(2, 3, 8, dtype=torch.float64), torch.zeros(2, 3)):
        with pytest.raises((TypeError, ValueError)) as cpu:
            msda.ms_deform_attn_backward(*[a[n] for n in NAMES], g)
        with pytest.raises(type(cpu.value)) as tri:
            mt.ms_deform_attn_backward(*[a[n] for n in NAMES], g)
        assert str(tri.value) == str(cpu.value)


def test_the_op_has_cuda_kernels():
    for op in ("msda::ms_deform_attn", "msda::ms_deform_attn_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")


def test_the_cpu_package_needs_no_triton():
    """With triton not importable, the CPU op, its backward and msda.nn work, and msda.triton
    says what is missing. (torch itself imports triton, when installed, on a custom op's first
    call; msda does not.)"""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('triton blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, msda, msda.nn\n"
        "v = torch.randn(1, 4, 1, 2, requires_grad=True)\n"
        "loc = torch.rand(1, 3, 1, 1, 1, 2)\n"
        "w = torch.rand(1, 3, 1, 1, 1)\n"
        "msda.ms_deform_attn(v, [[2, 2]], None, loc, w).sum().backward()\n"
        "assert 'triton' not in sys.modules\n"
        "try:\n"
        "    import msda.triton\n"
        "except ImportError as e:\n"
        "    assert 'pip install' in str(e), e\n"
        "    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


_TRACE = """
import sys, torch, msda.ops
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._functorch.aot_autograd import aot_function
sys.path.insert(0, sys.argv[1])
from _reference import make_inputs
graphs = []
def keep(gm, inputs):
    graphs.append(gm.code)
    return gm
cpu = make_inputs(B=1, Q=5, H=2, D=8, P=2, levels=((4, 5), (2, 3)), dtype=torch.float32)
with FakeTensorMode():
    x = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda") for t in cpu]
    g = torch.empty(1, 5, 16, device="cuda")
    calls = [(lambda *x: torch.ops.msda.ms_deform_attn(*x), x),
             (lambda g, *x: torch.ops.msda.ms_deform_attn_backward(g, *x, True, True, True),
              [g] + x)]
    for fn, args in calls:
        try:
            aot_function(fn, fw_compiler=keep)(*args)
        except RuntimeError:  # Running the traced graph needs CUDA; the graph is kept.
            pass
assert len(graphs) == 2, graphs
for code in graphs:
    assert "triton_kernel_wrapper_functional" in code and "msda" not in code, code
print("traced")
"""


def test_compile_traces_the_triton_kernels_into_the_graph():
    """AOTAutograd (torch.compile's tracer) on CUDA fake tensors: the forward and backward ops
    become Triton kernel calls in the graph. Needs no GPU (nothing runs), but jit kernels: a
    process without the interpreter."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", _TRACE, os.path.dirname(__file__)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "traced" in result.stdout, result.stderr[-3000:]


@needs_gpu
def test_compile_on_gpu():
    v, ss, lsi, loc, attn = _inputs(torch.float32, B=2, Q=50, H=2, D=16, P=2)
    for t in (v, loc, attn):
        t.requires_grad_(True)

    def f(v, loc, attn):
        return torch.ops.msda.ms_deform_attn(v, ss, lsi, loc, attn).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    eager = f(v, loc, attn)
    eager_grads = torch.autograd.grad(eager, (v, loc, attn))
    out = compiled(v, loc, attn)
    grads = torch.autograd.grad(out, (v, loc, attn))
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_gpu
def test_the_op_on_gpu_reaches_triton():
    v, ss, lsi, loc, attn = _inputs(torch.float32, B=1, Q=9, H=2, D=8, P=2)
    out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    torch.testing.assert_close(out, mt.ms_deform_attn(v, ss, lsi, loc, attn), rtol=0, atol=0)
    # spatial_shapes on the GPU: no host read of it in the call.
    out2 = msda.ms_deform_attn(v, ss.cuda(), lsi.cuda(), loc, attn)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


@needs_gpu
def test_offsets_past_2_31_elements():
    """value with more than 2^31 elements, sampled in its last rows: 64-bit offsets. Checked
    against the same rows cut out into a small value (coordinates exact in fp32 in both)."""
    rows, width = 16896, 1024  # [1, rows * width, 8, 16] fp16: 2.2e9 elements, 4.1 GiB.
    v = torch.randn(1, rows * width, 8, 16, device="cuda", dtype=torch.float16)
    assert v.numel() > 2**31
    lsi = torch.zeros(1, dtype=torch.int64, device="cuda")
    loc = torch.rand(1, 64, 8, 1, 2, 2, device="cuda")
    loc[..., 1] = 1 - 2**-13  # y_im = rows - 2.5625: rows rows - 3 and rows - 2.
    attn = torch.rand(1, 64, 8, 1, 2, device="cuda", dtype=torch.float16)
    out = mt.ms_deform_attn(v, torch.tensor([[rows, width]], device="cuda"), lsi, loc, attn)
    small = v[:, (rows - 4) * width:].contiguous()  # The last 4 rows of the map.
    loc_small = loc.clone()
    loc_small[..., 1] = 0.484375  # The same y_im - (rows - 4), exactly.
    ref = mt.ms_deform_attn(small, torch.tensor([[4, width]], device="cuda"), lsi, loc_small, attn)
    assert out.abs().sum() > 0
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_bench_gpu_runs():
    """bench/bench_gpu.py's smoke mode (tiny shape; the interpreter here)."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bench_gpu.py")
    result = subprocess.run([sys.executable, script, "--smoke"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "msda deterministic" in result.stdout and "of the copy" in result.stdout
