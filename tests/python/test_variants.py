"""The operator variants of RT-DETRv2 / D-FINE / DEIMv2 on msda's C++ core (CPU tensors): points
per level (``num_points_list``) and ``method="discrete"``, through the torch op (autograd,
fake, opcheck, torch.compile) and the NumPy entry, against the fp64 reference of
_variants_reference.py (itself checked against grid_sample and gradcheck in
test_triton_variants.py)."""
import numpy as np
import pytest
import torch

import msda
import msda.numpy as mnp
from _variants_cases import DTYPES, LEVELS3, METHODS, make
from _variants_cases import assert_close as _assert_close
from _variants_cases import ids as _ids
from _variants_reference import reference_backward, reference_forward

LEVELS4 = ((6, 7), (1, 1), (1, 9), (4, 1))


def _make(levels, counts=None, P=2, B=2, Q=5, H=2, D=6, **kwargs):
    return make(levels, counts, P=P, B=B, Q=Q, H=H, D=D, **kwargs)


def _check(v, ss, lsi, loc, attn, counts, method, seed=1):
    B, Q = loc.shape[:2]
    N = attn[0, 0, 0].numel()
    HD = v.shape[2] * v.shape[3]
    terms = 4 * N + v.shape[3] + 16
    g = torch.randn(B, Q, HD, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed)).to(v.dtype)
    ref = reference_forward(v, ss, loc, attn, counts, method)
    ref_grads = reference_backward(v, ss, loc, attn, g, counts, method)
    leaves = [t.clone().requires_grad_(True) for t in (v, loc, attn)]
    out = msda.ms_deform_attn(leaves[0], ss, lsi, leaves[1], leaves[2], num_points_list=counts,
                              method=method)
    assert out.dtype == v.dtype and out.shape == (B, Q, HD)
    _assert_close(out, ref, terms)
    out.backward(g)
    for leaf, r in zip(leaves, ref_grads):
        assert leaf.grad.dtype == leaf.dtype and leaf.grad.shape == leaf.shape
        _assert_close(leaf.grad, r, terms)
    if method == "discrete":
        assert not leaves[1].grad.any()
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,loc_dtype", DTYPES, ids=_ids)
def test_every_dtype_with_unequal_points(dtype, loc_dtype, method):
    inputs = _make(LEVELS3, [3, 6, 3], dtype=dtype, loc_dtype=loc_dtype, seed=11,
                   safe=method == "default" and dtype != torch.float64)
    _check(*inputs, [3, 6, 3], method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("levels,counts,P", [
    (((1, 1), (1, 3)), [1, 2], None),
    (LEVELS4, [2, 1, 5, 3], None),
    (LEVELS4, [4, 4, 4, 4], None),  # Equal counts in the flat layout.
    (LEVELS3, None, 3),  # The original layout [B, Q, H, L, P, 2].
    (((2, 3),), [4], None),
    (((16, 16), (8, 8), (4, 4)), [3, 6, 3], None),  # D-FINE's decoder counts, SIMD lengths.
], ids=["1x1-1x3", "L4-2153", "L4-equal", "layout6", "L1", "dfine"])
def test_shapes_and_borders(levels, counts, P, method):
    inputs = _make(levels, counts, P=P or 1, Q=37, H=3, D=5, dtype=torch.float32, seed=7)
    _check(*inputs, counts, method)


@pytest.mark.parametrize("method", METHODS)
def test_strided_views(method):
    """Permuted and sliced views of every input, gradients too (no copies made)."""
    v, ss, lsi, loc, attn = _make(LEVELS3, [2, 5, 1], Q=9, dtype=torch.float32, seed=4)
    loc_big = torch.zeros(*loc.shape[:3], loc.shape[3], 5)
    loc_big[..., 1:3] = loc
    loc_view = loc_big[..., 1:3]
    attn_view = attn.transpose(1, 2).contiguous().transpose(1, 2)
    value_view = v.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not loc_view.is_contiguous() and not attn_view.is_contiguous()
    want = msda.ms_deform_attn(v, ss, lsi, loc, attn, num_points_list=[2, 5, 1], method=method)
    got = msda.ms_deform_attn(value_view, ss, lsi, loc_view, attn_view,
                              num_points_list=[2, 5, 1], method=method)
    # Another summation order (the point-by-point path), so not bitwise; both near the reference.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    _check(value_view, ss, lsi, loc_view, attn_view, [2, 5, 1], method)


@pytest.mark.parametrize("method", METHODS)
def test_equal_counts_as_a_list_equal_the_original_layout_bitwise(method):
    v, ss, lsi, loc, attn = _make(LEVELS3, None, P=2, Q=30, dtype=torch.float32, seed=3)
    g = torch.randn(2, 30, 12)
    flat = (loc.flatten(3, 4), attn.flatten(3, 4))
    a = msda.ms_deform_attn(v, ss, lsi, loc, attn, method=method)
    b = msda.ms_deform_attn(v, ss, lsi, *flat, num_points_list=[2, 2, 2], method=method)
    assert torch.equal(a, b)
    ga = msda.ms_deform_attn_backward(v, ss, lsi, loc, attn, g, method=method)
    gb = msda.ms_deform_attn_backward(v, ss, lsi, *flat, g, num_points_list=(2, 2, 2),
                                      method=method)
    assert torch.equal(ga[0], gb[0]) and torch.equal(ga[2].flatten(3, 4), gb[2])
    assert torch.equal(ga[1].flatten(3, 4), gb[1])


@pytest.mark.parametrize("dtype,loc_dtype", DTYPES, ids=_ids)
def test_discrete_rounding_boundaries_and_non_finite(dtype, loc_dtype):
    """x exactly on x * W + 0.5 = k and one step below, on maps 4 and 5 wide; NaN, +-Inf and
    huge coordinates (NaN: pixel 0; +Inf and huge: the last pixel; -Inf: the first)."""
    W = 5
    levels = ((3, 4), (2, W))
    K = 12 + 2 * W
    xs = torch.tensor([(k - 0.5) / w for w in (4, W) for k in range(w + 2)], dtype=torch.float64)
    xs = xs.to(loc_dtype)
    xs = torch.cat([xs, torch.nextafter(xs, torch.tensor(-1.0, dtype=loc_dtype)),
                    torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30],
                                 dtype=loc_dtype)])
    Q = len(xs)
    value = torch.arange(K, dtype=torch.float64).reshape(1, K, 1, 1).to(dtype)
    loc = torch.stack([xs, xs.flip(0)], -1).reshape(1, Q, 1, 1, 2).expand(1, Q, 1, 2, 2)
    loc = loc.contiguous()
    for level in (0, 1):
        attn = torch.zeros(1, Q, 1, 2, dtype=dtype)
        attn[..., level] = 1
        ss = torch.tensor(levels)
        out = msda.ms_deform_attn(value, ss, None, loc, attn, num_points_list=[1, 1],
                                  method="discrete")
        ref = reference_forward(value, ss, loc, attn, [1, 1], "discrete")
        assert torch.equal(out.double(), ref)
    # By hand on the last call (level 1: 2 x 5 at key 12): NaN x -> column 0, +Inf -> 4.
    n = len(xs) - 5
    nan_row = out[0, n, 0].item() - 12
    assert nan_row % W == 0
    assert (out[0, n + 1, 0].item() - 12) % W == W - 1


def test_gradcheck_unequal_points_float64():
    """Finite differences of the op itself (not the reference), off the bilinear kinks."""
    v, ss, lsi, loc, attn = _make(LEVELS3, [2, 3, 1], B=1, Q=3, H=2, D=3, seed=5, safe=True)
    inputs = [t.clone().requires_grad_(True) for t in (v, loc, attn)]

    def f(value, locations, weights):
        return msda.ms_deform_attn(value, ss, lsi, locations, weights, num_points_list=[2, 3, 1])

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)

    def g(value, weights):
        return msda.ms_deform_attn(value, ss, lsi, inputs[1].detach(), weights,
                                   num_points_list=[2, 3, 1], method="discrete")

    assert torch.autograd.gradcheck(g, (inputs[0], inputs[2]), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_opcheck_and_compile(method):
    v, ss, lsi, loc, attn = _make(LEVELS3, [3, 1, 2], Q=4, dtype=torch.float32, seed=8)
    args = (v.requires_grad_(True), ss, lsi, loc.requires_grad_(True), attn.requires_grad_(True),
            [3, 1, 2], method)
    torch.library.opcheck(torch.ops.msda.ms_deform_attn.default, args)

    def f(value, locations, weights):
        return msda.ms_deform_attn(value, ss, lsi, locations, weights, num_points_list=[3, 1, 2],
                                   method=method).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    want = f(v, loc, attn)
    got = compiled(v, loc, attn)
    torch.testing.assert_close(got, want)
    gw = torch.autograd.grad(want, (v, loc, attn))
    gc = torch.autograd.grad(compiled(v, loc, attn), (v, loc, attn))
    for a, b in zip(gc, gw):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_numpy_entry(method):
    v, ss, lsi, loc, attn = _make(LEVELS4, [2, 1, 5, 3], Q=6, dtype=torch.float32, seed=9)
    counts = [2, 1, 5, 3]
    g = torch.randn(2, 6, 12)
    out = mnp.ms_deform_attn(v.numpy(), ss.numpy(), None, loc.numpy(), attn.numpy(),
                             num_points_list=counts, method=method)
    assert isinstance(out, np.ndarray)
    want = msda.ms_deform_attn(v, ss, lsi, loc, attn, num_points_list=counts, method=method)
    assert np.array_equal(out, want.numpy())
    grads = mnp.ms_deform_attn_backward(v.numpy(), ss.numpy(), lsi.numpy(), loc.numpy(),
                                        attn.numpy(), g.numpy(), num_points_list=counts,
                                        method=method)
    want_grads = msda.ms_deform_attn_backward(v, ss, lsi, loc, attn, g, num_points_list=counts,
                                              method=method)
    for a, b in zip(grads, want_grads):
        assert np.array_equal(a, b.numpy())


@pytest.mark.parametrize("call,exc,message", [
    (dict(method="nearest"), ValueError, "method: must be 'default' or 'discrete', got 'nearest'"),
    (dict(num_points_list=[1, 2]), ValueError,
     "num_points_list: must have one entry per level of spatial_shapes (3), got 2 entries"),
    (dict(num_points_list=[1, 0, 2]), ValueError, "num_points_list: entry 1 must be >= 1, got 0"),
    (dict(num_points_list=[1, 2.5, 2]), TypeError, "num_points_list: entry 1 must be an int"),
    (dict(num_points_list="123"), TypeError, "num_points_list: must be a list of ints"),
    (dict(num_points_list=[]), ValueError, "num_points_list: must have one entry per level"),
    (dict(num_points_list=[1, 1, 1]), ValueError,
     "sampling_locations: dim 3 (points, the sum of numPointsList) must be 3, got 6"),
    (dict(num_points_list=[2, 2, 2], six_d=True), ValueError,
     "sampling_locations: must have rank 5 [batch, queries, heads, sum of num_points_list, 2]"),
])
@pytest.mark.parametrize("entry", ["torch", "numpy"])
def test_bad_variant_arguments_name_the_argument(call, exc, message, entry):
    v, ss, lsi, loc, attn = _make(LEVELS3, [2, 2, 2], Q=3, dtype=torch.float32)
    call = dict(call)
    if call.pop("six_d", False):
        loc = loc.reshape(*loc.shape[:3], 3, 2, 2)
        attn = attn.reshape(*attn.shape[:3], 3, 2)
    elif "num_points_list" not in call:
        call["num_points_list"] = [2, 2, 2]
    if entry == "torch":
        with pytest.raises(exc) as info:
            msda.ms_deform_attn(v, ss, lsi, loc, attn, **call)
    else:
        with pytest.raises(exc) as info:
            mnp.ms_deform_attn(v.numpy(), ss.numpy(), lsi.numpy(), loc.numpy(), attn.numpy(),
                               **call)
    assert str(info.value).startswith(message), str(info.value)
