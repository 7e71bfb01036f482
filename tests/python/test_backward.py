"""Gradients: gradcheck in fp64, every dtype against autograd through the oracle, and only
the gradients that are needed are computed."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import msda
from _reference import assert_close, make_inputs, ms_deform_attn_ref


def test_gradcheck_fp64():
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=3, H=2, D=3, P=2, levels=((4, 5), (2, 3)), safe=True)
    for t in (v, loc, attn):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, loc, attn: msda.ms_deform_attn(v, ss, lsi, loc, attn),
        (v, loc, attn), eps=1e-6, atol=1e-7, rtol=1e-5,
    )


def test_gradcheck_fp64_non_contiguous():
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=3, H=2, D=3, P=2, levels=((3, 4), (2, 2)), safe=True, seed=3)
    v = v.transpose(1, 3).contiguous().transpose(1, 3).requires_grad_(True)
    loc = loc.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0).requires_grad_(True)
    attn.requires_grad_(True)
    assert not v.is_contiguous() and not loc.is_contiguous()
    assert torch.autograd.gradcheck(
        lambda v, loc, attn: msda.ms_deform_attn(v, ss, lsi, loc, attn).transpose(0, 1),
        (v, loc, attn), eps=1e-6, atol=1e-7, rtol=1e-5,
    )


def _grads(fn, v, loc, attn, grad_out):
    v, loc, attn = (t.detach().requires_grad_(True) for t in (v, loc, attn))
    out = fn(v, loc, attn)
    out.backward(grad_out.to(out.dtype))
    return out, v.grad, loc.grad, attn.grad


@pytest.mark.parametrize(
    "dtype,loc_dtype",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float16),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
    ],
)
def test_gradients_match_oracle(dtype, loc_dtype):
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=9, H=2, D=8, P=3, dtype=dtype, loc_dtype=loc_dtype,
                                        safe=True, seed=11)
    grad_out = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grad_out = grad_out.to(dtype)
    _, gv, gl, ga = _grads(lambda v, l, a: msda.ms_deform_attn(v, ss, lsi, l, a), v, loc, attn, grad_out)
    assert gv.dtype == dtype and gl.dtype == loc_dtype and ga.dtype == dtype
    ref = lambda v, l, a: ms_deform_attn_ref(v, ss, lsi, l, a)  # noqa: E731
    _, rv, rl, ra = _grads(ref, v.double(), loc.double(), attn.double(), grad_out.double())
    # The same gradients through grid_sample in the inputs' dtypes: msda must be as accurate.
    # FLOAT32 locations with half values get FLOAT32 gradients: their peer is grid_sample in
    # FLOAT32 on the same (exactly widened) inputs.
    _, pv, pl, pa = _grads(ref, v, loc, attn, grad_out)
    if loc_dtype != dtype:
        f32 = [t.to(loc_dtype) for t in (v, loc, attn, grad_out)]
        pl = _grads(ref, *f32)[2]
    assert_close(gv, rv, dtype, peer=pv)
    assert_close(gl, rl, loc_dtype, peer=pl)
    assert_close(ga, ra, dtype, peer=pa)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "msda" in str(func):
            self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (True, True, True), (False, True, True)])
def test_only_needed_gradients_are_computed(needs):
    v, ss, lsi, loc, attn = make_inputs(safe=True, seed=12)
    for t, need in zip((v, loc, attn), needs):
        t.requires_grad_(need)
    with _RecordOps() as rec:
        out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
        out.sum().backward()
    backward_calls = [args for name, args in rec.calls if "backward" in name]
    assert len(backward_calls) == 1
    assert tuple(backward_calls[0][-3:]) == needs
    for t, need in zip((v, loc, attn), needs):
        assert (t.grad is not None) == need
    # And the values are right for the ones computed.
    _, rv, rl, ra = _grads(lambda v, l, a: ms_deform_attn_ref(v, ss, lsi, l, a), v, loc, attn,
                           torch.ones_like(out))
    for t, ref in zip((v, loc, attn), (rv, rl, ra)):
        if t.grad is not None:
            assert_close(t.grad, ref)


def test_no_gradient_needed_runs_no_backward():
    v, ss, lsi, loc, attn = make_inputs(seed=13)
    with _RecordOps() as rec:
        out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    assert not out.requires_grad
    assert [name for name, _ in rec.calls] == ["msda.ms_deform_attn.default"]


def test_backward_op_directly():
    v, ss, lsi, loc, attn = make_inputs(safe=True, seed=14)
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    gv, gl, ga = msda.ms_deform_attn_backward(v, ss, lsi, loc, attn, g, need_value=True,
                                              need_locations=False, need_weights=True)
    assert gl is None
    _, rv, _, ra = _grads(lambda v, l, a: ms_deform_attn_ref(v, ss, lsi, l, a), v, loc, attn, g)
    assert_close(gv, rv)
    assert_close(ga, ra)
    # Raw op: skipped gradients come back as empty tensors.
    raw = torch.ops.msda.ms_deform_attn_backward(g, v, ss, lsi, loc, attn, False, True, False)
    assert raw[0].numel() == 0 and raw[2].numel() == 0 and raw[1].shape == loc.shape


def test_backward_is_deterministic_across_threads():
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=64, H=4, D=8, P=4, dtype=torch.float32, seed=15)
    g = torch.randn(2, 64, 32)
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(msda.ms_deform_attn_backward(v, ss, lsi, loc, attn, g))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)
