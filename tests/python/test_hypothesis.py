"""Property-based tests (hypothesis): random small problems, laid out in random ways, against
the grid_sample oracle, and random bad calls, which must raise a ValueError / TypeError whose
message names the argument. Nothing may crash.

Every property runs with ``derandomize=True`` (the same examples on every run, for CI) and no
example database. The data of each example comes from a NumPy generator seeded by a drawn
integer; hypothesis draws the structure (sizes, dtypes, layouts, which points are special, which
argument is broken and how).
"""
import dataclasses
import math

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import msda  # noqa: E402
import msda.numpy as mnp  # noqa: E402
from _reference import assert_close, ms_deform_attn_ref  # noqa: E402
from _reference import level_start_index as ref_level_start_index  # noqa: E402

NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
# A refusal's message starts with the name of what is wrong ("output" is how the C library
# names the numpy entry's ``out``).
PREFIXES = NAMES + ("grad_output", "output", "out", "num_threads")

TORCH_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
NUMPY_FLOATS = (torch.float64, torch.float32, torch.float16)  # NumPy has no bfloat16
INDEX_DTYPES = (torch.int32, torch.int64)

COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)

# Special sampling coordinates. The first five fail the sampling gate (no contribution, zero
# gradients); the others sit exactly on the gate's edge, a pixel centre or the map border,
# where the bilinear sample is continuous but has kinks (so they are used in forward only).
NONFINITE_SPECIALS = ("nan", "inf", "-inf", "1e30", "-1e30")
ALL_SPECIALS = NONFINITE_SPECIALS + ("gate_low", "gate_high", "centre", "border0", "border1")


def _special(kind, size, k):
    fixed = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "1e30": 1e30, "-1e30": -1e30,
             "border0": 0.0, "border1": 1.0}
    if kind in fixed:
        return fixed[kind]
    if kind == "gate_low":  # pixel coordinate exactly -1
        return -0.5 / size
    if kind == "gate_high":  # pixel coordinate exactly size
        return 1.0 + 0.5 / size
    return ((k % size) + 0.5) / size  # "centre": exactly on a pixel centre


@dataclasses.dataclass
class Problem:
    B: int
    Q: int
    H: int
    D: int
    P: int
    levels: list
    dtype: torch.dtype
    value: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    sampling_locations: torch.Tensor
    attention_weights: torch.Tensor
    rng: np.random.Generator

    @property
    def L(self):
        return len(self.levels)

    def tensors(self):
        return [self.value, self.spatial_shapes, self.level_start_index,
                self.sampling_locations, self.attention_weights]

    def grad_output(self):
        g = self.rng.standard_normal((self.B, self.Q, self.H * self.D))
        return torch.from_numpy(g).to(self.dtype)


@st.composite
def problems(draw, dtypes, loc_fp32=True, specials=ALL_SPECIALS):
    """A valid small problem; contiguous tensors already rounded to their dtypes."""
    # B = 0 / Q = 0 (empty output) in about 1 example in 10 each.
    B = draw(st.sampled_from([1, 2, 1, 2, 0, 2, 1, 2, 1, 2]))
    Q = draw(st.sampled_from([3, 1, 6, 2, 0, 5, 4, 1, 2, 6]))
    H = draw(st.integers(1, 3))
    D = draw(st.integers(1, 9))
    P = draw(st.integers(1, 3))
    levels = draw(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3))
    L = len(levels)
    dtype = draw(st.sampled_from(dtypes))
    loc_dtype = torch.float32 if loc_fp32 and draw(st.booleans()) else dtype
    ss_dtype = draw(st.sampled_from(INDEX_DTYPES))
    lsi_dtype = draw(st.sampled_from(INDEX_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    K = sum(h * w for h, w in levels)
    value = rng.standard_normal((B, K, H, D))
    loc = rng.uniform(-0.3, 1.3, (B, Q, H, L, P, 2))
    weights = rng.uniform(0.0, 1.0, (B, Q, H, L, P))
    if specials and loc.size:
        points = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(specials),
                                         st.integers(0, 2), st.integers(0, 4)), max_size=4))
        for flat, kind, component, k in points:
            idx = np.unravel_index(flat % (loc.size // 2), loc.shape[:-1])
            h_l, w_l = levels[idx[3]]
            for c in ((0, 1) if component == 2 else (component,)):
                loc[idx + (c,)] = _special(kind, w_l if c == 0 else h_l, k)  # x uses W, y H
    ss = torch.tensor(levels, dtype=torch.int64)
    return Problem(
        B, Q, H, D, P, levels, dtype,
        torch.from_numpy(value).to(dtype),
        ss.to(ss_dtype),
        ref_level_start_index(ss).to(lsi_dtype),
        torch.from_numpy(loc).to(loc_dtype),
        torch.from_numpy(weights).to(dtype),
        rng,
    )


# ----------------------------------------------------------------------------------------
# Layouts: the same values (or, for "expand", values broadcast along one dim) stored with
# other strides. Gaps left by slicing are filled with garbage, so reading a wrong element
# shows up.


def _garbage(dtype):
    return math.nan if dtype.is_floating_point else -777


def _sliced(t, d, step, offset):
    shape = list(t.shape)
    shape[d] = t.shape[d] * step + offset
    big = torch.full(shape, _garbage(t.dtype), dtype=t.dtype)
    index = [slice(None)] * t.dim()
    index[d] = slice(offset, offset + step * t.shape[d], step)
    big[tuple(index)] = t
    return big[tuple(index)]


def torch_layout(draw, t, allow_expand=True):
    modes = ["contiguous", "permute", "slice", "permute+slice"]
    if allow_expand and any(n >= 1 for n in t.shape):
        modes.append("expand")
    mode = draw(st.sampled_from(modes))
    if mode == "expand":
        d = draw(st.sampled_from([i for i, n in enumerate(t.shape) if n >= 1]))
        return t.narrow(d, 0, 1).expand(t.shape)
    perm = list(range(t.dim()))
    if "permute" in mode:
        perm = list(draw(st.permutations(range(t.dim()))))
    inverse = [perm.index(i) for i in range(t.dim())]
    t = t.permute(perm).contiguous()
    if "slice" in mode:
        step = draw(st.integers(2, 3))
        t = _sliced(t, draw(st.integers(0, t.dim() - 1)), step, draw(st.integers(0, step - 1)))
    return t.permute(inverse)


def numpy_layout(draw, t, allow_list):
    """A NumPy array (or list) with t's values, in one of NumPy's odd layouts."""
    a = torch_layout(draw, t, allow_expand=t.is_floating_point()).numpy()
    modes = ["as is", "negative", "fortran", "misaligned", "odd strides", "read-only"]
    if allow_list and a.size:  # an empty nested list loses the shape
        modes.append("list")
    mode = draw(st.sampled_from(modes))
    if mode == "negative" and any(n > 1 for n in a.shape):
        # Only along dims of size > 1: a negative stride on a size-1 dim is refused (a known
        # bug, test_numpy_negative_stride_on_size_one_dim below).
        d = draw(st.sampled_from([i for i, n in enumerate(a.shape) if n > 1]))
        return np.flip(np.flip(a, d).copy(), d)  # same values, negative stride on d
    if mode == "fortran":
        return np.asfortranarray(a)
    if mode == "misaligned" and a.size:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        out = np.ndarray(a.shape, a.dtype, buffer=buf, offset=1)
        out[...] = a
        return out
    if mode == "odd strides" and a.size:
        strides, s = [], a.itemsize + 1  # not a multiple of the item size
        for n in reversed(a.shape):
            strides.append(s)
            s = s * max(n, 1) + 1
        strides = tuple(reversed(strides))
        nbytes = sum((n - 1) * st_ for n, st_ in zip(a.shape, strides)) + a.itemsize
        out = np.ndarray(a.shape, a.dtype, buffer=np.zeros(nbytes, np.uint8), strides=strides)
        out[...] = a
        return out
    if mode == "read-only":
        a = a.view()
        a.flags.writeable = False
        return a
    if mode == "list":
        return a.tolist()
    return a


# ----------------------------------------------------------------------------------------
# Oracle


def _f64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).contiguous()
    return torch.from_numpy(np.array(x, dtype=np.float64))


def masked_oracle(levels):
    """ms_deform_attn_ref with points whose coordinates are NaN, +-Inf or huge given weight 0
    (they fail msda's sampling gate; grid_sample would turn NaN into NaN)."""
    ss = torch.tensor(levels, dtype=torch.int64)
    lsi = ref_level_start_index(ss)

    def fn(v, loc, w):
        bad = ~torch.isfinite(loc).all(-1) | (loc.abs() > 1e6).any(-1)
        loc = torch.where(bad[..., None], torch.full_like(loc, 0.5), loc)
        w = torch.where(bad, torch.zeros_like(w), w)
        return ms_deform_attn_ref(v, ss, lsi, loc, w)

    return fn


def check_close(actual, expected, dtype, value=None, weights=None, peer=None):
    """assert_close with the scale of one term, max|value| * max|weight|, as a floor (an
    output that nearly cancels is still compared at the precision of its terms); peer, the
    oracle run in dtype, also bounds the error where it is finite (large half values can
    overflow it)."""
    if isinstance(actual, np.ndarray):
        actual = torch.from_numpy(np.ascontiguousarray(actual))
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if value is not None and value.numel() and weights.numel():
        scale = max(scale, value.abs().max().item() * weights.abs().max().item())
    if peer is not None and not torch.isfinite(peer).all():
        peer = None
    assert_close(actual, expected, dtype, scale=scale, peer=peer)


# ----------------------------------------------------------------------------------------
# Valid problems against the oracle


@settings(max_examples=250, **COMMON)
@given(data=st.data())
def test_torch_forward_matches_oracle(data):
    p = data.draw(problems(TORCH_FLOATS))
    v, ss, lsi, loc, w = (torch_layout(data.draw, t, allow_expand=t.is_floating_point())
                          for t in p.tensors())
    ss_arg = ss.tolist() if data.draw(st.booleans()) else ss
    lsi_arg = data.draw(st.sampled_from([lsi, None, lsi.tolist()]))
    note(f"dtype {p.dtype}, loc {loc.dtype}, strides {[t.stride() for t in (v, loc, w)]}")
    out = msda.ms_deform_attn(v, ss_arg, lsi_arg, loc, w)
    assert out.dtype == p.dtype and out.shape == (p.B, p.Q, p.H * p.D)
    expected = masked_oracle(p.levels)(_f64(v), _f64(loc), _f64(w))
    # In half types the oracle in the same dtype bounds the error too (FLOAT32 and FLOAT64
    # compute in their own precision: the dtype's table bounds them).
    half = p.dtype in (torch.float16, torch.bfloat16)
    peer = masked_oracle(p.levels)(v, loc, w) if half else None
    check_close(out, expected, p.dtype, _f64(v), _f64(w), peer=peer)


@settings(max_examples=200, **COMMON)
@given(data=st.data())
def test_numpy_forward_matches_oracle(data):
    p = data.draw(problems(NUMPY_FLOATS))
    f64 = p.dtype == torch.float64
    v, ss, lsi, loc, w = (numpy_layout(data.draw, t, allow_list=f64 or not t.is_floating_point())
                          for t in p.tensors())
    lsi = data.draw(st.sampled_from([lsi, None]))
    out_mode = data.draw(st.sampled_from(["none", "fresh", "strided", "fortran"]))
    shape = (p.B, p.Q, p.H * p.D)
    np_dtype = torch.empty(0, dtype=p.dtype).numpy().dtype
    out = None
    if out_mode == "fresh":
        out = np.full(shape, np.nan, np_dtype)
    elif out_mode == "strided":
        out = np.full((p.B, p.Q, 2 * p.H * p.D), np.nan, np_dtype)[:, :, 1::2]
    elif out_mode == "fortran":
        out = np.asfortranarray(np.full(shape, np.nan, np_dtype))
    threads = data.draw(st.sampled_from([None, 0, 1, 2, 3]))
    res = mnp.ms_deform_attn(v, ss, lsi, loc, w, out=out, num_threads=threads)
    assert isinstance(res, np.ndarray) and res.dtype == np_dtype and res.shape == shape
    if out is not None:
        assert res is out
    expected = masked_oracle(p.levels)(_f64(v), _f64(loc), _f64(w))
    check_close(res, expected, p.dtype, _f64(v), _f64(w))


def _torch_grads(fn, leaves, grad_out):
    leaves = [t.detach().requires_grad_(True) for t in leaves]
    fn(*leaves).backward(grad_out)
    return [t.grad for t in leaves]


@settings(max_examples=100, **COMMON)
@given(data=st.data())
def test_torch_backward_fp64_matches_oracle_autograd(data):
    p = data.draw(problems((torch.float64,), specials=NONFINITE_SPECIALS))
    v, ss, lsi, loc, w = (torch_layout(data.draw, t, allow_expand=t.is_floating_point())
                          for t in p.tensors())
    grad_out = torch_layout(data.draw, p.grad_output())
    gv, gl, gw = _torch_grads(lambda v, l, w: msda.ms_deform_attn(v, ss, lsi, l, w),
                              (v, loc, w), grad_out)
    rv, rl, rw = _torch_grads(masked_oracle(p.levels), (_f64(v), _f64(loc), _f64(w)),
                              _f64(grad_out))
    assert gv.dtype == torch.float64 and gl.dtype == loc.dtype and gw.dtype == torch.float64
    assert_close(gv, rv, torch.float64)
    assert_close(gl, rl, loc.dtype)  # float32 locations: float32 gradients
    assert_close(gw, rw, torch.float64)


@settings(max_examples=80, **COMMON)
@given(data=st.data())
def test_numpy_backward_matches_oracle_autograd(data):
    p = data.draw(problems((torch.float64, torch.float32), specials=NONFINITE_SPECIALS))
    f64 = p.dtype == torch.float64
    v, ss, lsi, loc, w = (numpy_layout(data.draw, t, allow_list=f64 or not t.is_floating_point())
                          for t in p.tensors())
    grad_out = numpy_layout(data.draw, p.grad_output(), allow_list=f64)
    grads = mnp.ms_deform_attn_backward(v, ss, lsi, loc, w, grad_out)
    refs = _torch_grads(masked_oracle(p.levels), (_f64(v), _f64(loc), _f64(w)), _f64(grad_out))
    dtypes = (p.dtype, p.sampling_locations.dtype, p.dtype)
    for got, ref, dtype in zip(grads, refs, dtypes):
        assert got.dtype == torch.empty(0, dtype=dtype).numpy().dtype
        check_close(got, ref, dtype)
    # Asking for a subset gives None for the others and the same values for the rest.
    need = data.draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    some = mnp.ms_deform_attn_backward(v, ss, lsi, loc, w, grad_out, need_value=need[0],
                                       need_locations=need[1], need_weights=need[2])
    for got, full, needed in zip(some, grads, need):
        if needed:
            np.testing.assert_array_equal(got, full)
        else:
            assert got is None


@settings(max_examples=100, **COMMON)
@given(data=st.data())
def test_nonfinite_value_or_weight_propagates_only_where_it_is_read(data):
    """A NaN / Inf in value or attention_weights makes exactly the outputs that read it
    non-finite; every other output equals the oracle (with that entry set to 0)."""
    p = data.draw(problems((torch.float64, torch.float32), specials=()))
    entry = data.draw(st.sampled_from(["value", "attention_weights"]))
    t = getattr(p, entry)
    if t.numel() == 0:
        return
    idx = np.unravel_index(data.draw(st.integers(0, t.numel() - 1)), tuple(t.shape))
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    use_numpy = data.draw(st.booleans())

    def with_entry(x, val):
        x = x.clone()
        x[idx] = val
        return x

    v, w = p.value, p.attention_weights
    if entry == "value":
        v = with_entry(v, bad)
    else:
        w = with_entry(w, bad)
    args = [v, p.spatial_shapes, p.level_start_index, p.sampling_locations, w]
    if use_numpy:
        out = torch.from_numpy(mnp.ms_deform_attn(*[a.numpy() for a in args]))
    else:
        out = msda.ms_deform_attn(*args)

    oracle = masked_oracle(p.levels)
    loc = _f64(p.sampling_locations)
    v0, w0 = _f64(p.value), _f64(p.attention_weights)
    if entry == "value":
        ref0 = oracle(with_entry(v0, 0.0), loc, w0)
        ref1 = oracle(with_entry(v0, 1e6), loc, w0)
    else:
        ref0 = oracle(v0, loc, with_entry(w0, 0.0))
        ref1 = oracle(v0, loc, with_entry(w0, 1e6))
    reach = torch.zeros(out.shape, dtype=torch.bool)
    b, h = int(idx[0]), int(idx[2])
    if entry == "value":
        reach[b, :, h * p.D + int(idx[3])] = True
    else:
        reach[b, int(idx[1]), h * p.D:(h + 1) * p.D] = True
    finite = torch.isfinite(out)
    assert finite[~reach].all(), "a NaN / Inf leaked into outputs that do not read it"
    # Outputs that read the entry with a non-zero coefficient are non-finite.
    depends = reach & ((ref1 - ref0).abs() > 1e-3)
    assert not (depends & finite).any(), "an output that reads the NaN / Inf is finite"
    # Everything finite equals the oracle.
    check_close(torch.where(finite, out.double(), ref0), ref0, p.dtype, _f64(v0), _f64(w0))


# ----------------------------------------------------------------------------------------
# Bad calls: each one is invalid by construction and must raise ValueError / TypeError


ENTRIES = ("torch", "torch_backward", "numpy", "numpy_backward")
WRONG_KINDS = (torch.int32, torch.int64, torch.int16, torch.uint8, torch.bool, torch.complex64)
BAD_INDEX_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int16, torch.int8,
                    torch.uint8, torch.bool)


@dataclasses.dataclass
class BadCall:
    entry: str
    args: dict
    label: str
    kind: str = ""
    kwargs: dict = dataclasses.field(default_factory=dict)
    # The error comes from outside msda's own checks (nanobind's argument matching), so its
    # message lists signatures instead of naming the argument.
    relaxed: bool = False

    def run(self):
        a = dict(self.args)
        if self.entry.startswith("numpy"):
            a = {k: (x.numpy() if isinstance(x, torch.Tensor) else x) for k, x in a.items()}
        five = [a[n] for n in NAMES]
        if self.entry == "torch":
            return msda.ms_deform_attn(*five)
        if self.entry == "torch_backward":
            return msda.ms_deform_attn_backward(*five, a["grad_output"])
        if self.entry == "numpy":
            return mnp.ms_deform_attn(*five, **self.kwargs)
        return mnp.ms_deform_attn_backward(*five, a["grad_output"], **self.kwargs)


def _resize(t, d, new):
    """t with dim d of size new (cycling through the old entries)."""
    if t.shape[d] == 0:
        shape = list(t.shape)
        shape[d] = new
        return torch.ones(shape, dtype=t.dtype)
    return t.index_select(d, torch.arange(new) % t.shape[d])


def _wrap(x, dtype):
    bits = 32 if dtype == torch.int32 else 64
    return ((x + 2 ** (bits - 1)) % 2**bits) - 2 ** (bits - 1)


def _prefix_sums(ss_rows, dtype):
    sums, total = [], 0
    for h, w in ss_rows:
        sums.append(_wrap(total, dtype))
        total += h * w
    return torch.tensor(sums, dtype=dtype)


@st.composite
def bad_calls(draw):
    entry = draw(st.sampled_from(ENTRIES))
    is_np = entry.startswith("numpy")
    backward = entry.endswith("backward")
    p = draw(problems(NUMPY_FLOATS if is_np else TORCH_FLOATS, specials=()))
    args = dict(zip(NAMES, p.tensors()))
    names = list(NAMES)
    if backward:
        args["grad_output"] = p.grad_output()
        names.append("grad_output")
    floats = NUMPY_FLOATS if is_np else TORCH_FLOATS
    kinds = ["rank", "dim", "zero size", "dtype", "level_start_index", "spatial_shapes"]
    kinds.append("object")
    if entry == "torch":
        kinds.append("sparse")
    if is_np:
        kinds += ["numpy dtype", "num_threads"] + ([] if backward else ["out"])
    kind = draw(st.sampled_from(kinds))
    call = BadCall(entry, args, kind, kind)

    if kind == "rank":
        name = draw(st.sampled_from(names))
        t = args[name]
        if draw(st.booleans()) or t.dim() < 2:
            t = t.unsqueeze(draw(st.integers(0, t.dim())))
        else:
            d = draw(st.integers(0, t.dim() - 2))
            t = t.flatten(d, d + 1)
        args[name] = t
        call.label = f"rank of {name} -> {t.dim()}"
    elif kind == "dim":
        choices = ([("value", d) for d in (0, 1, 2)]
                   + [("sampling_locations", d) for d in range(6)]
                   + [("attention_weights", d) for d in range(5)]
                   + [("spatial_shapes", 0), ("spatial_shapes", 1), ("level_start_index", 0)])
        if backward:
            choices += [("value", 3)] + [("grad_output", d) for d in range(3)]
        name, d = draw(st.sampled_from(choices))
        old = args[name].shape[d]
        new = draw(st.integers(0, old + 1))
        new += new >= old  # any size but the old one
        args[name] = _resize(args[name], d, new)
        call.label = f"{name} dim {d}: {old} -> {new}"
    elif kind == "zero size":
        what = draw(st.sampled_from(["heads", "embed_dims", "points", "levels"]))
        if what == "heads":
            for n in ("value", "sampling_locations", "attention_weights"):
                args[n] = args[n].narrow(2, 0, 0)
            if backward:
                args["grad_output"] = args["grad_output"].narrow(2, 0, 0)
        elif what == "embed_dims":
            args["value"] = args["value"].narrow(3, 0, 0)
            if backward:
                args["grad_output"] = args["grad_output"].narrow(2, 0, 0)
        elif what == "points":
            for n in ("sampling_locations", "attention_weights"):
                args[n] = args[n].narrow(4, 0, 0)
        else:
            args["spatial_shapes"] = args["spatial_shapes"][:0]
            args["level_start_index"] = args["level_start_index"][:0]
            for n in ("sampling_locations", "attention_weights"):
                args[n] = args[n].narrow(3, 0, 0)
        call.label = f"zero {what}"
    elif kind == "dtype":
        name = draw(st.sampled_from(names))
        loc_ok = (p.dtype, torch.float32)
        if name in ("spatial_shapes", "level_start_index"):
            options = BAD_INDEX_DTYPES
        elif name == "sampling_locations":
            options = [d for d in floats + WRONG_KINDS if d not in loc_ok]
        else:  # value, attention_weights, grad_output: anything but value's dtype
            options = [d for d in floats + WRONG_KINDS if d != p.dtype]
        # (A new float dtype for value is still invalid: attention_weights keep the old one.)
        new = draw(st.sampled_from(options))
        args[name] = args[name].to(new)
        call.label = f"{name} dtype -> {new}"
    elif kind == "level_start_index":
        lsi = args["level_start_index"]
        how = draw(st.sampled_from(["perturb", "reverse", "negative"]))
        if how == "reverse" and p.L > 1:
            new = lsi.flip(0)
        elif how == "negative":
            new = -lsi - 1
        else:
            i = draw(st.integers(0, p.L - 1))
            delta = draw(st.sampled_from([-3, -1, 1, 2, 1000, -(2**31) + 5, 2**40 + 1]))
            new = lsi.to(torch.int64).clone()
            new[i] = _wrap(int(new[i]) + delta, lsi.dtype)
            new = new.to(lsi.dtype)
        if torch.equal(new, lsi):
            new = lsi + 1
        args["level_start_index"] = new
        call.label = f"level_start_index {how}: {lsi.tolist()} -> {new.tolist()}"
    elif kind == "spatial_shapes":
        rows = [list(r) for r in p.levels]
        l, c = draw(st.integers(0, p.L - 1)), draw(st.integers(0, 1))
        how = draw(st.sampled_from(["non-positive", "sum != K", "huge"]))
        ss_dtype = args["spatial_shapes"].dtype
        if how == "non-positive":
            rows[l][c] = draw(st.sampled_from([0, -1, -5, -(2**31)]))
        elif how == "sum != K":
            rows[l][c] += draw(st.integers(1, 3))
        else:
            rows[l][c] = draw(st.sampled_from([2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1]))
            if rows[l][c] >= 2**31:
                ss_dtype = torch.int64
        args["spatial_shapes"] = torch.tensor(rows, dtype=ss_dtype)
        lsi_dtype = args["level_start_index"].dtype
        lsi_options = [args["level_start_index"], _prefix_sums(rows, lsi_dtype)]
        if entry != "torch_backward":  # the backward entry has no computed default
            lsi_options.append(None)
        args["level_start_index"] = draw(st.sampled_from(lsi_options))
        call.label = f"spatial_shapes {how}: {rows}"
    elif kind == "object":
        name = draw(st.sampled_from(names))
        objects = ["abc", 3, 2.5, object(), {}, [1.5, 2.0]]
        if name != "level_start_index":  # None is valid there (computed)
            objects.append(None)
        if not is_np:
            objects.append(np.zeros((2, 2)))
        args[name] = draw(st.sampled_from(objects))
        call.label = f"{name} = {args[name]!r}"
    elif kind == "sparse":
        name = draw(st.sampled_from(["value", "sampling_locations", "attention_weights"]))
        args[name] = args[name].to_sparse()
        call.label = f"sparse {name}"
        call.relaxed = True
    elif kind == "numpy dtype":
        name = draw(st.sampled_from(names))
        new = draw(st.sampled_from(["longdouble", "uint32", "int8", "datetime64[s]", "object",
                                    "U3"]))
        a = args[name].numpy()
        if new == "datetime64[s]":
            args[name] = np.zeros(a.shape, new)
        elif new == "longdouble":
            args[name] = a.astype(np.longdouble)
            call.relaxed = True  # passes the wrapper's kind filter, refused by nanobind
        else:
            args[name] = a.astype(new)
        call.label = f"{name} astype {new}"
    elif kind == "num_threads":
        n = draw(st.sampled_from([-1, -7, 1.5, "2", True, [1], 2**40, 2**63]))
        call.kwargs["num_threads"] = n
        call.relaxed = isinstance(n, int) and not isinstance(n, bool) and n > 2**31
        call.label = f"num_threads={n!r}"
    elif kind == "out":
        shape = (p.B, p.Q, p.H * p.D)
        np_dtype = p.value.numpy().dtype
        how = draw(st.sampled_from(["shape", "rank", "dtype", "read-only", "list", "overlap",
                                    "self-overlap"]))
        if how == "overlap" and not (0 < p.B * p.Q * p.H * p.D <= p.value.numel()):
            how = "read-only"
        if how == "self-overlap" and not any(n > 1 for n in shape):
            how = "list"
        if how == "shape":
            d = draw(st.integers(0, 2))
            bad_shape = list(shape)
            bad_shape[d] += draw(st.integers(1, 2))
            out = np.zeros(bad_shape, np_dtype)
        elif how == "rank":
            out = np.zeros(shape + (1,), np_dtype)
        elif how == "dtype":
            other = draw(st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.int64]))
            if other == np_dtype:
                other = np.int32
            out = np.zeros(shape, other)
        elif how == "read-only":
            out = np.zeros(shape, np_dtype)
            out.flags.writeable = False
        elif how == "list":
            out = np.zeros(shape, np_dtype).tolist()
        elif how == "overlap":
            v = p.value.numpy()
            args["value"] = v
            out = v.reshape(-1)[: math.prod(shape)].reshape(shape)
        else:
            d = next(i for i, n in enumerate(shape) if n > 1)
            strides = list(np.zeros(shape, np_dtype).strides)
            strides[d] = 0
            out = np.lib.stride_tricks.as_strided(np.zeros(math.prod(shape), np_dtype),
                                                  shape=shape, strides=strides, writeable=True)
        call.kwargs["out"] = out
        call.label = f"out {how}"

    if entry == "torch" and draw(st.booleans()):
        for n in ("value", "sampling_locations", "attention_weights"):
            x = args[n]
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.layout == torch.strided:
                args[n] = x.detach().requires_grad_(True)
    return call


@settings(max_examples=800, **COMMON)
@given(bad_calls())
def test_bad_calls_raise_clear_errors(call):
    note(f"{call.entry}: {call.label}")
    event(f"{call.entry} / {call.kind}")
    with pytest.raises((ValueError, TypeError)) as info:
        call.run()
    message = str(info.value)
    assert message.strip(), "empty error message"
    if not call.relaxed:
        assert message.startswith(PREFIXES), f"message does not name the argument: {message}"


def _base(dtype=torch.float64):
    ss = torch.tensor([[3, 4], [1, 2]])
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(2, 14, 2, 3, generator=g, dtype=dtype),
        ss,
        ref_level_start_index(ss),
        torch.rand(2, 4, 2, 2, 3, 2, generator=g, dtype=dtype),
        torch.rand(2, 4, 2, 2, 3, generator=g, dtype=dtype),
    ]


# ----------------------------------------------------------------------------------------
# Devices: 'meta' is the only non-CPU device this build can make.


def test_all_meta_tensors_give_a_meta_result():
    # The op's fake (meta) implementation: shape and dtype only, as documented for
    # torch.compile / export.
    out = msda.ms_deform_attn(*[t.to("meta") for t in _base()])
    assert out.device.type == "meta" and out.shape == (2, 4, 6) and out.dtype == torch.float64
    a = [t.to("meta") for t in _base()]
    grad_out = torch.zeros(2, 4, 6, device="meta", dtype=torch.float64)
    grads = msda.ms_deform_attn_backward(*a, grad_out)
    assert [g.device.type for g in grads] == ["meta"] * 3
    assert [g.shape for g in grads] == [a[0].shape, a[3].shape, a[4].shape]


@pytest.mark.parametrize("name", NAMES)
def test_mixed_meta_and_cpu_tensors_are_refused(name):
    args = dict(zip(NAMES, _base()))
    args[name] = args[name].to("meta")
    out = None
    try:
        out = msda.ms_deform_attn(*[args[n] for n in NAMES])
    except (ValueError, TypeError, RuntimeError) as e:
        assert str(e)
        return
    shown = out.flatten()[:4] if out.device.type == "cpu" else ""
    pytest.fail(f"accepted: returned a {out.device} tensor {shown}")


@pytest.mark.parametrize("name", NAMES + ("grad_output",))
def test_backward_op_mixed_meta_and_cpu_is_refused(name):
    args = dict(zip(NAMES, _base()))
    args["grad_output"] = torch.ones(2, 4, 6, dtype=torch.float64)
    args[name] = args[name].to("meta")
    try:
        torch.ops.msda.ms_deform_attn_backward(args["grad_output"], *[args[n] for n in NAMES],
                                               True, True, True)
    except (ValueError, TypeError, RuntimeError) as e:
        assert str(e)
        return
    pytest.fail("mixed meta / CPU arguments were accepted")


# ----------------------------------------------------------------------------------------
# Regression tests for findings of this suite (each was a bug: the exact input and what it
# did are in the test's name and body).

MALFORMED_SPATIAL_SHAPES = {
    "rank1 tensor": torch.tensor([3, 4, 1, 2]),
    "rank0 tensor": torch.tensor(3),
    "[L, 1] tensor": torch.tensor([[3], [1]]),
    "rank3 tensor": torch.tensor([[[3, 4], [1, 2]]]),
    "empty list": [],
    "flat list": [3, 4, 1, 2],
}


@pytest.mark.parametrize("case", list(MALFORMED_SPATIAL_SHAPES))
def test_torch_malformed_spatial_shapes_with_computed_level_start_index(case):
    v, _, _, loc, w = _base()
    with pytest.raises((ValueError, TypeError), match=r"^spatial_shapes"):
        msda.ms_deform_attn(v, MALFORMED_SPATIAL_SHAPES[case], None, loc, w)


def test_numpy_malformed_spatial_shapes_with_computed_level_start_index():
    # The NumPy entry refuses them all with ValueError / TypeError naming the argument.
    v, _, _, loc, w = [t.numpy() for t in _base()]
    for case, ss in MALFORMED_SPATIAL_SHAPES.items():
        ss = ss.numpy() if isinstance(ss, torch.Tensor) else ss
        with pytest.raises((ValueError, TypeError), match=r"^spatial_shapes") as info:
            mnp.ms_deform_attn(v, ss, None, loc, w)
        assert str(info.value), case
    with pytest.raises(ValueError, match=r"^spatial_shapes: must have shape \[levels, 2\]"):
        mnp.ms_deform_attn(v, np.array([3, 4, 1]), None, loc, w)


def test_torch_float_list_spatial_shapes_is_refused():
    v, _, _, loc, w = _base()
    with pytest.raises(TypeError, match=r"^spatial_shapes"):
        msda.ms_deform_attn(v, [[3.5, 4.2], [1.9, 2.0]], None, loc, w)


def test_numpy_float_list_spatial_shapes_is_refused():
    v, _, _, loc, w = [t.numpy() for t in _base()]
    with pytest.raises(TypeError, match=r"^spatial_shapes: dtype must be INT32 or INT64"):
        mnp.ms_deform_attn(v, [[3.5, 4.2], [1.9, 2.0]], None, loc, w)


NON_TENSORS = {
    "None": None,
    "list": [[3, 4], [1, 2]],
    "str": "3x4",
    "ndarray": np.array([[3, 4], [1, 2]]),
}


@pytest.mark.parametrize("obj", list(NON_TENSORS))
@pytest.mark.parametrize("name", ["spatial_shapes", "value"])
def test_torch_backward_entry_refuses_non_tensors(name, obj):
    args = dict(zip(NAMES, _base()))
    args[name] = NON_TENSORS[obj]
    with pytest.raises((ValueError, TypeError), match=rf"^{name}"):
        msda.ms_deform_attn_backward(*[args[n] for n in NAMES],
                                     torch.zeros(2, 4, 6, dtype=torch.float64))


@pytest.mark.parametrize("name", ["value", "level_start_index", "sampling_locations"])
def test_numpy_negative_stride_on_size_one_dim(name):
    v, ss, _, loc, w = _base()
    args = dict(zip(NAMES, [v[:1, :12], ss[:1], torch.tensor([0]), loc[:1, :, :, :1],
                            w[:1, :, :, :1]]))
    expected = masked_oracle([(3, 4)])(*(_f64(args[n]) for n in
                                         ("value", "sampling_locations", "attention_weights")))
    arrays = {n: t.contiguous().numpy() for n, t in args.items()}
    arrays[name] = arrays[name][::-1]  # dim 0 has size 1
    assert arrays[name].strides[0] < 0
    out = mnp.ms_deform_attn(*[arrays[n] for n in NAMES])
    check_close(out, expected, torch.float64)
