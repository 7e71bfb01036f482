"""msda.onnx: models that call msda's op export to ONNX and run in ONNX Runtime and OpenVINO.

The standard form is checked against msda itself (the exported graph must reproduce msda's
semantics, the gate included) at two batch and query sizes, so that a dimension frozen at
export fails; the TensorRT form is checked for the plugin's node contract, by onnx.checker
and by shape inference (no TensorRT here to run it).
"""
import math

import numpy as np
import pytest
import torch

import msda
import msda.nn as mnn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import msda.onnx as monnx  # noqa: E402

from _reference import level_start_index  # noqa: E402

LEVELS = ((8, 10), (4, 5), (2, 3))


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, *arrays):
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(arrays), names
    return session.run(None, {n: a.numpy() for n, a in zip(names, arrays)})[0]


def _runner(runtime, path):
    """A function running the exported graph at `path` in ONNX Runtime or OpenVINO's CPU
    plugin (in float32: OpenVINO would otherwise compute in bfloat16 where the CPU has it)."""
    if runtime == "onnxruntime":
        session = _session(path)
        return lambda *arrays: _run(session, *arrays)
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": 2})
    assert len(compiled.inputs) > 0

    def run(*arrays):
        assert len(arrays) == len(compiled.inputs)
        return compiled([a.numpy() for a in arrays])[compiled.output(0)]

    return run


RUNTIMES = ["onnxruntime", "openvino"]


def _assert_matches(got, expected, dtype=torch.float32):
    """ONNX Runtime's graph and msda in the same dtype: both accumulate in float32 (or
    float64) in different orders, so they agree to a few units of the dtype's epsilon times
    the number of terms summed, relative to the output's scale."""
    expected = expected.detach().double()
    got = torch.from_numpy(np.asarray(got)).double()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan), "NaN in different places"
    got, expected = got[~nan], expected[~nan]
    eps = torch.finfo(dtype).eps
    scale = expected.abs().max().item() if expected.numel() else 1.0
    err = (got - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= 64 * eps * scale, f"max error {err:.3e}, bound {64 * eps * scale:.3e}"


class _Op(torch.nn.Module):
    """msda's op alone, the level tables as buffers (as a model holds them)."""

    def __init__(self, levels):
        super().__init__()
        shapes = torch.tensor(levels, dtype=torch.int64)
        self.register_buffer("spatial_shapes", shapes)
        self.register_buffer("level_start_index", level_start_index(shapes))

    def forward(self, value, sampling_locations, attention_weights):
        return msda.ms_deform_attn(value, self.spatial_shapes, self.level_start_index,
                                   sampling_locations, attention_weights)


def _op_inputs(batch, queries, heads=2, dims=4, points=3, levels=LEVELS, dtype=torch.float32,
               seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = sum(h * w for h, w in levels)
    value = torch.randn(batch, keys, heads, dims, generator=g)
    loc = torch.rand(batch, queries, heads, len(levels), points, 2, generator=g) * 1.4 - 0.2
    attn = torch.rand(batch, queries, heads, len(levels), points, generator=g)
    return value.to(dtype), loc.to(dtype), attn.to(dtype)


def _border_locations(loc, levels):
    """Puts points on the gate's edges and beyond: exactly on the -1 / W_l pixel bounds (just
    outside), a hair inside them, on pixel centres, and NaN, +-inf and huge coordinates."""
    loc = loc.clone()
    w = torch.tensor([w for _, w in levels], dtype=torch.float64)
    h = torch.tensor([h for h, _ in levels], dtype=torch.float64)
    # x_im = x * W - 0.5: x_im == -1 and x_im == W fail the gate; -1 + 1e-3 passes.
    edges_x = torch.stack([-0.5 / w, (w + 0.5) / w, (-1 + 1e-3 + 0.5) / w,
                           (w - 1e-3 + 0.5) / w, 0.5 / w], -1)  # [L, 5]
    edges_y = torch.stack([-0.5 / h, (h + 0.5) / h, (-1 + 1e-3 + 0.5) / h,
                           (h - 1e-3 + 0.5) / h, 0.5 / h], -1)
    n = loc.shape[1]
    for q in range(min(n, 5)):
        loc[:, q, :, :, 0, 0] = edges_x[:, q].to(loc.dtype)
        loc[:, q, :, :, 0, 1] = 0.5
        loc[:, q, :, :, 1, 1] = edges_y[:, q].to(loc.dtype)
        loc[:, q, :, :, 1, 0] = 0.5
    specials = [math.nan, math.inf, -math.inf, 1e30, -1e30]
    for q, s in enumerate(specials):
        if 5 + q < n:
            loc[:, 5 + q, :, :, 2, q % 2] = s
    return loc


@pytest.mark.parametrize("runtime,opset", [("onnxruntime", 16), ("onnxruntime", 20),
                                           ("openvino", 16)])
def test_op_standard_form_matches_msda_with_dynamic_sizes(tmp_path, runtime, opset):
    model = _Op(LEVELS).eval()
    path = tmp_path / "op.onnx"
    value, loc, attn = _op_inputs(2, 12)
    monnx.export(model, (value, loc, attn), path, opset=opset)
    graph = onnx.load(str(path))
    ops = {n.op_type for n in graph.graph.node}
    assert "GridSample" in ops and not any(n.domain not in ("", "ai.onnx") for n in
                                           graph.graph.node), ops
    assert graph.opset_import[0].version == opset
    # Batch and query count are symbolic in the graph, so other sizes run.
    dims = graph.graph.input[1].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param, dims
    run = _runner(runtime, path)
    for batch, queries, seed in ((2, 12, 1), (3, 37, 2), (1, 1, 3)):
        value, loc, attn = _op_inputs(batch, queries, seed=seed)
        loc = _border_locations(loc, LEVELS)
        attn[:, -1] = math.nan  # A NaN weight counts wherever its point passes the gate.
        expected = model(value, loc, attn)
        _assert_matches(run(value, loc, attn), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_standard_form_gate_is_msda_gate(tmp_path, dtype):
    """Each query has one live point (weight NaN) at a candidate coordinate and the rest far
    off the maps with weight 0: its output is NaN exactly where the point passes the gate, so
    the graph must pass and refuse the same points as msda, edges and specials included."""
    levels = LEVELS
    candidates = []
    for level, (h, w) in enumerate(levels):
        for size, axis in ((w, 0), (h, 1)):
            for pixel in (-1.0, -1.0 + 1e-3, -0.5, 0.0, size - 1.0, size - 1e-3, size,
                          size + 1e-3):
                candidates.append((level, axis, (pixel + 0.5) / size))
        for special in (math.nan, math.inf, -math.inf, 1e30, -1e30):
            candidates.append((level, level % 2, special))
    Q = len(candidates)
    model = _Op(levels).eval()
    value = torch.randn(1, sum(h * w for h, w in levels), 1, 3, dtype=dtype)
    loc = torch.full((1, Q, 1, len(levels), 1, 2), 5.0, dtype=dtype)
    attn = torch.zeros(1, Q, 1, len(levels), 1, dtype=dtype)
    for q, (level, axis, coordinate) in enumerate(candidates):
        loc[0, q, 0, level, 0, :] = 0.5
        loc[0, q, 0, level, 0, axis] = coordinate
        attn[0, q, 0, level, 0] = math.nan
    path = tmp_path / "gate.onnx"
    monnx.export(model, (value, loc[:, :7], attn[:, :7]), path)
    expected = model(value, loc, attn)[0, :, 0].isnan()
    got = torch.from_numpy(_run(_session(path), value, loc, attn))[0, :, 0].isnan()
    assert 0 < int(expected.sum()) < Q  # Some pass, some fail: the test can tell.
    assert torch.equal(got, expected), [c for c, g, e in zip(candidates, got, expected)
                                        if g != e]


def test_op_standard_form_float64(tmp_path):
    model = _Op(LEVELS).eval()
    value, loc, attn = _op_inputs(2, 9, dtype=torch.float64)
    path = tmp_path / "op64.onnx"
    monnx.export(model, (value, loc, attn), path)
    session = _session(path)
    value, loc, attn = _op_inputs(3, 20, dtype=torch.float64, seed=4)
    loc = _border_locations(loc, LEVELS)
    _assert_matches(_run(session, value, loc, attn), model(value, loc, attn), torch.float64)


def test_op_standard_form_half_computes_in_float32(tmp_path):
    """float16 inputs: the graph casts to float32, samples, and rounds once, as msda does, so
    the two agree to float16's rounding of the result."""
    model = _Op(LEVELS).eval()
    value, loc, attn = _op_inputs(2, 9, dtype=torch.float16)
    path = tmp_path / "op16.onnx"
    monnx.export(model, (value, loc, attn), path)
    graph = onnx.load(str(path))
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = _session(path)
    value, loc, attn = _op_inputs(3, 14, dtype=torch.float16, seed=5)
    expected = model(value, loc, attn).float()
    got = torch.from_numpy(_run(session, value, loc, attn)).float()
    # One rounding each of the same float32 result: at most one float16 ulp apart.
    ulp = torch.finfo(torch.float16).eps * expected.abs().clamp_min(2.0**-14)
    assert ((got - expected).abs() <= ulp + 1e-7).all()


def test_torchscript_exporter_standard_form(tmp_path):
    model = _Op(LEVELS).eval()
    value, loc, attn = _op_inputs(2, 12)
    path = tmp_path / "op_ts.onnx"
    axes = {"value": {0: "batch"}, "loc": {0: "batch", 1: "queries"},
            "attn": {0: "batch", 1: "queries"}, "out": {0: "batch", 1: "queries"}}
    monnx.export(model, (value, loc, attn), path, dynamo=False, opset=17,
                 input_names=["value", "loc", "attn"], output_names=["out"],
                 dynamic_axes=axes)
    session = _session(path)
    value, loc, attn = _op_inputs(3, 21, seed=6)
    loc = _border_locations(loc, LEVELS)
    _assert_matches(_run(session, value, loc, attn), model(value, loc, attn))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("batch_first", [True, False])
def test_mmcv_layer_exports_with_dynamic_batch_and_queries(tmp_path, batch_first, runtime):
    torch.manual_seed(0)
    E, H, P = 32, 4, 2
    layer = mnn.MultiScaleDeformableAttention(E, H, len(LEVELS), P, batch_first=batch_first,
                                              dropout=0.0)
    with torch.no_grad():  # A trained-looking layer: non-zero offsets and weights.
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    shapes = torch.tensor(LEVELS)
    starts = level_start_index(shapes)
    keys = sum(h * w for h, w in LEVELS)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer
            self.register_buffer("shapes", shapes)
            self.register_buffer("starts", starts)

        def forward(self, query, value, reference_points):
            return self.layer(query, value=value, reference_points=reference_points,
                              spatial_shapes=self.shapes, level_start_index=self.starts)

    def inputs(batch, queries, seed):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(batch, queries, E, generator=g)
        v = torch.randn(batch, keys, E, generator=g)
        ref = torch.rand(batch, queries, len(LEVELS), 2, generator=g)
        if not batch_first:
            q, v = q.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()
        return q, v, ref

    model = Wrapped().eval()
    path = tmp_path / "layer.onnx"
    monnx.export(model, inputs(2, 16, 0), path)
    run = _runner(runtime, path)
    for batch, queries, seed in ((2, 16, 1), (3, 41, 2)):
        args = inputs(batch, queries, seed)
        _assert_matches(run(*args), model(*args))


def _tiny_deformable_detr():
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
        layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = transformers.DeformableDetrConfig(
        backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32,
        decoder_ffn_dim=32, num_queries=10, num_feature_levels=3, encoder_n_points=2,
        decoder_n_points=2)
    torch.manual_seed(0)
    return transformers.DeformableDetrModel(config).eval()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_patched_transformers_deformable_detr_runs_in_onnx_runtime(tmp_path, runtime):
    detr = _tiny_deformable_detr()
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, 64, 80, generator=g)
    with torch.no_grad():
        original = detr(pixel_values=probe).last_hidden_state
    assert len(mnn.patch_transformers(detr)) == 2  # The encoder's and the decoder's.
    with torch.no_grad():  # msda in place of transformers' own grid_sample path.
        _assert_matches(detr(pixel_values=probe).last_hidden_state, original)

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.detr = detr

        def forward(self, pixel_values):
            return self.detr(pixel_values=pixel_values).last_hidden_state

    model = Hidden().eval()
    path = tmp_path / "detr.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    monnx.export(model, (torch.randn(2, 3, 64, 80, generator=g),), path,
                 dynamic_shapes=({0: batch},))
    graph = onnx.load(str(path))
    assert sum(n.op_type == "GridSample" for n in graph.graph.node) == 2 * 3  # Per level.
    run = _runner(runtime, path)
    for b in (2, 3):
        pixels = torch.randn(b, 3, 64, 80, generator=g)
        with torch.no_grad():
            expected = model(pixels)
        _assert_matches(run(pixels), expected)


def test_tensorrt_form_is_the_plugin_node(tmp_path):
    model = _Op(LEVELS).eval()
    value, loc, attn = _op_inputs(2, 12)
    path = tmp_path / "trt.onnx"
    monnx.export(model, (value, loc, attn), path, form="tensorrt")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    plugins = [n for n in graph.graph.node if n.op_type == monnx.TRT_PLUGIN_NAME]
    assert len(plugins) == 1, [n.op_type for n in graph.graph.node]
    node = plugins[0]
    assert node.domain == monnx.TRT_DOMAIN
    assert {d.domain for d in graph.opset_import} >= {"", monnx.TRT_DOMAIN}
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attributes.get("plugin_version") == b"1", attributes
    assert len(node.input) == 5 and len(node.output) == 1
    # Shape inference types every input the plugin reads and its [B, Q, H, D] output.
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    types = {v.name: v.type.tensor_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) +
             list(inferred.graph.output)}
    expected_types = [onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT32,
                      onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
    assert [types[i].elem_type for i in node.input] == expected_types

    def dims(name):
        return [d.dim_value or d.dim_param for d in types[name].shape.dim]

    out = dims(node.output[0])
    assert len(out) == 4 and out[2:] == [2, 4], out
    assert isinstance(out[0], str) and isinstance(out[1], str), out  # Batch, queries dynamic.
    final = dims(graph.graph.output[0].name)
    assert len(final) == 3 and final[2] == 8, final


def test_tensorrt_form_casts_mixed_dtypes_and_half(tmp_path):
    model = _Op(LEVELS).eval()
    value, loc, attn = _op_inputs(2, 6, dtype=torch.float16)
    path = tmp_path / "trt16.onnx"
    monnx.export(model, (value, loc.float(), attn), path, form="tensorrt")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input)}
    node = next(n for n in graph.graph.node if n.op_type == monnx.TRT_PLUGIN_NAME)
    assert types[node.input[3]] == onnx.TensorProto.FLOAT16  # float32 locations cast.


def test_bad_arguments_are_named():
    model = _Op(LEVELS).eval()
    args = _op_inputs(2, 4)
    with pytest.raises(ValueError, match="form: must be one of"):
        monnx.export(model, args, None, form="openvino")
    with pytest.raises(ValueError, match="opset: must be an int >= 16"):
        monnx.export(model, args, None, opset=13)
    with pytest.raises(ValueError, match="opset"):
        monnx.translation_table(opset=True)
    value, loc, attn = _op_inputs(2, 4, dtype=torch.float64)
    with pytest.raises(Exception, match="TensorRT.*float32 or float16"):
        monnx.export(model, (value, loc, attn), None, form="tensorrt")
