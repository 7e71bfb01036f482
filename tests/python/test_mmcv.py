"""msda.nn.patch_mmcv with mmengine 0.10.7, mmcv-lite 2.1.0 and mmdet 3.3.0 (pinned in
scripts/test.sh).

mmcv's layer lives in mmcv.ops, which needs mmcv's compiled extension ``mmcv._ext``; mmcv's full
build (CUDA/C++ ops) is not installable here in reasonable time, and mmdet 3.3.0 accepts only
mmcv < 2.2.0. So mmcv-lite 2.1.0 (mmcv's Python code without the extension) is installed, and
``mmcv._ext`` is replaced by a stub whose every function raises: mmcv's real Python class
``mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttention`` and mmdet's real Deformable
DETR then import, and nothing may call a compiled mmcv op (on the CPU mmcv's layer computes
with its pure-PyTorch path, which serves as the reference). The registry path for an mmcv
without ops runs in a subprocess without the stub."""
import importlib
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import msda.nn as mnn
from _reference import mmcv_grid_init


class _StubExtension(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def compiled_op(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} called: mmcv's compiled ops are not installed")

        return compiled_op


try:
    importlib.import_module("mmcv._ext")
except ImportError:
    sys.modules["mmcv._ext"] = _StubExtension("mmcv._ext")

from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention as MmcvLayer  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

register_all_modules()

OP_NAME = "msda::ms_deform_attn"
E, HEADS, LEVELS, POINTS = 32, 4, 2, 2


@pytest.fixture(autouse=True)
def _unpatch():
    yield
    mnn.unpatch_mmcv()


def _deformable_detr():
    """mmdet's DeformableDETR (configs/deformable_detr), shrunk: ResNet-18, 2 levels, 1 layer."""
    attn = dict(embed_dims=E, num_heads=HEADS, num_levels=LEVELS, num_points=POINTS, batch_first=True)
    cfg = dict(
        type="DeformableDETR", num_queries=10, num_feature_levels=LEVELS, with_box_refine=False,
        as_two_stage=False,
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[0, 0, 0], std=[1, 1, 1]),
        backbone=dict(type="ResNet", depth=18, num_stages=4, out_indices=(2, 3), frozen_stages=-1,
                      norm_cfg=dict(type="BN", requires_grad=False), norm_eval=True, style="pytorch"),
        neck=dict(type="ChannelMapper", in_channels=[256, 512], kernel_size=1, out_channels=E,
                  act_cfg=None, norm_cfg=dict(type="GN", num_groups=8), num_outs=LEVELS),
        encoder=dict(num_layers=1, layer_cfg=dict(
            self_attn_cfg=attn, ffn_cfg=dict(embed_dims=E, feedforward_channels=64, ffn_drop=0.0))),
        decoder=dict(num_layers=1, return_intermediate=True, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=E, num_heads=HEADS, dropout=0.0, batch_first=True),
            cross_attn_cfg=attn, ffn_cfg=dict(embed_dims=E, feedforward_channels=64, ffn_drop=0.0)),
            post_norm_cfg=None),
        positional_encoding=dict(num_feats=E // 2, normalize=True, offset=-0.5),
        bbox_head=dict(type="DeformableDETRHead", num_classes=3, sync_cls_avg_factor=True,
                       loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25,
                                     loss_weight=2.0),
                       loss_bbox=dict(type="L1Loss", loss_weight=5.0),
                       loss_iou=dict(type="GIoULoss", loss_weight=2.0)),
        test_cfg=dict(max_per_img=10))
    return MODELS.build(cfg)


def _assert_mmcv_init(layer):
    assert torch.all(layer.sampling_offsets.weight == 0)
    torch.testing.assert_close(layer.sampling_offsets.bias.detach(), mmcv_grid_init(HEADS, LEVELS, POINTS))
    assert torch.all(layer.attention_weights.weight == 0) and torch.all(layer.attention_weights.bias == 0)
    for linear in (layer.value_proj, layer.output_proj):
        bound = (6 / (linear.in_features + linear.out_features)) ** 0.5  # Xavier uniform
        assert torch.all(linear.bias == 0)
        assert linear.weight.abs().max() <= bound and linear.weight.std() > bound / 4


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3]])
    nv = int((shapes[:, 0] * shapes[:, 1]).sum())
    query = torch.randn(2, 7, E, generator=g)
    value = torch.randn(2, nv, E, generator=g)
    ref = torch.rand(2, 7, LEVELS, 2, generator=g)
    return dict(query=query, value=value, reference_points=ref, spatial_shapes=shapes,
                level_start_index=torch.tensor([0, 30]))


def test_mmdet_deformable_detr_gets_mmcv_init_and_runs_msda():
    replaced = mnn.patch_mmcv()
    assert replaced == ["mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttention.forward"]
    assert mnn.patch_mmcv() == []  # idempotent
    model = _deformable_detr()
    # Scramble first, so that the values checked below come from init_weights.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.init_weights()  # mmdet's: Xavier on every matrix, then m.init_weights() for mmcv's layer
    layers = [m for m in model.modules() if isinstance(m, MmcvLayer)]
    assert len(layers) == 2  # encoder self-attention, decoder cross-attention
    for layer in layers:
        _assert_mmcv_init(layer)

    layer = layers[0].eval()
    with torch.no_grad():  # Off mmcv's initial grid, so that the points fall between pixels.
        layer.sampling_offsets.weight.normal_(0, 0.1)
        layer.attention_weights.weight.normal_(0, 0.1)
    inputs = _inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = layer(**inputs)
    assert OP_NAME in {e.key for e in prof.key_averages()}
    assert mnn.unpatch_mmcv() == replaced
    expected = layer(**inputs)  # mmcv's own forward (its pure-PyTorch path on the CPU)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_patched_mmcv_layer_maps_residual_to_identity():
    mnn.patch_mmcv()
    layer = MmcvLayer(embed_dims=E, num_heads=HEADS, num_levels=LEVELS, num_points=POINTS,
                      batch_first=True).eval()
    inputs = _inputs(1)
    identity = torch.randn_like(inputs["query"])
    expected = layer(identity=identity, **inputs)
    with pytest.warns(DeprecationWarning, match='"residual" is deprecated'):
        out = layer(residual=identity, **inputs)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


_WITHOUT_OPS = textwrap.dedent("""
    import warnings
    warnings.simplefilter("ignore")
    import torch
    from mmengine.model import BaseModule
    from mmengine.registry import MODELS
    import mmcv.cnn.bricks.transformer as bricks
    import msda.nn as mnn
    try:
        import mmcv.ops.multi_scale_deform_attn
        raise SystemExit("mmcv's ops import: this test is for an mmcv without them")
    except ImportError:
        pass
    assert not hasattr(bricks, "MultiScaleDeformableAttention")
    replaced = mnn.patch_mmcv()
    assert replaced == ["mmengine.registry.MODELS['MultiScaleDeformableAttention']",
                        "mmcv.cnn.bricks.transformer.MultiScaleDeformableAttention"], replaced
    assert mnn.patch_mmcv() == []
    assert bricks.MultiScaleDeformableAttention is mnn.MultiScaleDeformableAttention

    class Encoder(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type="Xavier", layer="Linear"))
            self.attn = MODELS.build(dict(type="MultiScaleDeformableAttention", embed_dims=32,
                                          num_heads=4, num_levels=2, num_points=2, batch_first=True))

    encoder = Encoder()
    assert type(encoder.attn) is mnn.MultiScaleDeformableAttention
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()
    encoder.init_weights()  # the Xavier init_cfg first, then the children's init_weights()
    attn = encoder.attn
    assert torch.all(attn.sampling_offsets.weight == 0) and torch.all(attn.attention_weights.weight == 0)
    assert torch.all(attn.attention_weights.bias == 0) and torch.all(attn.value_proj.bias == 0)
    assert attn.sampling_offsets.bias.abs().max() == 2  # the ray grid: point i at i + 1 steps
    restored = mnn.unpatch_mmcv()
    assert len(restored) == 2, restored
    assert MODELS.get("MultiScaleDeformableAttention") is None
    assert not hasattr(bricks, "MultiScaleDeformableAttention")
    print("ok")
""")


def test_registry_path_without_mmcv_ops():
    run = subprocess.run([sys.executable, "-c", _WITHOUT_OPS], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
