"""The NumPy entry (msda.numpy) against the oracle; it must not import torch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import msda.numpy as mnp
from _reference import assert_close, make_inputs, ms_deform_attn_ref

NP_DTYPES = [(torch.float64, np.float64), (torch.float32, np.float32), (torch.float16, np.float16)]


def _np(args):
    return [t.detach().numpy() for t in args]


@pytest.mark.parametrize("tdtype,ndtype", NP_DTYPES)
@pytest.mark.parametrize("loc_fp32", [False, True])
def test_forward_matches_oracle(tdtype, ndtype, loc_fp32):
    args = make_inputs(B=2, Q=6, H=2, D=8, P=3, dtype=tdtype,
                       loc_dtype=torch.float32 if loc_fp32 else tdtype, seed=20)
    v, ss, lsi, loc, attn = args
    out = mnp.ms_deform_attn(*_np(args))
    assert isinstance(out, np.ndarray) and out.dtype == ndtype and out.shape == (2, 6, 16)
    ref = ms_deform_attn_ref(v.double(), ss, lsi, loc.double(), attn.double())
    assert_close(torch.from_numpy(out), ref, tdtype)


def test_preallocated_out_and_threads_and_int32():
    args = make_inputs(index_dtype=torch.int32, dtype=torch.float32, seed=21)
    v, ss, lsi, loc, attn = _np(args)
    out = np.full((2, 5, 8), np.nan, np.float32)
    res = mnp.ms_deform_attn(v, ss, lsi, loc, attn, out=out, num_threads=1)
    assert res is out
    assert np.array_equal(out, mnp.ms_deform_attn(v, ss, None, loc, attn, num_threads=2))
    # A strided (non-contiguous) out is written in place.
    big = np.zeros((2, 5, 16), np.float32)
    mnp.ms_deform_attn(v, ss, lsi, loc, attn, out=big[:, :, ::2])
    np.testing.assert_allclose(big[:, :, ::2], out, rtol=1e-6, atol=1e-7)
    assert not big[:, :, 1::2].any()


def test_non_contiguous_and_negative_strides_and_read_only():
    args = make_inputs(B=2, Q=4, H=2, D=4, dtype=torch.float64, seed=22)
    v, ss, lsi, loc, attn = _np(args)
    expected = mnp.ms_deform_attn(v, ss, lsi, loc, attn)
    v_t = np.asfortranarray(v)
    loc_rev = loc[:, ::-1].copy()[:, ::-1]  # negative stride on the queries axis
    assert loc_rev.strides[1] < 0
    attn_ro = attn.copy()
    attn_ro.flags.writeable = False
    got = mnp.ms_deform_attn(v_t, ss.tolist(), lsi, loc_rev, attn_ro)
    # Strided rows may take another code path than contiguous ones: equal up to rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tdtype,ndtype", NP_DTYPES)
def test_backward_matches_oracle(tdtype, ndtype):
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=7, H=2, D=4, P=2, dtype=tdtype, safe=True, seed=23)
    g = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(tdtype)
    gv, gl, ga = mnp.ms_deform_attn_backward(*_np((v, ss, lsi, loc, attn)), g.numpy())
    assert gv.dtype == gl.dtype == ga.dtype == ndtype
    leaves = [t.detach().double().requires_grad_(True) for t in (v, loc, attn)]
    ms_deform_attn_ref(leaves[0], ss, lsi, leaves[1], leaves[2]).backward(g.double())
    for got, leaf in zip((gv, gl, ga), leaves):
        assert_close(torch.from_numpy(got), leaf.grad, tdtype)
    only = mnp.ms_deform_attn_backward(*_np((v, ss, lsi, loc, attn)), g.numpy(),
                                       need_value=False, need_weights=False)
    assert only[0] is None and only[2] is None
    assert_close(torch.from_numpy(only[1]), torch.from_numpy(gl), tdtype)


def test_empty_batch():
    v, ss, lsi, loc, attn = _np(make_inputs(B=0, Q=3))
    assert mnp.ms_deform_attn(v, ss, lsi, loc, attn).shape == (0, 3, 8)
    gv, gl, ga = mnp.ms_deform_attn_backward(v, ss, lsi, loc, attn, np.zeros((0, 3, 8)))
    assert gv.shape == v.shape and gl.shape == loc.shape and ga.shape == attn.shape


def test_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import msda, msda.numpy as mnp\n"
        "v = np.ones((1, 6, 1, 2), np.float32)\n"
        "loc = np.full((1, 2, 1, 1, 1, 2), 0.5, np.float32)\n"
        "w = np.ones((1, 2, 1, 1, 1), np.float32)\n"
        "out = mnp.ms_deform_attn(v, [[2, 3]], None, loc, w)\n"
        "assert np.allclose(out, 1.0), out\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(__file__))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
