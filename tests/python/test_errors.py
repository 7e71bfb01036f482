"""Every refusal is a ValueError / TypeError whose message names the argument (and the
rule); nothing crashes."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import msda
import msda.numpy as mnp
from _reference import make_inputs

NAMES = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]


def call(**changes):
    args = dict(zip(NAMES, make_inputs(B=2, Q=3, H=2, D=4, P=2, levels=((4, 5), (2, 3)),
                                       dtype=torch.float32)))
    args.update(changes)
    return msda.ms_deform_attn(*[args[n] for n in NAMES])


def base():
    return dict(zip(NAMES, make_inputs(B=2, Q=3, H=2, D=4, P=2, levels=((4, 5), (2, 3)),
                                       dtype=torch.float32)))


def expect(exc, pattern, **changes):
    with pytest.raises(exc, match=pattern) as info:
        call(**changes)
    return info


b = base()
CASES = [
    # (exception, message regex, changes)
    (ValueError, r"^value: must have rank 4", dict(value=b["value"][0])),
    (ValueError, r"^sampling_locations: must have rank 6", dict(sampling_locations=b["sampling_locations"][0])),
    (ValueError, r"^attention_weights: must have rank 5", dict(attention_weights=b["attention_weights"][0])),
    (ValueError, r"^spatial_shapes: must have rank 2", dict(spatial_shapes=b["spatial_shapes"].flatten())),
    (ValueError, r"^level_start_index: must have rank 1", dict(level_start_index=b["level_start_index"][None])),
    (ValueError, r"^sampling_locations: dim 0 \(batch, from value\)", dict(sampling_locations=b["sampling_locations"][:1])),
    (ValueError, r"^sampling_locations: dim 2 \(heads, from value\)", dict(sampling_locations=b["sampling_locations"][:, :, :1])),
    (ValueError, r"^sampling_locations: dim 3 \(levels", dict(sampling_locations=b["sampling_locations"][:, :, :, :1])),
    (ValueError, r"^sampling_locations: dim 5 \(\(x, y\)\)", dict(sampling_locations=torch.cat([b["sampling_locations"]] * 2, -1))),
    (ValueError, r"^attention_weights: dim 1 \(queries", dict(attention_weights=b["attention_weights"][:, :2])),
    (ValueError, r"^attention_weights: dim 4 \(points", dict(attention_weights=b["attention_weights"][..., :1])),
    (ValueError, r"^spatial_shapes: dim 1", dict(spatial_shapes=torch.tensor([[4, 5, 1], [2, 3, 1]]))),
    (ValueError, r"^level_start_index: dim 0", dict(level_start_index=torch.tensor([0]))),
    (ValueError, r"^level_start_index: entry 1 must be 20", dict(level_start_index=torch.tensor([0, 19]))),
    (ValueError, r"^spatial_shapes: level 1 has \(H, W\) = \(0, 3\)", dict(spatial_shapes=torch.tensor([[4, 5], [0, 3]]))),
    (ValueError, r"^spatial_shapes: the sum of H\*W over levels is 24 but value has 26 keys",
     dict(spatial_shapes=torch.tensor([[4, 5], [2, 2]]), level_start_index=torch.tensor([0, 20]))),
    (ValueError, r"^value: heads \(dim 2\) and embed_dims \(dim 3\) must be >= 1", dict(value=b["value"][..., :0])),
    (ValueError, r"^sampling_locations: points \(dim 4\) must be >= 1",
     dict(sampling_locations=b["sampling_locations"][:, :, :, :, :0], attention_weights=b["attention_weights"][..., :0])),
    (TypeError, r"^value: dtype must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT64, got INT32", dict(value=b["value"].int())),
    (TypeError, r"^attention_weights: dtype must be FLOAT32 \(value's dtype\), got FLOAT64", dict(attention_weights=b["attention_weights"].double())),
    (TypeError, r"^sampling_locations: dtype must be value's dtype \(FLOAT32\) or FLOAT32, got FLOAT16",
     dict(sampling_locations=b["sampling_locations"].half())),
    (TypeError, r"^spatial_shapes: dtype must be INT32 or INT64, got FLOAT32", dict(spatial_shapes=b["spatial_shapes"].float())),
    (TypeError, r"^level_start_index: dtype must be INT32 or INT64", dict(level_start_index=b["level_start_index"].double())),
    (TypeError, r"^value: dtype int16 is not supported", dict(value=b["value"].short())),
    (TypeError, r"^sampling_locations: dtype complex64 is not supported", dict(sampling_locations=b["sampling_locations"].to(torch.complex64))),
    (TypeError, r"^level_start_index: dtype uint8 is not supported", dict(level_start_index=b["level_start_index"].to(torch.uint8))),
    (TypeError, r"^value: expected a torch.Tensor, got ndarray", dict(value=b["value"].numpy())),
    (TypeError, r"^attention_weights: expected a torch.Tensor, got NoneType", dict(attention_weights=None)),
    (TypeError, r"^spatial_shapes: expected a torch.Tensor \(or a list of ints\), got str", dict(spatial_shapes="4x5")),
]


@pytest.mark.parametrize("exc,pattern,changes", CASES, ids=[c[1][1:40] for c in CASES])
def test_refusals(exc, pattern, changes):
    expect(exc, pattern, **changes)


def test_messages_carry_the_status_name():
    info = expect(ValueError, "level_start_index", level_start_index=torch.tensor([0, 19]))
    assert "[MSDA_ERROR_INVALID_VALUE]" in str(info.value)


class _FakeCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device (this torch build has no CUDA)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


@pytest.mark.parametrize("name", NAMES)
def test_cuda_tensors_are_refused(name):
    args = base()
    args[name] = torch.Tensor._make_subclass(_FakeCuda, args[name])
    with pytest.raises(ValueError, match=rf"^{name}: must be a CPU tensor.*cuda:0"):
        msda.ms_deform_attn(*[args[n] for n in NAMES])


@pytest.mark.parametrize("name", NAMES + ["grad_output"])
def test_backward_op_refuses_cuda(name):
    args = base()
    args["grad_output"] = torch.zeros(2, 3, 8)
    args[name] = torch.Tensor._make_subclass(_FakeCuda, args[name])
    with pytest.raises(ValueError, match=rf"^{name}: must be a CPU tensor"):
        torch.ops.msda.ms_deform_attn_backward(args["grad_output"], *[args[n] for n in NAMES],
                                               True, True, True)


def test_backward_refusals_name_the_gradient():
    a = base()
    g = torch.zeros(2, 3, 6)
    with pytest.raises(ValueError, match=r"^grad_output: dim 2 \(heads \* embed_dims\) must be 8"):
        msda.ms_deform_attn_backward(*[a[n] for n in NAMES], g)
    with pytest.raises(TypeError, match=r"^grad_output: dtype must be FLOAT32"):
        torch.ops.msda.ms_deform_attn_backward(torch.zeros(2, 3, 8, dtype=torch.float64),
                                               *[a[n] for n in NAMES], True, True, True)


def test_errors_during_autograd_forward():
    a = base()
    a["value"].requires_grad_(True)
    with pytest.raises(ValueError, match=r"^level_start_index: entry 1"):
        msda.ms_deform_attn(a["value"], a["spatial_shapes"], torch.tensor([0, 3]),
                            a["sampling_locations"], a["attention_weights"])


def test_nan_and_inf_locations_do_not_crash():
    a = base()
    loc = a["sampling_locations"].clone()
    loc[0, 0, 0, 0, 0, 0] = float("nan")
    loc[0, 1, 0, 0, 0, 1] = float("inf")
    loc[1, 0, 0, 0, 0, 0] = -float("inf")
    loc[1, 1, 0, 0, 0, 0] = 1e30
    out = msda.ms_deform_attn(a["value"], a["spatial_shapes"], a["level_start_index"], loc,
                              a["attention_weights"])
    assert torch.isfinite(out).all()


def test_huge_index_values_are_refused_not_crashing():
    a = base()
    ss = torch.tensor([[2**62, 2**62], [2, 3]])
    with pytest.raises(ValueError, match=r"^spatial_shapes: level 0 makes the number of keys overflow"):
        call(spatial_shapes=ss)
    with pytest.raises(ValueError, match=r"^spatial_shapes: level 0 has \(H, W\) = \(-4, 5\)"):
        call(spatial_shapes=torch.tensor([[-4, 5], [2, 3]]))


# NumPy entry


def np_args():
    return [t.numpy() for t in make_inputs(B=2, Q=3, H=2, D=4, P=2, levels=((4, 5), (2, 3)),
                                           dtype=torch.float32)]


def test_numpy_refusals():
    v, ss, lsi, loc, attn = np_args()
    with pytest.raises(ValueError, match=r"^value: must have rank 4"):
        mnp.ms_deform_attn(v[0], ss, lsi, loc, attn)
    with pytest.raises(ValueError, match=r"^sampling_locations: dim 2 \(heads, from value\)"):
        mnp.ms_deform_attn(v, ss, lsi, loc[:, :, :1], attn)
    with pytest.raises(TypeError, match=r"^attention_weights: dtype must be FLOAT32"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn.astype(np.float16))
    with pytest.raises(TypeError, match=r"^value: dtype object is not supported"):
        mnp.ms_deform_attn(v.astype(object), ss, lsi, loc, attn)
    with pytest.raises(TypeError, match=r"^spatial_shapes: dtype bool is not supported"):
        mnp.ms_deform_attn(v, ss.astype(bool), lsi, loc, attn)
    with pytest.raises(TypeError, match=r"^level_start_index: dtype uint16 is not supported"):
        mnp.ms_deform_attn(v, ss, lsi.astype(np.uint16), loc, attn)
    with pytest.raises(ValueError, match=r"^output: dim 1 \(queries\) must be 3"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn, out=np.empty((2, 2, 8), np.float32))
    with pytest.raises(TypeError, match=r"^output: dtype must be FLOAT32"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn, out=np.empty((2, 3, 8), np.float64))
    with pytest.raises(ValueError, match=r"^output: output memory overlaps value"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn, out=v.reshape(-1)[:48].reshape(2, 3, 8))
    ro = np.empty((2, 3, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out: must be writable"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn, out=ro)
    with pytest.raises(ValueError, match=r"^num_threads: must be in \[0, 1024\]"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn, num_threads=-1)
    with pytest.raises(ValueError, match=r"^num_threads: must be in \[0, 1024\]"):
        mnp.ms_deform_attn(v, ss, lsi, loc, attn, num_threads=1025)
    with pytest.raises(ValueError, match=r"^grad_output: dim 1 \(queries\) must be 3"):
        mnp.ms_deform_attn_backward(v, ss, lsi, loc, attn, np.zeros((2, 4, 8), np.float32))


def test_ext_refuses_overlapping_and_self_overlapping_outputs():
    v, ss, lsi, loc, attn = np_args()
    out = np.lib.stride_tricks.as_strided(np.zeros(8, np.float32), shape=(2, 3, 8),
                                          strides=(0, 0, 4), writeable=True)
    with pytest.raises(ValueError, match=r"^output: output strides make distinct elements share memory"):
        msda._C.forward(v, ss, lsi, loc, attn, out, 1)
    # The same through the torch op's output is impossible (it allocates); through the ext
    # with torch tensors:
    tv = torch.from_numpy(v)
    with pytest.raises(ValueError, match=r"^output: output memory overlaps value"):
        msda._C.forward(tv, torch.from_numpy(ss), torch.from_numpy(lsi), torch.from_numpy(loc),
                        torch.from_numpy(attn), tv.view(-1)[:48].view(2, 3, 8), 1)
    with pytest.raises(ValueError, match=r"^num_threads: must be in \[0, 1024\]"):
        msda._C.forward(v, ss, lsi, loc, attn, np.empty((2, 3, 8), np.float32), -3)


def test_ext_refusals_name_the_argument():
    # What the binding refuses before msda sees the call: each message names the argument.
    v, ss, lsi, loc, attn = np_args()
    out = np.empty((2, 3, 8), np.float32)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^output: is read-only"):
        msda._C.forward(v, ss, lsi, loc, attn, ro, 1)
    g = np.zeros((2, 3, 8), np.float32)
    gl = np.zeros_like(loc)
    gl.flags.writeable = False
    with pytest.raises(ValueError, match=r"^grad_sampling_locations: is read-only"):
        msda._C.backward(v, ss, lsi, loc, attn, g, None, gl, None, 1)
    with pytest.raises(TypeError, match=r"^value: byte order of dtype >f4 is not this machine's"):
        msda._C.forward(v.astype(">f4"), ss, lsi, loc, attn, out, 1)
    with pytest.raises(TypeError, match=r"^output: byte order of dtype >f4"):
        msda._C.forward(v, ss, lsi, loc, attn, out.astype(">f4"), 1)
    with pytest.raises(TypeError, match=r"^spatial_shapes: byte order of dtype >i8"):
        msda._C.forward(v, ss.astype(">i8"), lsi, loc, attn, out, 1)
    with pytest.raises(TypeError, match=r"^attention_weights: expected an array .* got str"):
        msda._C.forward(v, ss, lsi, loc, "weights", out, 1)
    for n in (2**31, 2**70, 1025, -1):
        with pytest.raises(ValueError, match=r"^num_threads: must be in \[0, 1024\]"):
            msda._C.forward(v, ss, lsi, loc, attn, out, n)
    with pytest.raises(TypeError, match=r"^num_threads: must be an int, got float"):
        msda._C.forward(v, ss, lsi, loc, attn, out, 1.5)
    with pytest.raises(TypeError, match=r"^num_threads: must be an int, got bool"):
        msda._C.forward(v, ss, lsi, loc, attn, out, True)
    assert msda._C.MAX_NUM_THREADS == 1024 == msda._common.MAX_NUM_THREADS
    # After the refusals a good call runs.
    msda._C.forward(v, ss, lsi, loc, attn, out, 1)
    np.testing.assert_allclose(out, mnp.ms_deform_attn(v, ss, lsi, loc, attn), rtol=0, atol=0)


@pytest.mark.parametrize("entry", ["numpy", "torch"])
def test_int32_spatial_shapes_whose_area_overflows_int32_blame_spatial_shapes(entry):
    # 50000 x 50000 = 2.5e9 keys does not fit int32: level_start_index computed by msda is
    # int64 whatever spatial_shapes' dtype, so the refusal is the real mismatch, on
    # spatial_shapes (value has 1 key), not an int32 wrap-around blamed on level_start_index.
    ss = np.array([[50000, 50000], [2, 2]], np.int32)
    v = np.zeros((1, 1, 1, 2), np.float32)
    loc = np.zeros((1, 1, 1, 2, 1, 2), np.float32)
    a = np.zeros((1, 1, 1, 2, 1), np.float32)
    assert list(mnp.level_start_index(ss)) == [0, 2_500_000_000]
    assert msda.level_start_index(torch.from_numpy(ss)).tolist() == [0, 2_500_000_000]
    with pytest.raises(ValueError, match=r"^spatial_shapes: the sum of H\*W over levels is 2500000004 "
                                         r"but value has 1 keys"):
        if entry == "numpy":
            mnp.ms_deform_attn(v, ss, None, loc, a)
        else:
            msda.ms_deform_attn(*(torch.from_numpy(x) if x is not None else None
                                  for x in (v, ss, None, loc, a)))


_OOM_SCRIPT = r"""
import resource, numpy as np
from msda import _C
rng = np.random.default_rng(0)
B, H, D, Q, P = 1, 8, 32, 20000, 4
ss = np.array([[256, 256]]); lsi = np.array([0])  # A backward workspace of about 16 MiB.
v = rng.random((B, 65536, H, D), np.float32); loc = rng.random((B, Q, H, 1, P, 2), np.float32)
a = rng.random((B, Q, H, 1, P), np.float32); g = rng.random((B, Q, H * D), np.float32)
gv = np.full_like(v, 7); gl = np.full_like(loc, 7); ga = np.full_like(a, 7)
vm = next(l for l in open("/proc/self/status") if l.startswith("VmSize"))
limit = int(vm.split()[1]) * 1024 + (4 << 20)  # 4 MiB more than now: the workspace is larger
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # The soft limit: lifted again below.
try:
    _C.backward(v, ss, lsi, loc, a, g, gv, gl, ga, 1)
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print("untouched" if (gv == 7).all() and (gl == 7).all() and (ga == 7).all() else "written")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_out_of_memory_is_a_memory_error_that_says_what_did_not_fit():
    # A real allocation failure (an address-space limit just above what the process has),
    # in a child process: MemoryError whose message names what could not be allocated
    # (the workspace, with its size, or the executor) and the status, outputs untouched.
    r = subprocess.run([sys.executable, "-c", _OOM_SCRIPT], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "untouched", r.stdout
    assert re.match(r"MemoryError: (workspace: could not allocate \d+ bytes|executor: out of host "
                    r"memory[^\[]*) \[MSDA_ERROR_OUT_OF_MEMORY\]$", lines[0]), r.stdout
