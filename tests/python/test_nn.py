"""msda.nn: the mmcv-compatible layer and the Hugging Face drop-in."""
import warnings

import pytest
import torch
from torch import nn

import msda
import msda.nn as mnn
from _reference import (assert_close, level_start_index, make_inputs, mmcv_grid_init,
                        mmcv_layer_ref, ms_deform_attn_ref)

MMCV_KEYS = {
    "sampling_offsets.weight", "sampling_offsets.bias",
    "attention_weights.weight", "attention_weights.bias",
    "value_proj.weight", "value_proj.bias",
    "output_proj.weight", "output_proj.bias",
}

LEVELS = ((8, 10), (4, 5), (2, 3))


def _mmcv_state(embed_dims, heads, levels, points, value_dims=None, seed=0):
    """A random state dict with mmcv's key names and shapes (as a checkpoint would have)."""
    g = torch.Generator().manual_seed(seed)
    value_dims = value_dims or embed_dims
    n = heads * levels * points
    shapes = {
        "sampling_offsets": (n * 2, embed_dims),
        "attention_weights": (n, embed_dims),
        "value_proj": (value_dims, embed_dims),
        "output_proj": (embed_dims, value_dims),
    }
    state = {}
    for name, (o, i) in shapes.items():
        state[f"{name}.weight"] = torch.randn(o, i, generator=g) / i**0.5
        state[f"{name}.bias"] = torch.randn(o, generator=g) * 0.1
    state["sampling_offsets.bias"] = state["sampling_offsets.bias"] * 20
    return state


def _inputs(bs, nq, embed_dims, levels, batch_first, ref_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    nv = sum(h * w for h, w in levels)
    shape_q = (bs, nq, embed_dims) if batch_first else (nq, bs, embed_dims)
    shape_v = (bs, nv, embed_dims) if batch_first else (nv, bs, embed_dims)
    query = torch.randn(*shape_q, generator=g)
    value = torch.randn(*shape_v, generator=g)
    ref = torch.rand(bs, nq, len(levels), ref_dim, generator=g)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.05
    return query, value, ref


def test_state_dict_keys_and_init_match_mmcv():
    layer = mnn.MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=2)
    assert set(layer.state_dict().keys()) == MMCV_KEYS
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.1
    torch.testing.assert_close(layer.sampling_offsets.bias.detach(), mmcv_grid_init(4, 3, 2))
    assert torch.all(layer.sampling_offsets.weight == 0)
    assert torch.all(layer.attention_weights.weight == 0) and torch.all(layer.attention_weights.bias == 0)
    assert torch.all(layer.value_proj.bias == 0) and torch.all(layer.output_proj.bias == 0)
    bound = (6 / (32 + 32)) ** 0.5  # Xavier uniform
    assert layer.value_proj.weight.abs().max() <= bound and layer.value_proj.weight.std() > bound / 4


def test_defaults_like_mmcv():
    layer = mnn.MultiScaleDeformableAttention()
    assert (layer.embed_dims, layer.num_heads, layer.num_levels, layer.num_points) == (256, 8, 4, 4)
    assert layer.batch_first is False and layer.im2col_step == 64
    assert layer.sampling_offsets.out_features == 8 * 4 * 4 * 2
    with pytest.raises(ValueError, match="embed_dims"):
        mnn.MultiScaleDeformableAttention(embed_dims=30, num_heads=8)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("ref_dim", [2, 4])
def test_loaded_state_dict_matches_reference_layer(batch_first, ref_dim):
    E, H, P = 32, 4, 3
    state = _mmcv_state(E, H, len(LEVELS), P, seed=1)
    layer = mnn.MultiScaleDeformableAttention(E, H, len(LEVELS), P, batch_first=batch_first)
    layer.load_state_dict(state)
    layer.eval()
    query, value, ref = _inputs(2, 7, E, LEVELS, batch_first, ref_dim, seed=2)
    ss = torch.tensor(LEVELS)
    out = layer(query, value=value, reference_points=ref, spatial_shapes=ss,
                level_start_index=level_start_index(ss))
    expected = mmcv_layer_ref(state, query, value, ref, ss, H, len(LEVELS), P, batch_first)
    assert out.shape == query.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_value_defaults_to_query_and_extras():
    E, H, P = 16, 2, 2
    levels = ((3, 4), (2, 2))
    state = _mmcv_state(E, H, 2, P, value_dims=8, seed=3)
    layer = mnn.MultiScaleDeformableAttention(E, H, 2, P, value_proj_ratio=0.5, batch_first=True).eval()
    layer.load_state_dict(state)
    nv = 16
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, nv, E, generator=g)  # self-attention over the feature map
    pos = torch.randn(2, nv, E, generator=g)
    ref = torch.rand(2, nv, 2, 2, generator=g)
    mask = torch.rand(2, nv, generator=g) < 0.3
    ident = torch.randn(2, nv, E, generator=g)
    ss = torch.tensor(levels)
    out = layer(x, query_pos=pos, key_padding_mask=mask, reference_points=ref, spatial_shapes=ss,
                identity=ident)
    expected = mmcv_layer_ref(state, x, x, ref, ss, H, 2, P, batch_first=True,
                              key_padding_mask=mask, identity=ident, query_pos=pos)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_layer_trains_and_gradients_match_reference():
    E, H, P = 16, 2, 2
    state = _mmcv_state(E, H, len(LEVELS), P, seed=5)
    state = {k: v.double() for k, v in state.items()}
    layer = mnn.MultiScaleDeformableAttention(E, H, len(LEVELS), P, dropout=0.0).double()
    layer.load_state_dict(state)
    query, value, ref = (t.double() for t in _inputs(2, 5, E, LEVELS, False, seed=6))
    ss = torch.tensor(LEVELS)
    layer(query, value=value, reference_points=ref, spatial_shapes=ss).square().sum().backward()
    ref_state = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    mmcv_layer_ref(ref_state, query, value, ref, ss, H, len(LEVELS), P).square().sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, ref_state[name].grad, rtol=1e-7, atol=1e-9)


def test_bad_reference_points():
    layer = mnn.MultiScaleDeformableAttention(16, 2, 1, 1, batch_first=True)
    q = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="reference_points: last dim must be 2"):
        layer(q, reference_points=torch.rand(1, 3, 1, 3), spatial_shapes=torch.tensor([[1, 3]]))


# Hugging Face


class MultiScaleDeformableAttention(nn.Module):
    """Stand-in for transformers' kernel module (same name, no parameters), with its
    pure-PyTorch forward."""

    def forward(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                sampling_locations, attention_weights, im2col_step):
        return ms_deform_attn_ref(value, value_spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights)


class _HFLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MultiScaleDeformableAttention()
        self.value_proj = nn.Linear(8, 8)


class _HFModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_HFLayer(), _HFLayer()])
        # mmcv's layer has the same class name but parameters: it must be left alone.
        self.mmcv = mnn.MultiScaleDeformableAttention(8, 2, 2, 2)


def test_hf_module_matches_pure_pytorch():
    v, ss, lsi, loc, attn = make_inputs(dtype=torch.float32, seed=7)
    hf = mnn.HFMultiScaleDeformableAttention()
    out = hf(v, ss, [tuple(r) for r in ss.tolist()], lsi, loc, attn, 64)
    assert_close(out, MultiScaleDeformableAttention()(v.double(), ss, None, lsi, loc.double(), attn.double(), 64),
                 torch.float32)
    # Mixed dtypes as the pure-PyTorch path tolerates them.
    out16 = hf(v.half(), ss, None, lsi, loc.double(), attn, 64)
    assert out16.dtype == torch.float16


def test_patch_transformers():
    model = _HFModel()
    replaced = mnn.patch_transformers(model)
    assert replaced == ["layers.0.attn", "layers.1.attn"]
    assert all(isinstance(l.attn, mnn.HFMultiScaleDeformableAttention) for l in model.layers)
    assert type(model.mmcv) is mnn.MultiScaleDeformableAttention
    # Idempotent: nothing more to replace, and no warning (the attention is found, as msda's).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mnn.patch_transformers(model) == []
    with pytest.warns(UserWarning, match="no multi-scale deformable attention found"):
        assert mnn.patch_transformers(nn.Sequential(nn.Linear(2, 2))) == []


def test_residual_is_identity_with_a_deprecation_warning():
    """mmcv's forward maps the deprecated residual= to identity (deprecated_api_warning)."""
    E, H, P = 16, 2, 2
    layer = mnn.MultiScaleDeformableAttention(E, H, len(LEVELS), P, batch_first=True).eval()
    query, value, ref = _inputs(2, 5, E, LEVELS, True, seed=9)
    ident = torch.randn_like(query)
    ss = torch.tensor(LEVELS)
    expected = layer(query, value=value, identity=ident, reference_points=ref, spatial_shapes=ss)
    with pytest.warns(DeprecationWarning, match='"residual" is deprecated'):
        out = layer(query, value=value, residual=ident, reference_points=ref, spatial_shapes=ss)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.equal(out, layer(query, value=value, reference_points=ref, spatial_shapes=ss))
    with pytest.raises(TypeError, match="both identity and its deprecated name residual"):
        layer(query, value=value, identity=ident, residual=ident, reference_points=ref,
              spatial_shapes=ss)


def test_layer_compiles_without_graph_breaks():
    E, H, P = 16, 2, 2
    layer = mnn.MultiScaleDeformableAttention(E, H, len(LEVELS), P, dropout=0.0, batch_first=True)
    query, value, ref = _inputs(2, 5, E, LEVELS, True, seed=8)
    ss = torch.tensor(LEVELS)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(query, value=value, reference_points=ref, spatial_shapes=ss)
    out.sum().backward()
    torch.testing.assert_close(out, layer(query, value=value, reference_points=ref, spatial_shapes=ss))
