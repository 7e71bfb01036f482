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

from _reference import UNIT_ROUNDOFF, ms_deform_attn_ref
from _variants_reference import reference_backward, reference_forward

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
TRITON = GPU or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(not TRITON, reason="no GPU and TRITON_INTERPRET is not 1")


def _level_starts(levels):
    out, s = [], 0
    for h, w in levels:
        out.append(s)
        s += h * w
    return out


def _make(levels, num_points_list=None, P=2, B=1, Q=3, H=2, D=3, dtype=torch.float64,
          loc_dtype=None, seed=0, spread=1.4, safe=False):
    """(value, spatial_shapes, level_start_index, loc, attn) on the CPU, fp64 drawn then rounded
    to dtype. Locations are spread over [-0.2, 1.2] (borders and beyond) unless safe, which
    keeps every point 0.1 pixel away from the pixel-centre lines of its level."""
    g = torch.Generator().manual_seed(seed)
    L = len(levels)
    K = sum(h * w for h, w in levels)
    counts = list(num_points_list) if num_points_list is not None else [P] * L
    N = sum(counts)
    value = torch.randn(B, K, H, D, generator=g, dtype=torch.float64)
    level_of = [l for l, p in enumerate(counts) for _ in range(p)]
    sizes = torch.tensor([[levels[l][1], levels[l][0]] for l in level_of], dtype=torch.float64)
    if safe:
        base = torch.randint(-1, 64, (B, Q, H, N, 2), generator=g).double()
        base = torch.remainder(base + 1, sizes + 1) - 1
        pix = base + 0.1 + 0.8 * torch.rand(B, Q, H, N, 2, generator=g, dtype=torch.float64)
        loc = (pix + 0.5) / sizes
    else:
        loc = torch.rand(B, Q, H, N, 2, generator=g, dtype=torch.float64) * spread - (spread - 1) / 2
    attn = torch.rand(B, Q, H, N, generator=g, dtype=torch.float64)
    if num_points_list is None:
        loc = loc.reshape(B, Q, H, L, P, 2)
        attn = attn.reshape(B, Q, H, L, P)
    ss = torch.tensor(levels, dtype=torch.int64)
    lsi = torch.tensor(_level_starts(levels), dtype=torch.int64)
    return (value.to(dtype), ss, lsi, loc.to(loc_dtype or dtype), attn.to(dtype))


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
