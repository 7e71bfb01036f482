"""Forward of msda.ms_deform_attn against the grid_sample oracle."""
import numpy as np
import pytest
import torch

import msda
from _reference import assert_close, make_inputs, ms_deform_attn_ref

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def oracle(args):
    v, ss, lsi, loc, attn = args
    return ms_deform_attn_ref(v.double(), ss, lsi, loc.double(), attn.double())


def peer(args):
    """The grid_sample oracle in the inputs' own dtype: the error msda must not exceed."""
    return ms_deform_attn_ref(*args)


def test_fp64_matches_oracle():
    args = make_inputs(B=2, Q=7, H=3, D=5, P=4, levels=((7, 9), (4, 5), (2, 3)))
    out = msda.ms_deform_attn(*args)
    assert out.shape == (2, 7, 15) and out.dtype == torch.float64
    assert_close(out, oracle(args))


@pytest.mark.parametrize(
    "dtype,loc_fp32",
    [(d, False) for d in DTYPES] + [(d, True) for d in DTYPES if d != torch.float32],
)
def test_every_dtype(dtype, loc_fp32):
    args = make_inputs(B=2, Q=6, H=2, D=8, P=3, dtype=dtype,
                       loc_dtype=torch.float32 if loc_fp32 else dtype, seed=1)
    out = msda.ms_deform_attn(*args)
    assert out.dtype == dtype
    assert_close(out, oracle(args), dtype, peer=peer(args))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_index_dtypes(index_dtype):
    args = make_inputs(index_dtype=index_dtype, seed=2)
    assert args[1].dtype == index_dtype and args[2].dtype == index_dtype
    assert_close(msda.ms_deform_attn(*args), oracle(args))


def test_list_spatial_shapes_and_computed_level_start_index():
    v, ss, lsi, loc, attn = make_inputs(seed=3)
    expected = oracle((v, ss, lsi, loc, attn))
    assert_close(msda.ms_deform_attn(v, ss.tolist(), None, loc, attn), expected)
    assert torch.equal(msda.ops.level_start_index(ss), lsi)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_level_start_index_helper_is_one_for_torch_and_numpy(dtype):
    import msda.numpy as mnp

    ss = torch.tensor([[7, 5], [3, 11], [1, 1], [2, 9]], dtype=dtype)
    expected = [0, 35, 68, 69]
    got = msda.ops.level_start_index(ss)
    assert got.dtype == torch.int64 and got.tolist() == expected
    for arg in (ss.numpy(), ss.tolist()):
        got = mnp.level_start_index(arg)
        assert got.dtype == np.int64 and got.tolist() == expected
    assert mnp.level_start_index is msda.ops.level_start_index
    for bad in ([3, 4, 1, 2], torch.zeros(0, 2, dtype=dtype), torch.zeros(2, 3, dtype=dtype)):
        with pytest.raises(ValueError, match=r"^spatial_shapes: must have shape \[levels, 2\]"):
            msda.ops.level_start_index(bad)


def _strided(t, perm):
    """Same values as t, stored with the dims permuted (so non-contiguous), plus a slice."""
    inv = [perm.index(i) for i in range(t.dim())]
    big = torch.cat([t.permute(perm), t.permute(perm)], dim=0).contiguous()
    return big[: t.shape[perm[0]]].permute(inv)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_non_contiguous_inputs(dtype):
    args = make_inputs(B=2, Q=5, H=3, D=4, P=2, dtype=dtype, seed=4)
    v, ss, lsi, loc, attn = args
    v2 = _strided(v, [3, 1, 0, 2])
    loc2 = _strided(loc, [5, 2, 0, 4, 3, 1])
    attn2 = _strided(attn, [4, 0, 3, 2, 1])
    ss2 = torch.stack([ss, ss], dim=1)[:, 0]  # rows 2 elements apart
    lsi2 = torch.stack([lsi, lsi], dim=1)[:, 1]
    for a, b in ((v, v2), (loc, loc2), (attn, attn2), (ss, ss2), (lsi, lsi2)):
        assert torch.equal(a, b)
    assert not any(t.is_contiguous() for t in (v2, loc2, attn2, ss2, lsi2))
    out = msda.ms_deform_attn(v2, ss2, lsi2, loc2, attn2)
    # Contiguous and strided rows may take different (SIMD / scalar) code paths: equal up to
    # rounding, not necessarily bitwise.
    assert_close(out, msda.ms_deform_attn(*args), dtype)
    assert_close(out, oracle(args), dtype)


def test_expanded_inputs():
    # Stride-0 (broadcast) inputs are read as they are.
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=4, seed=5)
    vb, locb, attnb = v.expand(3, -1, -1, -1), loc.expand(3, *loc.shape[1:]), attn.expand(3, *attn.shape[1:])
    out = msda.ms_deform_attn(vb, ss, lsi, locb, attnb)
    assert_close(out, oracle((vb, ss, lsi, locb, attnb)))


@pytest.mark.parametrize("B,Q", [(0, 5), (2, 0), (0, 0)])
def test_empty_batch_or_queries(B, Q):
    args = [t.requires_grad_(t.is_floating_point()) for t in make_inputs(B=B, Q=Q, H=2, D=4)]
    out = msda.ms_deform_attn(*args)
    assert out.shape == (B, Q, 8)
    out.sum().backward()
    v, _, _, loc, attn = args
    assert v.grad.shape == v.shape and torch.all(v.grad == 0)
    assert loc.grad.shape == loc.shape and attn.grad.shape == attn.shape


def test_thread_count_does_not_change_result():
    args = make_inputs(B=2, Q=40, H=4, D=8, P=4, dtype=torch.float32, seed=6)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = msda.ms_deform_attn(*args)
        torch.set_num_threads(2)
        two = msda.ms_deform_attn(*args)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_out_of_map_points_are_zero():
    v, ss, lsi, loc, attn = make_inputs(seed=7)
    far = torch.full_like(loc, 5.0)
    assert torch.all(msda.ms_deform_attn(v, ss, lsi, far, attn) == 0)


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    cases = [make_inputs(B=1, Q=30, H=2, D=8, P=4, dtype=torch.float32, seed=s) for s in range(4)]
    expected = [msda.ms_deform_attn(*a) for a in cases]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: msda.ms_deform_attn(*a), cases * 5))
    for i, r in enumerate(results):
        assert torch.equal(r, expected[i % 4])
