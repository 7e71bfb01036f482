"""msda/_torch_ops.so: the direct path's autograd node in C++ (python/src/torch_ops.cc).

Where the package was built against the imported torch (pip install --no-build-isolation, as
scripts/test.sh does), a plain eager call that wants a gradient goes through the C++ node. It
must give what the Python autograd.Function gives, bit for bit, for every dtype, stride and
subset of gradients; its gradients must pass finite differences; a refused call must raise
what the Python path raises; create_graph must still record the backward op."""
import os
import subprocess
import sys

import pytest
import torch

import msda
import msda.ops as ops
from _reference import assert_close, make_inputs, ms_deform_attn_ref

_BUILT = os.path.exists(os.path.join(os.path.dirname(ops.__file__), "_torch_ops.so"))
pytestmark = pytest.mark.skipif(
    not _BUILT, reason="msda was built without torch (isolated build): no _torch_ops.so"
)


def test_the_library_built_for_this_torch_is_loaded():
    with open(os.path.join(os.path.dirname(ops.__file__), "_torch_ops.txt")) as f:
        assert f.read().strip() == torch.__version__
    assert ops._eager_op is not None


def test_a_library_built_for_another_torch_is_not_loaded(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert ops._load_eager_op() is None


def test_msda_torch_ops_0_keeps_the_python_node():
    code = "import msda.ops as o; print(o._eager_op is None)"
    env = dict(os.environ, MSDA_TORCH_OPS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"


def _run(args, needs, grad_out=None, create_graph=False):
    v, ss, lsi, loc, attn = (t.detach().clone() for t in args)
    for t, need in zip((v, loc, attn), needs):
        t.requires_grad_(need)
    out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(9),
                               dtype=torch.float64).to(out.dtype)
    wanted = [t for t, need in zip((v, loc, attn), needs) if need]
    grads = torch.autograd.grad(out, wanted, grad_out, create_graph=create_graph)
    return out, grads


def _python_node(monkeypatch):
    monkeypatch.setattr(ops, "_eager_op", None)


CASES = [
    dict(dtype=torch.float32),
    dict(dtype=torch.float64),
    dict(dtype=torch.bfloat16),
    dict(dtype=torch.float16),
    dict(dtype=torch.bfloat16, loc_dtype=torch.float32),
    dict(dtype=torch.float32, index_dtype=torch.int32),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False),
                                   (False, True, False), (False, False, True),
                                   (False, True, True)], ids=str)
def test_cpp_node_matches_the_python_node_bit_for_bit(monkeypatch, case, needs):
    args = make_inputs(B=2, Q=7, H=3, D=5, P=3, safe=True, seed=3, **case)
    out, grads = _run(args, needs)
    assert type(out.grad_fn).__name__ == "CppFunction"
    assert "MsDeformAttnFunction" in out.grad_fn.name()
    _python_node(monkeypatch)
    expected_out, expected_grads = _run(args, needs)
    assert type(expected_out.grad_fn).__name__ != "CppFunction"
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    assert len(grads) == len(expected_grads)
    for a, e in zip(grads, expected_grads):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_cpp_node_on_strided_inputs_and_grad_outputs(monkeypatch):
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=6, H=2, D=4, P=2, safe=True, seed=5)
    v = v.transpose(0, 1).contiguous().transpose(0, 1)  # Other strides, same values.
    loc = loc.transpose(1, 2).contiguous().transpose(1, 2)
    attn = torch.cat([attn, attn], dim=-1)[..., ::2]  # Non-unit point stride.
    g = torch.randn(2, 8, 6, dtype=torch.float64).transpose(1, 2)  # [2, 6, 8], strided.
    args = (v, ss, lsi, loc, attn)
    out, grads = _run(args, (True, True, True), grad_out=g)
    assert type(out.grad_fn).__name__ == "CppFunction"
    _python_node(monkeypatch)
    expected_out, expected_grads = _run(args, (True, True, True), grad_out=g)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for a, e in zip(grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_cpp_node_against_the_fp64_reference_and_finite_differences():
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=4, H=2, D=3, P=2, safe=True, seed=11)
    ref = ms_deform_attn_ref(v, ss, lsi, loc, attn)
    args = [t.clone().requires_grad_(True) for t in (v, loc, attn)]
    out = msda.ms_deform_attn(args[0], ss, lsi, args[1], args[2])
    assert type(out.grad_fn).__name__ == "CppFunction"
    assert_close(out, ref, dtype=torch.float64)

    def f(value, locations, weights):
        return msda.ms_deform_attn(value, ss, lsi, locations, weights)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_a_grad_output_of_another_dtype_is_converted(monkeypatch):
    args = make_inputs(B=1, Q=3, H=2, D=4, P=2, dtype=torch.float32, safe=True, seed=2)
    g = torch.randn(1, 3, 8, dtype=torch.float64)
    v = args[0].clone().requires_grad_(True)
    out = msda.ms_deform_attn(v, args[1], args[2], args[3], args[4])
    (gv,) = torch.autograd.grad(out, v, g.float())
    v2 = args[0].clone().requires_grad_(True)
    out2 = msda.ms_deform_attn(v2, args[1], args[2], args[3], args[4])
    (gv2,) = torch.autograd.grad(out2.double(), v2, g)  # The node receives float32 after .double().
    torch.testing.assert_close(gv, gv2, rtol=0, atol=0)


def test_refusals_raise_what_the_python_path_raises(monkeypatch):
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=3, H=2, D=4, P=2, dtype=torch.float32, seed=1)
    v.requires_grad_(True)
    bad_calls = [
        (ValueError, lambda: msda.ms_deform_attn(v, ss, lsi + 1, loc, attn)),
        (TypeError, lambda: msda.ms_deform_attn(v, ss, lsi, loc, attn.double())),
        (ValueError, lambda: msda.ms_deform_attn(v, ss, lsi, loc, attn[..., :1])),
        (ValueError, lambda: msda.ms_deform_attn(v, ss, lsi, loc[..., 0], attn)),
    ]
    messages = []
    for kind, call in bad_calls:
        with pytest.raises(kind) as e:
            call()
        messages.append(str(e.value))
    _python_node(monkeypatch)
    for (kind, call), message in zip(bad_calls, messages):
        with pytest.raises(kind) as e:
            call()
        assert str(e.value) == message


def test_create_graph_records_the_backward_op(monkeypatch):
    args = make_inputs(B=1, Q=3, H=2, D=4, P=2, safe=True, seed=4)
    out, grads = _run(args, (True, True, True), create_graph=True)
    assert all(g.requires_grad for g in grads)
    _python_node(monkeypatch)
    expected_out, expected_grads = _run(args, (True, True, True), create_graph=True)
    for a, e in zip(grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
        assert type(a.grad_fn) is type(e.grad_fn)


def test_retain_graph_and_two_backwards():
    args = make_inputs(B=1, Q=3, H=2, D=4, P=2, safe=True, seed=6)
    v = args[0].clone().requires_grad_(True)
    out = msda.ms_deform_attn(v, args[1], args[2], args[3], args[4])
    g = torch.randn_like(out)
    out.backward(g, retain_graph=True)
    first = v.grad.clone()
    out.backward(g)
    torch.testing.assert_close(v.grad, 2 * first, rtol=0, atol=0)


def test_threads_give_the_same_bits():
    args = make_inputs(B=2, Q=40, H=4, D=8, P=4, dtype=torch.float32, safe=True, seed=8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(args, (True, True, True))
        torch.set_num_threads(2)
        two = _run(args, (True, True, True))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one[0], two[0], rtol=0, atol=0)
    for a, b in zip(one[1], two[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_variants_and_no_grad_keep_their_paths():
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=3, H=2, D=4, P=2, seed=7)
    v.requires_grad_(True)
    out = msda.ms_deform_attn(v, ss, lsi, loc, attn, method="discrete")
    assert type(out.grad_fn).__name__ != "CppFunction"
    with torch.no_grad():
        assert msda.ms_deform_attn(v, ss, lsi, loc, attn).grad_fn is None
    with torch.inference_mode():
        assert msda.ms_deform_attn(v, ss, lsi, loc, attn).grad_fn is None


def _stats():
    hits, misses, _ = torch.ops.msda._eager_stats()
    return hits, misses


def test_repeated_layouts_reuse_their_executors_with_the_same_bits(monkeypatch):
    # Three calls on different memory with one layout: one plan per direction, then hits; each
    # result is the Python node's, bit for bit.
    results = []
    before = _stats()
    for seed in (21, 22, 23):
        args = make_inputs(B=2, Q=9, H=3, D=6, P=2, dtype=torch.float32, safe=True, seed=seed)
        results.append((args, _run(args, (True, True, True))))
    hits, misses = (a - b for a, b in zip(_stats(), before))
    assert misses <= 2 and hits >= 4
    _python_node(monkeypatch)
    for args, (out, grads) in results:
        expected_out, expected_grads = _run(args, (True, True, True))
        torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
        for a, e in zip(grads, expected_grads):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_what_a_plan_depends_on_is_part_of_the_key(monkeypatch):
    # Same dims and strides but other level tables, another thread count, other strides, or
    # another subset of gradients: each is planned afresh and gives the Python node's bits.
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=5, H=2, D=4, P=2, levels=((6, 8), (3, 4)),
                                        dtype=torch.float32, safe=True, seed=30)
    other_ss = torch.tensor([[8, 6], [4, 3]])  # Same key count (48 + 12), other shapes.
    # Same values, head-major strides (dense, so _run's clone keeps them).
    head_major = v.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    cases = [
        (v, ss, lsi, loc, attn, (True, True, True), 1),
        (v, other_ss, lsi, loc, attn, (True, True, True), 1),
        (v, ss, lsi, loc, attn, (True, True, True), 2),
        (head_major, ss, lsi, loc, attn, (True, True, True), 1),
        (v, ss, lsi, loc, attn, (True, False, True), 1),
    ]
    threads = torch.get_num_threads()
    got = []
    try:
        for i, (*args, needs, n) in enumerate(cases):
            torch.set_num_threads(n)
            before = _stats()
            got.append(_run(args, needs))
            if i > 0:  # Each differs from the first in one thing: a miss, planned afresh.
                assert _stats()[1] - before[1] >= 1, i
        _python_node(monkeypatch)
        for (*args, needs, n), (out, grads) in zip(cases, got):
            torch.set_num_threads(n)
            expected_out, expected_grads = _run(args, needs)
            torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
            for a, e in zip(grads, expected_grads):
                torch.testing.assert_close(a, e, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


def test_a_hit_reads_the_new_contents_of_the_same_memory():
    args = make_inputs(B=1, Q=4, H=2, D=4, P=2, dtype=torch.float64, safe=True, seed=40)
    v, ss, lsi, loc, attn = args
    first = msda.ms_deform_attn(v.requires_grad_(True), ss, lsi, loc, attn)
    with torch.no_grad():
        v.mul_(-2.0)
        loc.add_(0.01)
    before = _stats()
    second = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    assert _stats()[0] > before[0]  # The executor of the first call, on the same memory.
    assert_close(second.detach(), ms_deform_attn_ref(v.detach(), ss, lsi, loc, attn),
                 dtype=torch.float64)
    assert not torch.equal(first, second)


def test_sections_run_on_pytorchs_worker_threads():
    # at::parallel_for's OpenMP loop is compiled into the library (it is inline): without
    # -fopenmp it would run every section on the calling thread.
    args = make_inputs(B=2, Q=400, H=4, D=16, P=4, levels=((24, 32), (12, 16)),
                       dtype=torch.float32, safe=True, seed=50)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        before = torch.ops.msda._eager_stats()[2]
        for _ in range(3):
            _run(args, (True, True, True))
        assert torch.ops.msda._eager_stats()[2] > before
    finally:
        torch.set_num_threads(threads)
