"""The operator variants of RT-DETRv2 / D-FINE / DEIMv2 on the Triton kernels (points per level,
``num_points_list``, and ``method="discrete"``), against the fp64 reference of
_variants_reference.py, which is itself checked here against grid_sample and gradcheck.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1 before triton is imported); shapes are tiny because the interpreter is slow.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from _reference import ms_deform_attn_ref
from _variants_cases import DTYPES, LEVELS3, METHODS
from _variants_cases import assert_close as _assert_close
from _variants_cases import ids as _ids
from _variants_cases import make as _make
from _variants_reference import reference_backward, reference_forward

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
TRITON = GPU or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON, reason="no GPU and TRITON_INTERPRET is not 1")


# ---------------------------------------------------------------------------------------------
# The reference itself.

def test_reference_default_matches_grid_sample_and_its_gradients():
    levels = ((3, 5), (1, 1), (1, 4), (2, 1))
    v, ss, lsi, loc, attn = _make(levels, P=3, B=2, Q=4, H=2, D=3, safe=True, seed=3)
    # A few points off the map as well.
    loc = loc.clone()
    loc[0, 0, 0, 0, 0] = torch.tensor([1.7, 0.5], dtype=torch.float64)
    loc[1, 2, 1, 3, 2] = torch.tensor([0.3, -0.8], dtype=torch.float64)
    g = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    vv, ll, aa = (t.clone().requires_grad_(True) for t in (v, loc, attn))
    expected = ms_deform_attn_ref(vv, ss, lsi, ll, aa)
    expected.backward(g)
    ours = reference_forward(v, ss, loc, attn)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-12, atol=1e-12)
    # The same points as a points-per-level call, with equal counts.
    flat = reference_forward(v, ss, loc.flatten(3, 4), attn.flatten(3, 4), [3, 3, 3, 3])
    torch.testing.assert_close(flat, expected.detach(), rtol=1e-12, atol=1e-12)
    grads = reference_backward(v, ss, loc, attn, g)
    for ours_g, ref_g in zip(grads, (vv.grad, ll.grad, aa.grad)):
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-10, atol=1e-12)


def test_reference_gradients_pass_gradcheck_with_unequal_points():
    levels = ((3, 4), (1, 2), (2, 2))
    counts = [2, 1, 3]
    v, ss, _, loc, attn = _make(levels, counts, B=1, Q=2, H=2, D=2, safe=True, seed=5)
    inputs = tuple(t.clone().requires_grad_(True) for t in (v, loc, attn))

    def f(v, loc, attn):
        return reference_forward(v, ss, loc, attn, counts)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)
    g = torch.randn(1, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = f(*inputs)
    auto = torch.autograd.grad(out, inputs, g)
    for ours_g, ref_g in zip(reference_backward(v, ss, loc, attn, g, counts), auto):
        torch.testing.assert_close(ours_g, ref_g, rtol=1e-10, atol=1e-12)
    # The discrete mode's value and weight gradients (autograd through its gathers); its
    # location gradient is zero.
    auto = torch.autograd.grad(reference_forward(*inputs[:1], ss, *inputs[1:], counts, "discrete"),
                               inputs, g, allow_unused=True)
    ours = reference_backward(v, ss, loc, attn, g, counts, "discrete")
    torch.testing.assert_close(ours[0], auto[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[2], auto[2], rtol=1e-12, atol=1e-12)
    assert auto[1] is None or not auto[1].any()
    assert not ours[1].any()


def test_reference_discrete_picks_the_pixels_by_hand():
    """A 2x3 map; points written out, including the rounding boundary (x * W + 0.5 integral)
    and non-finite coordinates."""
    value = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1, 1)  # value at (y, x) = 3y + x
    ss = torch.tensor([[2, 3]])
    pts = [
        ((0.0, 0.0), 0),  # x: trunc(0.5) = 0, y: 0.
        ((0.5, 0.25), 3 * 1 + 2),  # x: 1.5 + 0.5 = 2; y: 0.5 + 0.5 = 1.
        ((1.0 / 6, 0.0), 1),  # x * 3 + 0.5 = 1.0 (in fp32 too): pixel 1.
        ((-0.1, 2.0), 3 * 1 + 0),  # x: trunc(0.2) = 0; y: clamped to 1.
        ((-0.5, -0.9), 0),  # Clamped to 0 on both.
        ((float("nan"), float("inf")), 3 * 1 + 0),
        ((float("inf"), -float("inf")), 2),
    ]
    loc = torch.tensor([p for p, _ in pts], dtype=torch.float64).reshape(1, len(pts), 1, 1, 1, 2)
    attn = torch.ones(1, len(pts), 1, 1, 1, dtype=torch.float64)
    out = reference_forward(value, ss, loc, attn, method="discrete")
    assert out.flatten().tolist() == [float(k) for _, k in pts]


# ---------------------------------------------------------------------------------------------
# The Triton kernels.

if TRITON:
    import msda.triton as mt
    from msda.triton import _gpu

LEVELS4 = ((3, 5), (1, 1), (1, 4), (2, 1))


def _dev(tensors):
    return [t.to(DEVICE) for t in tensors]


def _both_backwards(args, g, counts, method, modes=(False, True), **needs):
    """The backward with atomic adds and in the deterministic mode."""
    out = []
    for deterministic in modes:
        mt.set_deterministic(deterministic)
        try:
            out.append(mt.ms_deform_attn_backward(*args, g, num_points_list=counts,
                                                  method=method, **needs))
        finally:
            mt.set_deterministic(None)
    return out


def _check_all(v, ss, lsi, loc, attn, counts, method, seed=1, modes=(False, True)):
    """Forward and the backward (atomic, deterministic: modes) against the reference, in the
    inputs' dtypes."""
    B, Q = loc.shape[:2]
    N = attn[0, 0, 0].numel()
    HD = v.shape[2] * v.shape[3]
    terms = 4 * N + v.shape[3] + 16
    g = torch.randn(B, Q, HD, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed)).to(v.dtype)
    ref = reference_forward(v, ss, loc, attn, counts, method)
    ref_grads = reference_backward(v, ss, loc, attn, g, counts, method)
    args = _dev((v, ss, lsi, loc, attn))
    out = mt.ms_deform_attn(*args, num_points_list=counts, method=method)
    assert out.dtype == v.dtype and out.shape == (B, Q, HD)
    _assert_close(out, ref, terms)
    for grads in _both_backwards(args, g.to(DEVICE), counts, method, modes):
        for got, like, r in zip(grads, (v, loc, attn), ref_grads):
            assert got.dtype == like.dtype and got.shape == like.shape
            _assert_close(got, r, terms)
        if method == "discrete":
            assert not grads[1].any()


@needs_triton
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,loc_dtype", [d for d in DTYPES if d[0] == d[1]], ids=_ids)
def test_every_dtype_with_unequal_points(dtype, loc_dtype, method):
    inputs = _make(LEVELS3, [3, 6, 3], B=1, Q=3, H=1, D=5, dtype=dtype, loc_dtype=loc_dtype,
                   safe=method == "default", seed=11)
    _check_all(*inputs, [3, 6, 3], method)


@needs_triton
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("levels,counts,P", [
    (((1, 1), (1, 3)), [1, 2], None),
    (LEVELS4, [2, 1, 3, 1], None),
    (LEVELS3, None, 2),  # Today's layout [B, Q, H, L, P, 2].
    (((2, 3),), [4], None),
], ids=["1x1-1x3-P12", "L4-P2131", "layout6", "L1"])
def test_shapes_and_borders(levels, counts, P, method):
    """Locations over [-0.2, 1.2]: near and beyond every border."""
    inputs = _make(levels, counts, P=P or 1, B=1, Q=4, H=2, D=3, dtype=torch.float32, seed=7)
    _check_all(*inputs, counts, method, modes=(False,))


@needs_triton
@pytest.mark.parametrize("method", METHODS)
def test_equal_counts_as_a_list_equal_todays_layout_bitwise(method):
    v, ss, lsi, loc, attn = _dev(_make(LEVELS3, None, P=2, Q=5, dtype=torch.float32, seed=3))
    g = torch.randn(1, 5, 6, device=DEVICE)
    flat = (loc.flatten(3, 4), attn.flatten(3, 4))
    a = mt.ms_deform_attn(v, ss, lsi, loc, attn, method=method)
    b = mt.ms_deform_attn(v, ss, lsi, *flat, num_points_list=[2, 2, 2], method=method)
    assert torch.equal(a, b)
    ga = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, g, method=method)
    gb = mt.ms_deform_attn_backward(v, ss, lsi, *flat, g, num_points_list=(2, 2, 2),
                                    method=method)
    assert torch.equal(ga[0], gb[0]) and torch.equal(ga[2].flatten(3, 4), gb[2])
    assert torch.equal(ga[1].flatten(3, 4), gb[1])


def _boundary_points(W, dtype):
    """x on the discrete rounding boundaries of a map W wide (x * W + 0.5 = k), and the next
    representable x below each, in dtype."""
    xs = [(k - 0.5) / W for k in range(0, W + 2)]
    exact = torch.tensor(xs, dtype=torch.float64).to(dtype)
    below = torch.nextafter(exact, torch.tensor(-1.0, dtype=dtype))
    return torch.cat([exact, below])


@needs_triton
@pytest.mark.parametrize("dtype,loc_dtype", DTYPES, ids=_ids)
def test_discrete_rounding_boundaries(dtype, loc_dtype):
    """Points exactly at x * W + 0.5 integral (and one step below): on a map 4 wide (a power of
    two: the products are exact, so the pixel is k, and k - 1 below) and 5 wide (the fp32
    product rounds; the reference rounds the same way)."""
    levels = ((2, 4), (5, 5))
    K = 8 + 25
    xs4 = _boundary_points(4, loc_dtype)
    xs5 = _boundary_points(5, loc_dtype)
    n4, n5 = len(xs4), len(xs5)
    Q = max(n4, n5)
    value = torch.arange(K, dtype=torch.float64).reshape(1, K, 1, 1).to(dtype)
    loc = torch.full((1, Q, 1, 2, 2), 0.3, dtype=loc_dtype)
    loc[0, :n4, 0, 0, 0] = xs4
    loc[0, :n5, 0, 1, 1] = xs5  # y on the 5-high level.
    loc[0, :n5, 0, 1, 0] = xs5.flip(0)
    attn = torch.zeros(1, Q, 1, 2, dtype=dtype)
    attn[..., 0] = 1  # Only the 2x4 level counts in out[..., 0]; a second call for the other.
    ss = torch.tensor(levels)
    lsi = torch.tensor([0, 8])
    counts = [1, 1]
    out = mt.ms_deform_attn(*_dev((value, ss, lsi, loc, attn)), num_points_list=counts,
                            method="discrete").cpu()
    ref = reference_forward(value, ss, loc, attn, counts, "discrete")
    assert torch.equal(out.double(), ref)
    # The 2x4 level: y = 0.3 gives row 1 (trunc(1.1)); x = (k - 0.5) / 4 is pixel min(k, 3)
    # (exact in every dtype). The number below it may round up again when added to 0.5 (the
    # reference does the same), so only the exact points are written out here.
    expected = [4.0 + min(k, 3) for k in range(0, 6)]
    assert out[0, :6, 0].tolist() == expected
    attn2 = torch.zeros_like(attn)
    attn2[..., 1] = 1
    out2 = mt.ms_deform_attn(*_dev((value, ss, lsi, loc, attn2)), num_points_list=counts,
                             method="discrete").cpu()
    assert torch.equal(out2.double(), reference_forward(value, ss, loc, attn2, counts,
                                                        "discrete"))


@needs_triton
def test_non_finite_and_far_locations():
    levels = ((3, 4), (1, 2))
    v, ss, lsi, loc, attn = _make(levels, [5, 1], Q=2, H=1, D=2, dtype=torch.float32, seed=2)
    inf, nan = float("inf"), float("nan")
    loc[0, 0, 0, :5] = torch.tensor([[nan, 0.5], [0.5, inf], [-inf, 1e30], [1.2, -0.3],
                                     [inf, -inf]])
    loc[0, 0, 0, 5] = torch.tensor([nan, nan])
    args = _dev((v, ss, lsi, loc, attn))
    g = torch.randn(1, 2, 2)
    # Default: every point of query 0 contributes nothing and gets zero gradients.
    out = mt.ms_deform_attn(*args, num_points_list=[5, 1]).cpu()
    assert bool((out[0, 0] == 0).all()) and bool(torch.isfinite(out).all())
    gv, gl, ga = mt.ms_deform_attn_backward(*args, g.to(DEVICE), num_points_list=[5, 1])
    assert not gl.cpu()[0, 0].any() and not ga.cpu()[0, 0].any()
    # Discrete: NaN reads pixel 0, +inf the last, -inf the first, on each axis.
    out = mt.ms_deform_attn(*args, num_points_list=[5, 1], method="discrete").cpu()
    ref = reference_forward(v, ss, loc, attn, [5, 1], "discrete")
    _assert_close(out, ref, 16)
    rows = [2 * 4 + 0, 2 * 4 + 2, 2 * 4 + 0, 0 * 4 + 3, 0 * 4 + 3]  # Level 0 pixels by hand.
    by_hand = sum(attn[0, 0, 0, i] * v[0, r, 0] for i, r in enumerate(rows))
    by_hand = by_hand + attn[0, 0, 0, 5] * v[0, 12, 0]
    torch.testing.assert_close(out[0, 0], by_hand, rtol=1e-6, atol=1e-6)
    grads = mt.ms_deform_attn_backward(*args, g.to(DEVICE), num_points_list=[5, 1],
                                       method="discrete")
    for got, r in zip(grads, reference_backward(v, ss, loc, attn, g, [5, 1], "discrete")):
        _assert_close(got, r, 16)


@needs_triton
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, False, True)],
                         ids=["value", "locations", "weights", "value-weights"])
def test_each_gradient_alone(needs, method):
    counts = [1, 3, 2]
    v, ss, lsi, loc, attn = _make(LEVELS3, counts, Q=3, H=2, D=3, dtype=torch.float32,
                                  safe=method == "default", seed=4)
    g = torch.randn(1, 3, 6, generator=torch.Generator().manual_seed(3))
    ref = reference_backward(v, ss, loc, attn, g, counts, method)
    names = ("need_value", "need_locations", "need_weights")
    for grads in _both_backwards(_dev((v, ss, lsi, loc, attn)), g.to(DEVICE), counts, method,
                                 **dict(zip(names, needs))):
        for got, need, r in zip(grads, needs, ref):
            if need:
                _assert_close(got, r, 32)
            else:
                assert got is None


@needs_triton
@pytest.mark.parametrize("method", METHODS)
def test_deterministic_mode_is_bitwise_repeatable(method):
    """Many queries on small maps: every grad_value row sums many entries."""
    counts = [3, 1, 2]
    levels = ((2, 2), (1, 1), (1, 3))
    v, ss, lsi, loc, attn = _make(levels, counts, Q=16, H=1, D=4, dtype=torch.float32, seed=8)
    g = torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(5))
    args = _dev((v, ss, lsi, loc, attn))
    mt.set_deterministic(True)
    try:
        first = mt.ms_deform_attn_backward(*args, g.to(DEVICE), num_points_list=counts,
                                           method=method)
        second = mt.ms_deform_attn_backward(*args, g.to(DEVICE), num_points_list=counts,
                                            method=method)
    finally:
        mt.set_deterministic(None)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    _assert_close(first[0], reference_backward(v, ss, loc, attn, g, counts, method)[0], 128)


@needs_triton
@pytest.mark.parametrize("method", METHODS)
def test_autograd_strided_inputs_and_the_gpu_entries(method):
    """Autograd through ms_deform_attn; locations sliced out of a larger tensor and weights
    expanded over queries; and _gpu's entries (positional and keyword variant arguments)."""
    counts = [2, 1, 3]
    v, ss, lsi, loc, attn = _make(LEVELS3, counts, Q=3, H=1, D=3, dtype=torch.float64,
                                  safe=True, seed=6)
    big = torch.zeros(1, 3, 1, 8, 3, dtype=torch.float64)
    big[:, :, :, 1:7, 1:] = loc
    loc = big[:, :, :, 1:7, 1:]
    attn = attn[:, :1].expand(attn.shape)
    assert not loc.is_contiguous() and attn.stride(1) == 0
    g = torch.randn(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = reference_backward(v, ss, loc, attn, g, counts, method)
    dv, dl, da = (t.to(DEVICE).requires_grad_(True) for t in (v, loc, attn))
    out = mt.ms_deform_attn(dv, ss, lsi, dl, da, num_points_list=counts, method=method)
    _assert_close(out, reference_forward(v, ss, loc, attn, counts, method), 32)
    out.backward(g.to(DEVICE))
    for t, r in zip((dv, dl, da), ref):
        _assert_close(t.grad, r, 32)
    args = _dev((v, ss, lsi, loc, attn))
    fwd = _gpu.forward(*args, counts, method)
    assert torch.equal(fwd, _gpu.forward_traced(*args, num_points_list=counts, method=method))
    _assert_close(fwd, reference_forward(v, ss, loc, attn, counts, method), 32)
    bwd = _gpu.backward(g.to(DEVICE), *args, True, True, True, counts, method)
    bwd_kw = _gpu.backward_traced(g.to(DEVICE), *args, True, True, True,
                                  num_points_list=counts, method=method)
    for a, b, r in zip(bwd, bwd_kw, ref):
        _assert_close(a, r, 32)
        _assert_close(b, r, 32)


@needs_triton
@pytest.mark.parametrize("B,Q", [(0, 3), (2, 0)])
def test_empty_batch_and_queries(B, Q):
    v, ss, lsi, loc, attn = _dev(_make(LEVELS3, [1, 2, 1], B=B, Q=Q, H=2, D=2,
                                       dtype=torch.float32))
    for method in METHODS:
        out = mt.ms_deform_attn(v, ss, lsi, loc, attn, num_points_list=[1, 2, 1], method=method)
        assert out.shape == (B, Q, 4)
        gv, gl, ga = mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, torch.zeros_like(out),
                                                num_points_list=[1, 2, 1], method=method)
        assert gv.shape == v.shape and not gv.any()
        assert gl.shape == loc.shape and ga.shape == attn.shape


def _error_base():
    return _dev(_make(LEVELS3, [3, 6, 3], B=1, Q=2, H=2, D=2, dtype=torch.float32))


ERRORS = [
    # (exception, message regex, num_points_list, method, changes to (loc, attn))
    (ValueError, r"^method: must be 'default' or 'discrete', got 'nearest'", [3, 6, 3],
     "nearest", None),
    (ValueError, r"^method: must be .* got None", [3, 6, 3], None, None),
    (ValueError, r"^num_points_list: must have one entry per level of spatial_shapes \(3\), "
     r"got 2 entries", [3, 9], "default", None),
    (ValueError, r"^num_points_list: entry 1 must be >= 1, got 0", [3, 0, 9], "default", None),
    (TypeError, r"^num_points_list: entry 0 must be an int, got float", [3.0, 6, 3],
     "default", None),
    (TypeError, r"^num_points_list: entry 2 must be an int, got bool", [3, 6, True],
     "discrete", None),
    (TypeError, r"^num_points_list: must be a list of ints .* got str", "363",
     "default", None),
    (ValueError, r"^sampling_locations: dim 3 \(points, the sum of num_points_list\) must be "
     r"12, got 11", [3, 6, 3], "default", lambda l, a: (l[:, :, :, :11], a)),
    (ValueError, r"^attention_weights: dim 3 \(points, the sum of num_points_list\) must be "
     r"12, got 13", [3, 6, 3], "discrete",
     lambda l, a: (l, torch.cat([a, a[..., :1]], -1))),
    (ValueError, r"^sampling_locations: must have rank 5 \[batch, queries, heads, points, 2\]",
     [3, 6, 3], "default", lambda l, a: (l.reshape(1, 2, 2, 3, 4, 2), a)),
    (ValueError, r"^attention_weights: must have rank 4 \[batch, queries, heads, points\]",
     [3, 6, 3], "default", lambda l, a: (l, a.reshape(1, 2, 2, 3, 4))),
    (ValueError, r"^sampling_locations: dim 4 \(\(x, y\)\) must be 2", [3, 6, 3], "default",
     lambda l, a: (torch.cat([l, l], -1), a)),
    (ValueError, r"^attention_weights: dim 1 \(queries, from sampling_locations\)",
     [3, 6, 3], "default", lambda l, a: (l, a[:, :1])),
    (ValueError, r"^sampling_locations: must have rank 6", None, "discrete", None),
]


@needs_triton
@pytest.mark.parametrize("exc,pattern,counts,method,change", ERRORS,
                         ids=[e[1][1:50] for e in ERRORS])
def test_bad_variant_arguments_are_refused(exc, pattern, counts, method, change):
    v, ss, lsi, loc, attn = _error_base()
    if change is not None:
        loc, attn = change(loc, attn)
    with pytest.raises(exc, match=pattern):
        mt.ms_deform_attn(v, ss, lsi, loc, attn, num_points_list=counts, method=method)
    g = torch.zeros(1, 2, 4, device=DEVICE)
    with pytest.raises(exc, match=pattern):
        mt.ms_deform_attn_backward(v, ss, lsi, loc, attn, g, num_points_list=counts,
                                   method=method)
