"""msda.nn.patch_transformers on every transformers family with multi-scale deformable
attention: a small random-init model of each (tests/python/_hf_families.py), patched against
unpatched (outputs and parameter gradients), msda's op seen by the profiler, the process-wide
patch and its undoing, and the "discrete" method of the v2 families."""
import inspect
from collections import OrderedDict

import pytest
import torch

import msda
import msda.nn as mnn
import _hf_families

FAMILIES = sorted(_hf_families.FAMILIES)
V2_FAMILIES = ("RTDetrV2", "DFine", "Deimv2")  # multi_scale_deformable_attention_v2
HAS_V2_OP = "num_points_list" in inspect.signature(msda.ms_deform_attn).parameters
OP_NAME = "msda::ms_deform_attn"


@pytest.fixture(autouse=True)
def _restore_transformers():
    yield
    mnn.unpatch_transformers()


def _needs_v2(family):
    if family in V2_FAMILIES and not HAS_V2_OP:
        pytest.skip("msda.ms_deform_attn has no num_points_list/method keywords yet")


def _perturb_offsets(model, seed=1):
    """Moves the sampling points off the pixel centres of a fresh model (where bilinear
    interpolation has a kink, so gradients differ legitimately between implementations)."""
    g = torch.Generator().manual_seed(seed)
    found = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("sampling_offsets") and isinstance(module, torch.nn.Linear):
                module.weight.add_(torch.randn(module.weight.shape, generator=g) * 0.05)
                module.bias.add_(torch.randn(module.bias.shape, generator=g) * 0.3)
                found += 1
    assert found, "no sampling_offsets layer"


def _tensors(output):
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _run(model, inputs, backward=True):
    """Outputs (floating tensors) and the gradient of a fixed scalar of them per parameter."""
    model.zero_grad(set_to_none=True)
    for attribute in vars(model).values():  # OmDetTurbo caches text embeddings (and their graph).
        if isinstance(getattr(attribute, "cache", None), OrderedDict):
            attribute.cache.clear()
    outputs = _tensors(model(**inputs))
    assert outputs
    if backward:
        loss = sum((t * torch.linspace(-1, 1, t.numel()).view(t.shape)).sum() / t.numel()
                   for t in outputs if t.requires_grad)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [t.detach() for t in outputs], grads


def _profiled(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = fn()
    return result, {e.key for e in prof.key_averages()}


def _close(actual, expected, what, tol=1e-4):
    """|actual - expected| <= tol * (|expected| + max|expected|): fp32 against fp32."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1e-6), msg=lambda m: f"{what}: {m}")


def _build(family, **kwargs):
    torch.manual_seed(0)
    model, inputs = _hf_families.FAMILIES[family](**kwargs)
    model.eval()
    _perturb_offsets(model)
    return model, inputs


def _compare(model, inputs):
    expected, expected_grads = _run(model, inputs)
    replaced = mnn.patch_transformers(model)
    assert replaced
    (actual, grads), ops = _profiled(lambda: _run(model, inputs))
    assert OP_NAME in ops
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        _close(a, e, f"output {i}")
    # "discrete" has no location gradient: transformers leaves sampling_offsets' grad None
    # (an integer cast), msda may return zeros; a missing gradient counts as zero.
    params = dict(model.named_parameters())
    names = grads.keys() | expected_grads.keys()
    assert len(names) > len(params) // 2
    # Gradients are held to the scale of the largest one: a sum over many terms may cancel.
    scale = max(g.abs().max().item() for g in expected_grads.values())
    for name in sorted(names):
        zero = torch.zeros_like(params[name])
        g, e = grads.get(name, zero), expected_grads.get(name, zero)
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"grad {name}: {m}")
    return replaced


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_model_matches_unpatched(family):
    _needs_v2(family)
    model, inputs = _build(family)
    replaced = _compare(model, inputs)
    # Idempotent: a second patch replaces nothing and the model still runs msda.
    assert mnn.patch_transformers(model) == []
    _, ops = _profiled(lambda: _run(model, inputs, backward=False))
    assert OP_NAME in ops
    if family in ("Mask2Former", "OneFormer", "RTDetrV2"):
        assert any(r.endswith(".multi_scale_deformable_attention" + ("_v2" if family == "RTDetrV2" else ""))
                   for r in replaced), replaced
    elif family in ("DFine", "Deimv2"):
        assert any(r.endswith(".ms_deformable_attn_core") for r in replaced), replaced
    else:
        assert all(r.endswith(".attn") for r in replaced), replaced


@pytest.mark.parametrize("family", V2_FAMILIES)
def test_discrete_method(family):
    _needs_v2(family)
    model, inputs = _build(family, method="discrete")
    _compare(model, inputs)


def test_global_patch_serves_models_built_afterwards_and_unpatches():
    replaced = mnn.patch_transformers()
    assert len(replaced) >= len(FAMILIES)
    assert mnn.patch_transformers() == []  # idempotent: no double wrapping
    for family in FAMILIES:
        if family in V2_FAMILIES and not HAS_V2_OP:
            continue
        torch.manual_seed(0)
        model, inputs = _hf_families.FAMILIES[family]()
        model.eval()
        with torch.no_grad():
            _, ops = _profiled(lambda: model(**inputs))
        assert OP_NAME in ops, family
        assert mnn.patch_transformers(model) == [], family  # already served
    restored = mnn.unpatch_transformers()
    assert sorted(restored) == sorted(replaced)
    torch.manual_seed(0)
    model, inputs = _hf_families.FAMILIES["DeformableDetr"]()
    with torch.no_grad():
        _, ops = _profiled(lambda: model.eval()(**inputs))
    assert OP_NAME not in ops
