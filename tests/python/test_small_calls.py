"""The direct path of msda.ops: plain CPU calls skip the dispatcher (wrapper -> CPU kernel,
autograd.Function -> CPU kernels). It must give what the dispatcher gives, bit for bit, check
what the dispatcher path checks, and give way to everything that acts on or watches op calls."""
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import msda
import msda.ops as ops
from _reference import make_inputs

VARIANTS = [
    dict(),
    dict(method="discrete"),
    dict(num_points_list=[3, 1]),
    dict(num_points_list=[2, 3], method="discrete"),
]


def _inputs(variant, seed=0, dtype=torch.float32):
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=5, H=2, D=4, P=3, dtype=dtype, safe=True,
                                        seed=seed)
    counts = variant.get("num_points_list")
    if counts is not None:  # [B, Q, H, sum of counts, 2] and [B, Q, H, sum]
        n = sum(counts)
        g = torch.Generator().manual_seed(seed + 1)
        loc = torch.rand(2, 5, 2, n, 2, generator=g, dtype=dtype)
        attn = torch.rand(2, 5, 2, n, generator=g, dtype=dtype)
    return v, ss, lsi, loc, attn


class _PassThrough(TorchDispatchMode):
    """Does nothing, but being on, sends every call through the dispatcher."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Record(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "msda" in str(func):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _run(args, variant, needs, grad_out=None):
    """Output and gradients of one forward + backward through msda.ms_deform_attn."""
    v, ss, lsi, loc, attn = (t.detach().clone() for t in args)
    for t, need in zip((v, loc, attn), needs):
        t.requires_grad_(need)
    out = msda.ms_deform_attn(v, ss, lsi, loc, attn, **variant)
    grads = (None, None, None)
    if any(needs):
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(9),
                                   dtype=out.dtype)
        out.backward(grad_out)
        grads = (v.grad, loc.grad, attn.grad)
    return out.detach(), grads


def _no_dispatcher(monkeypatch):
    """Makes a call through the dispatcher fail, so that a test sees the direct path taken."""
    def refuse(*args, **kwargs):
        raise AssertionError("the call went through the dispatcher")

    monkeypatch.setattr(ops, "_forward_op", refuse)
    monkeypatch.setattr(ops, "_backward_op", refuse)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("needs", [(False, False, False), (True, True, True),
                                   (False, True, False), (True, False, True)], ids=str)
def test_direct_path_matches_the_dispatcher_bit_for_bit(monkeypatch, variant, needs):
    if variant.get("method") == "discrete" and needs == (False, True, False):
        needs = (False, False, True)  # No location gradient with discrete sampling.
    args = _inputs(variant)
    with _PassThrough():
        expected = _run(args, variant, needs)
    _no_dispatcher(monkeypatch)
    actual = _run(args, variant, needs)
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)
    for a, e in zip(actual[1], expected[1]):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_direct_path_on_strided_inputs_and_int32_tables(monkeypatch):
    v, ss, lsi, loc, attn = make_inputs(dtype=torch.float64, index_dtype=torch.int32, safe=True)
    v = v.transpose(0, 1).contiguous().transpose(0, 1)  # Same values, other strides.
    args = (v, ss, lsi, loc[..., ::1], attn)
    with _PassThrough():
        expected = _run(args, {}, (True, True, True))
    _no_dispatcher(monkeypatch)
    actual = _run(args, {}, (True, True, True))
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)
    for a, e in zip(actual[1], expected[1]):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_checks_still_run_after_a_direct_call_with_the_same_shapes():
    v, ss, lsi, loc, attn = _inputs({})
    msda.ms_deform_attn(v, ss, lsi, loc, attn)
    # The C library's checks (values, dtypes) and the wrapper's (types, devices) both stay.
    with pytest.raises(ValueError, match=r"^level_start_index"):
        msda.ms_deform_attn(v, ss, lsi + 1, loc, attn)
    with pytest.raises(TypeError, match=r"^attention_weights"):
        msda.ms_deform_attn(v, ss, lsi, loc, attn.double())
    with pytest.raises(ValueError, match=r"^sampling_locations: must have rank 6"):
        msda.ms_deform_attn(v, ss, lsi, loc[..., 0], attn)
    with pytest.raises(ValueError, match=r"^value: must be a dense"):
        msda.ms_deform_attn(v.to_sparse(), ss, lsi, loc, attn)
    with pytest.raises(ValueError, match=r"^num_points_list: must have one entry per level"):
        msda.ms_deform_attn(v, ss, lsi, loc.flatten(3, 4), attn.flatten(3), num_points_list=[6])
    # And with a gradient: the same checks on the autograd path.
    v.requires_grad_(True)
    msda.ms_deform_attn(v, ss, lsi, loc, attn).sum().backward()
    with pytest.raises(ValueError, match=r"^level_start_index"):
        msda.ms_deform_attn(v, ss, lsi + 1, loc, attn)


def test_direct_backward_takes_an_expanded_gradient(monkeypatch):
    # out.sum().backward() hands the backward a zero-stride gradient.
    args = _inputs({})
    grad_out = torch.ones(()).expand(2, 5, 8)
    with _PassThrough():
        expected = _run(args, {}, (True, True, True), grad_out)
    _no_dispatcher(monkeypatch)
    actual = _run(args, {}, (True, True, True), grad_out)
    for a, e in zip(actual[1], expected[1]):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("watcher", ["dispatch mode", "function mode", "profiler", "autocast",
                                     "jit.trace"])
def test_watchers_see_the_op(monkeypatch, watcher):
    v, ss, lsi, loc, attn = _inputs({})
    v.requires_grad_(True)
    seen = []
    real_forward, real_backward = ops._forward_op, ops._backward_op

    def forward(*args):
        seen.append("forward")
        return real_forward(*args)

    def backward(*args):
        seen.append("backward")
        return real_backward(*args)

    monkeypatch.setattr(ops, "_forward_op", forward)
    monkeypatch.setattr(ops, "_backward_op", backward)
    if watcher == "dispatch mode":
        with _Record() as rec:
            msda.ms_deform_attn(v, ss, lsi, loc, attn).sum().backward()
        assert rec.ops == ["msda.ms_deform_attn.default", "msda.ms_deform_attn_backward.default"]
    elif watcher == "function mode":
        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                seen.append(str(func))
                return func(*args, **(kwargs or {}))

        with Functions():
            msda.ms_deform_attn(v, ss, lsi, loc, attn)
        assert "msda.ms_deform_attn.default" in seen
    elif watcher == "profiler":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            msda.ms_deform_attn(v, ss, lsi, loc, attn).sum().backward()
        keys = {e.key for e in prof.key_averages()}
        assert {"msda::ms_deform_attn", "msda::ms_deform_attn_backward"} <= keys
    elif watcher == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
        assert out.dtype == torch.bfloat16
    elif watcher == "jit.trace":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(lambda v, l, a: msda.ms_deform_attn(v, ss, lsi, l, a),
                                     (v.detach(), loc, attn))
        assert "msda::ms_deform_attn" in str(traced.graph)
    assert "forward" in seen


def test_subclasses_take_the_dispatcher(monkeypatch):
    v, ss, lsi, loc, attn = _inputs({})
    p = torch.nn.Parameter(v.clone())
    expected = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    calls = []
    real = ops._forward_op
    monkeypatch.setattr(ops, "_forward_op", lambda *a: calls.append(1) or real(*a))
    out = msda.ms_deform_attn(p, ss, lsi, loc, attn)
    assert calls and out.grad_fn is not None
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)


def test_vmap_takes_the_dispatcher():
    v, ss, lsi, loc, attn = _inputs({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.vmap(lambda v: msda.ms_deform_attn(v[None], ss, lsi, loc[:1], attn[:1]))(v)
    torch.testing.assert_close(out[:, 0], torch.cat([
        msda.ms_deform_attn(v[i:i + 1], ss, lsi, loc[:1], attn[:1]) for i in range(2)]),
        rtol=0, atol=0)


def test_create_graph_keeps_the_autograd_fallback():
    v, ss, lsi, loc, attn = _inputs({}, dtype=torch.float64)
    v.requires_grad_(True)
    (g,) = torch.autograd.grad(msda.ms_deform_attn(v, ss, lsi, loc, attn).sum(), v,
                               create_graph=True)
    assert g.requires_grad  # Through the backward op's autograd fallback, as before.


def test_level_start_index_from_spatial_shapes_follows_their_values():
    v, ss, lsi, loc, attn = _inputs({})
    torch.testing.assert_close(msda.ms_deform_attn(v, ss, None, loc, attn),
                               msda.ms_deform_attn(v, ss, lsi, loc, attn), rtol=0, atol=0)
    # The same tensor, rewritten in place (same id, address and version-free values): the
    # table must follow the values. Levels swapped keep K = 6*8 + 3*4.
    ss[:] = ss.flip(0).clone()
    lsi2 = msda.level_start_index(ss)
    assert lsi2.tolist() == [0, 12]
    torch.testing.assert_close(msda.ms_deform_attn(v, ss, None, loc, attn),
                               msda.ms_deform_attn(v, ss, lsi2, loc, attn), rtol=0, atol=0)
    # An int32 table, and a table first met under inference mode, then used with a gradient.
    ss32 = torch.tensor([[3, 4], [6, 8]], dtype=torch.int32)
    torch.testing.assert_close(msda.ms_deform_attn(v, ss32, None, loc, attn),
                               msda.ms_deform_attn(v, ss, lsi2, loc, attn), rtol=0, atol=0)
    fresh = torch.tensor([[5, 8], [4, 5]])  # K = 60 again
    with torch.inference_mode():
        msda.ms_deform_attn(v, fresh, None, loc, attn)
    v.requires_grad_(True)
    msda.ms_deform_attn(v, fresh, None, loc, attn).sum().backward()
    # A bad table is still refused with the same message.
    with pytest.raises(ValueError, match=r"^spatial_shapes: must have shape \[levels, 2\]"):
        msda.ms_deform_attn(v, ss[:, :1], None, loc, attn)


def test_negative_bit_views_are_materialised_not_read_raw():
    # z.conj().imag is a float view with the negative bit set: its memory holds +imag. The
    # direct path must leave it to the dispatcher, whose fallback materialises -imag.
    v, ss, lsi, loc, attn = _inputs({})
    z = torch.complex(torch.zeros_like(v), v)
    neg_view = z.conj().imag  # == -v
    assert neg_view.is_neg()
    out = msda.ms_deform_attn(neg_view, ss, lsi, loc, attn)
    expected = msda.ms_deform_attn(-v, ss, lsi, loc, attn)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    g = torch.ones_like(out)
    _, grads = _run((v, ss, lsi, loc, attn), {}, (False, True, True), grad_out=g)
    loc2, attn2 = loc.clone().requires_grad_(True), attn.clone().requires_grad_(True)
    msda.ms_deform_attn(v, ss, lsi, loc2, attn2).backward(torch.complex(torch.zeros_like(g), g)
                                                          .conj().imag.neg())
    torch.testing.assert_close(loc2.grad, grads[1], rtol=0, atol=0)
    torch.testing.assert_close(attn2.grad, grads[2], rtol=0, atol=0)
