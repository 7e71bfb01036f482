"""opcheck, torch.compile, autocast."""
import pytest
import torch

import msda
import msda.ops  # noqa: F401  (registers torch.ops.msda.*)
from _reference import assert_close, make_inputs, ms_deform_attn_ref


def _with_grad(args, needs=(True, True, True)):
    v, ss, lsi, loc, attn = args
    return [v.requires_grad_(needs[0]), ss, lsi, loc.requires_grad_(needs[1]), attn.requires_grad_(needs[2])]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dtype=torch.float32),
        dict(dtype=torch.float64, index_dtype=torch.int32),
        dict(dtype=torch.bfloat16, loc_dtype=torch.float32),
    ],
)
def test_opcheck_forward(kwargs):
    args = make_inputs(B=2, Q=4, H=2, D=4, P=2, safe=True, **kwargs)
    torch.library.opcheck(torch.ops.msda.ms_deform_attn.default, tuple(args))
    torch.library.opcheck(torch.ops.msda.ms_deform_attn.default, tuple(_with_grad(list(args))))


def test_opcheck_forward_partial_grads():
    args = _with_grad(list(make_inputs(safe=True, seed=1)), needs=(False, True, False))
    torch.library.opcheck(torch.ops.msda.ms_deform_attn.default, tuple(args))


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False)])
def test_opcheck_backward(needs):
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=4, H=2, D=4, P=2, dtype=torch.float32, safe=True)
    g = torch.randn(2, 4, 8)
    torch.library.opcheck(torch.ops.msda.ms_deform_attn_backward.default,
                          (g, v, ss, lsi, loc, attn, *needs))


class _Tiny(torch.nn.Module):
    def __init__(self, H, D, L, P):
        super().__init__()
        self.H, self.L, self.P = H, L, P
        self.proj = torch.nn.Linear(H * D, H * D)
        self.offsets = torch.nn.Linear(H * D, H * L * P * 2)
        self.weights = torch.nn.Linear(H * D, H * L * P)

    def forward(self, value, query, ref, ss, lsi):
        B, K, C = value.shape
        Q = query.shape[1]
        v = self.proj(value).view(B, K, self.H, -1)
        off = self.offsets(query).view(B, Q, self.H, self.L, self.P, 2)
        loc = ref[:, :, None, :, None, :] + 0.05 * torch.tanh(off)
        w = self.weights(query).view(B, Q, self.H, self.L * self.P).softmax(-1)
        w = w.view(B, Q, self.H, self.L, self.P)
        return msda.ms_deform_attn(v, ss, lsi, loc, w)


def test_torch_compile_fullgraph_forward_backward():
    torch.manual_seed(0)
    H, D, L, P, B, Q = 2, 4, 2, 2, 2, 6
    v, ss, lsi, _, _ = make_inputs(B=B, Q=Q, H=H, D=D, P=P, dtype=torch.float32)
    value = v.reshape(B, -1, H * D)
    query = torch.randn(B, Q, H * D)
    ref = torch.rand(B, Q, L, 2) * 0.8 + 0.1
    model = _Tiny(H, D, L, P)
    compiled = torch.compile(model, fullgraph=True)

    out_eager = model(value, query, ref, ss, lsi)
    out_eager.square().sum().backward()
    grads_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    out = compiled(value, query, ref, ss, lsi)
    out.square().sum().backward()
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads_eager):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_autocast_bf16():
    v, ss, lsi, loc, attn = make_inputs(B=2, Q=6, H=2, D=8, P=3, dtype=torch.float32, safe=True, seed=4)
    v.requires_grad_(True)
    loc.requires_grad_(True)
    attn.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    # value / weights run in bf16, locations stay fp32: the output is bf16.
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_ref(v.detach().bfloat16().double(), ss, lsi, loc.detach().double(),
                                  attn.detach().bfloat16().double())
    assert_close(out, expected, torch.bfloat16)
    out.float().sum().backward()
    # Gradients come back in the inputs' dtypes.
    assert v.grad.dtype == loc.grad.dtype == attn.grad.dtype == torch.float32


def test_autocast_inside_a_linear_pipeline():
    # Typical use: projections produce bf16 under autocast, reference points are fp32.
    torch.manual_seed(1)
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=4, H=2, D=4, P=2, dtype=torch.float32, seed=5)
    lin = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = lin(v.reshape(1, -1, 8)).view(v.shape)
        assert value.dtype == torch.bfloat16
        out = msda.ms_deform_attn(value, ss, lsi, loc, attn)  # attn fp32, loc fp32
    assert out.dtype == torch.bfloat16


def test_autocast_leaves_fp64_alone():
    args = make_inputs(seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = msda.ms_deform_attn(*args)
    assert out.dtype == torch.float64


def test_meta_tensors_give_shapes():
    v, ss, lsi, loc, attn = (t.to("meta") for t in make_inputs(B=3, Q=7, H=2, D=5))
    out = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    assert out.device.type == "meta" and out.shape == (3, 7, 10)


def test_torch_export():
    class M(torch.nn.Module):
        def forward(self, v, ss, lsi, loc, attn):
            return msda.ms_deform_attn(v, ss, lsi, loc, attn) * 2

    args = make_inputs(B=2, Q=4, H=2, D=4, P=2, dtype=torch.float32)
    ep = torch.export.export(M(), tuple(args))
    assert "msda.ms_deform_attn" in str(ep.graph)
    torch.testing.assert_close(ep.module()(*args), M()(*args))


def test_autograd_kernel_builds_a_graph_only_when_a_gradient_is_wanted():
    # The Autograd kernel skips autograd.Function when nothing needs a gradient (the small-call
    # path) and builds the node otherwise; the results are the same either way.
    v, ss, lsi, loc, attn = make_inputs(B=1, Q=3, H=2, D=4, P=2, dtype=torch.float64, safe=True)
    plain = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    assert plain.grad_fn is None and not plain.requires_grad
    with torch.no_grad():
        off = msda.ms_deform_attn(v.requires_grad_(True), ss, lsi, loc, attn)
    assert off.grad_fn is None and not off.requires_grad
    on = msda.ms_deform_attn(v, ss, lsi, loc, attn)
    assert on.grad_fn is not None
    torch.testing.assert_close(on.detach(), plain, rtol=0, atol=0)
    torch.testing.assert_close(off, plain, rtol=0, atol=0)
    on.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_ops_are_defined_on_a_library_with_pt2_tags():
    kernels = {
        torch.ops.msda.ms_deform_attn.default: ("CPU", "CUDA", "Autograd", "AutocastCPU", "Meta"),
        torch.ops.msda.ms_deform_attn_backward.default: ("CPU", "CUDA", "Meta"),
    }
    for op, keys in kernels.items():
        assert torch.Tag.pt2_compliant_tag in op.tags
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key), (op, key)
