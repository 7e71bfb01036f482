"""ONNX export of models that call msda's op (``torch.ops.msda.ms_deform_attn``, and so
``msda.ms_deform_attn``, ``msda.nn.MultiScaleDeformableAttention`` and models patched with
``msda.nn.patch_transformers``).

Two forms of the op in the exported graph:

* ``"standard"`` (the default): standard ONNX operators only (one ``GridSample`` per level,
  opset >= 16), so any ONNX runtime runs the model. The graph reproduces msda's semantics
  (docs/semantics.md): bilinear sampling with ``align_corners=False`` and zero padding, and a
  point contributes only inside the gate ``-1 < x * W_l - 0.5 < W_l``, ``-1 < y * H_l - 0.5 <
  H_l`` (NaN, infinite and huge coordinates fail it and contribute nothing, whatever the
  weight). Half-precision inputs are computed in float32, as msda does.
* ``"tensorrt"``: one node ``MultiscaleDeformableAttnPlugin_TRT`` (TensorRT's own plugin,
  version 1, no attributes besides the parser's ``plugin_version``), fed value
  [B, K, H, D], spatial_shapes [L, 2] and level_start_index [L] as INT32, sampling_locations
  [B, Q, H, L, P, 2] and attention_weights [B, Q, H, L, P] in value's dtype (float32 or
  float16); the plugin's [B, Q, H, D] result is reshaped to msda's [B, Q, H * D].

``export(model, args, path)`` is the one-liner; ``translation_table(form, opset)`` gives the
``custom_translation_table`` for calling ``torch.onnx.export`` yourself (dynamo exporter);
``register_torchscript_symbolic(form, opset)`` registers the same graphs for the TorchScript
exporter (``torch.onnx.export(..., dynamo=False)``).
"""
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from . import ops as _ops  # noqa: F401  (registers torch.ops.msda.*)

__all__ = [
    "export",
    "translation_table",
    "register_torchscript_symbolic",
    "FORMS",
    "DEFAULT_OPSET",
    "TRT_PLUGIN_NAME",
    "TRT_PLUGIN_VERSION",
    "TRT_DOMAIN",
]

FORMS = ("standard", "tensorrt")
# torch.onnx's own default; GridSample needs 16, the dynamo exporter builds at 18 and up.
DEFAULT_OPSET = 20
MIN_OPSET = 16

# TensorRT OSS plugin/multiscaleDeformableAttnPlugin: the creator's name and version. The
# ONNX parser looks a node up by op_type, "plugin_version" (default "1") and
# "plugin_namespace" (default ""); the node's domain is not part of the lookup.
TRT_PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
TRT_PLUGIN_VERSION = "1"
TRT_DOMAIN = "trt"

# ONNX TensorProto data types used here.
_FLOAT, _INT32, _INT64, _FLOAT16, _DOUBLE = 1, 6, 7, 10, 11


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form: must be one of {FORMS}, got {form!r}")


def _check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset: must be an int >= {MIN_OPSET} (GridSample), got {opset!r}"
        )


# The graph is written once against a small builder interface, so that the dynamo exporter
# (onnxscript tracing) and the TorchScript exporter (torch._C.Graph) emit the same nodes.


class _OnnxscriptBuilder:
    """Emits nodes through onnxscript while torch.onnx's dynamo exporter traces a function."""

    def __init__(self, opset: int):
        import onnxscript

        self._op = getattr(onnxscript, f"opset{opset}")
        self.opset = opset

    def op(self, name: str, *inputs, **attributes):
        return getattr(self._op, name)(*inputs, **attributes)

    def ints(self, values: Sequence[int]):
        return self._op.Constant(value_ints=[int(v) for v in values])

    def scalar(self, value: float, dtype: int):
        return self._op.Cast(self._op.Constant(value_float=float(value)), to=dtype)

    @staticmethod
    def dtype(value) -> int:
        return int(value.dtype)

    @staticmethod
    def static_dims(value):
        """The value's dims: an int where static, None where symbolic or unknown."""
        shape = value.shape
        if shape is None:
            return None
        return [d if isinstance(d, int) else None for d in shape]

    def custom(self, domain: str, name: str, inputs, attributes, like, dims):
        import onnx_ir as ir
        from onnxscript import values

        op = values.Op(values.Opset(domain, 1), name, _trt_schema())
        out = op(*inputs, **attributes)
        # Unknown to ONNX: give the output its type and shape, so shape inference continues.
        out.dtype = like.dtype
        out.shape = ir.Shape(dims)
        return out


def _trt_schema():
    """An unregistered OpSchema for the plugin node: onnxscript's tracer needs a signature."""
    from onnx.defs import OpSchema

    parameter = OpSchema.FormalParameter
    return OpSchema(
        TRT_PLUGIN_NAME, TRT_DOMAIN, 1,
        inputs=[parameter("value", "T"), parameter("spatial_shapes", "I"),
                parameter("level_start_index", "I"), parameter("sampling_locations", "T"),
                parameter("attention_weights", "T")],
        outputs=[parameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""),
                          ("I", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, ""),
                    OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "")],
    )


_TS_ATTRIBUTE_SUFFIX = {int: "_i", float: "_f", str: "_s"}


class _TorchScriptBuilder:
    """Emits nodes into the TorchScript exporter's graph (torch.onnx symbolic functions)."""

    def __init__(self, g, opset: int):
        self._g = g
        self.opset = opset

    def op(self, name: str, *inputs, **attributes):
        named = {}
        for key, value in attributes.items():
            kind = type(value[0]) if isinstance(value, (list, tuple)) else type(value)
            named[key + _TS_ATTRIBUTE_SUFFIX[kind]] = value
        return self._g.op(name, *inputs, **named)

    def ints(self, values: Sequence[int]):
        return self._g.op("Constant", value_t=torch.tensor([int(v) for v in values]))

    def scalar(self, value: float, dtype: int):
        return self._g.op("Cast", self._g.op("Constant", value_t=torch.tensor(float(value))),
                          to_i=dtype)

    @staticmethod
    def dtype(value) -> int:
        scalar_type = value.type().scalarType()
        return {"Float": _FLOAT, "Double": _DOUBLE, "Half": _FLOAT16, "BFloat16": 16,
                "Int": _INT32, "Long": _INT64}.get(scalar_type, 0)

    @staticmethod
    def static_dims(value):
        sizes = value.type().varyingSizes()
        if sizes is None:
            return None
        return [d if isinstance(d, int) else None for d in sizes]

    def custom(self, domain: str, name: str, inputs, attributes, like, dims):
        named = {key + "_s": value for key, value in attributes.items()}
        out = self._g.op(f"{domain}::{name}", *inputs, **named)
        out.setType(like.type().with_sizes(dims))
        return out


def _dim(b, shape, index: int):
    """Dim ``index`` of a Shape output, as a 1-element int64 tensor."""
    return b.op("Slice", shape, b.ints([index]), b.ints([index + 1]))


def _levels(b, sampling_locations) -> int:
    dims = b.static_dims(sampling_locations)
    if dims is None or len(dims) != 6 or dims[3] is None:
        raise ValueError(
            "sampling_locations: the export needs rank 6 [batch, queries, heads, levels, "
            "points, 2] with a static number of levels (dim 3), got "
            f"{dims if dims is not None else 'an unknown shape'}"
        )
    return dims[3]


def _standard_graph(b, value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights):
    """msda's forward with standard operators: [B, Q, H * D] in value's dtype."""
    num_levels = _levels(b, sampling_locations)
    value_dtype = b.dtype(value)
    # Half types are storage only: msda computes in float32 (float64 for float64).
    compute = _DOUBLE if value_dtype == _DOUBLE else _FLOAT

    value_shape = b.op("Shape", value)  # [B, K, H, D]
    location_shape = b.op("Shape", sampling_locations)  # [B, Q, H, L, P, 2]
    batch, heads, dims = (_dim(b, value_shape, i) for i in (0, 2, 3))
    queries, points = _dim(b, location_shape, 1), _dim(b, location_shape, 4)
    batch_heads = b.op("Mul", batch, heads)

    # value [B, K, H, D] -> [B * H, D, K]: each level is a slice of the last axis.
    values = b.op("Transpose", b.op("Cast", value, to=compute), perm=[0, 2, 3, 1])
    values = b.op("Reshape", values, b.op("Concat", batch_heads, dims, b.ints([-1]), axis=0))

    shapes = b.op("Cast", spatial_shapes, to=_INT64)  # [L, 2] rows (H_l, W_l)
    starts = b.op("Cast", level_start_index, to=_INT64)  # [L]
    sizes = b.op("Cast", shapes, to=compute)
    # [L, 1], broadcast against [B, Q, H, L, P].
    height = b.op("Reshape", b.op("Gather", sizes, b.ints([0]), axis=1), b.ints([-1, 1]))
    width = b.op("Reshape", b.op("Gather", sizes, b.ints([1]), axis=1), b.ints([-1, 1]))

    locations = b.op("Cast", sampling_locations, to=compute)
    x = b.op("Squeeze", b.op("Gather", locations, b.ints([0]), axis=5), b.ints([5]))
    y = b.op("Squeeze", b.op("Gather", locations, b.ints([1]), axis=5), b.ints([5]))
    half, minus_one = b.scalar(0.5, compute), b.scalar(-1.0, compute)
    # The gate of docs/semantics.md, on msda's pixel coordinates: comparisons with NaN are
    # false, so NaN and infinite coordinates fail it like huge ones.
    w_im = b.op("Sub", b.op("Mul", x, width), half)
    h_im = b.op("Sub", b.op("Mul", y, height), half)
    inside = b.op(
        "And",
        b.op("And", b.op("Greater", w_im, minus_one), b.op("Less", w_im, width)),
        b.op("And", b.op("Greater", h_im, minus_one), b.op("Less", h_im, height)),
    )  # [B, Q, H, L, P]
    # A point outside the gate samples at grid -3 (every corner off the map: exactly zero,
    # never a read of value) with weight zero, so neither a NaN weight nor a NaN or infinite
    # value there can reach the output.
    grid = b.op("Sub", b.op("Mul", locations, b.scalar(2.0, compute)), b.scalar(1.0, compute))
    grid = b.op("Where", b.op("Unsqueeze", inside, b.ints([5])), grid, b.scalar(-3.0, compute))
    weights = b.op("Where", inside, b.op("Cast", attention_weights, to=compute),
                   b.scalar(0.0, compute))

    mode = "linear" if b.opset >= 20 else "bilinear"
    grid_shape = b.op("Concat", batch_heads, queries, points, b.ints([2]), axis=0)
    weight_shape = b.op("Concat", batch_heads, b.ints([1]), queries, points, axis=0)
    total = None
    for level in range(num_levels):
        shape = b.op("Gather", shapes, b.ints([level]), axis=0)  # [1, 2]
        level_height = b.op("Reshape", b.op("Gather", shape, b.ints([0]), axis=1), b.ints([1]))
        level_width = b.op("Reshape", b.op("Gather", shape, b.ints([1]), axis=1), b.ints([1]))
        start = b.op("Gather", starts, b.ints([level]), axis=0)  # [1]
        end = b.op("Add", start, b.op("Mul", level_height, level_width))
        level_values = b.op("Slice", values, start, end, b.ints([2]))  # [B * H, D, H_l * W_l]
        level_values = b.op(
            "Reshape",
            level_values,
            b.op("Concat", batch_heads, dims, level_height, level_width, axis=0),
        )  # [B * H, D, H_l, W_l]
        # [B, Q, H, P, 2] -> [B, H, Q, P, 2] -> [B * H, Q, P, 2]
        level_grid = b.op("Squeeze", b.op("Gather", grid, b.ints([level]), axis=3), b.ints([3]))
        level_grid = b.op("Reshape", b.op("Transpose", level_grid, perm=[0, 2, 1, 3, 4]),
                          grid_shape)
        sampled = b.op("GridSample", level_values, level_grid, mode=mode,
                       padding_mode="zeros", align_corners=0)  # [B * H, D, Q, P]
        # [B, Q, H, P] -> [B, H, Q, P] -> [B * H, 1, Q, P]
        level_weights = b.op("Squeeze", b.op("Gather", weights, b.ints([level]), axis=3),
                             b.ints([3]))
        level_weights = b.op("Reshape", b.op("Transpose", level_weights, perm=[0, 2, 1, 3]),
                             weight_shape)
        term = b.op("ReduceSum", b.op("Mul", sampled, level_weights), b.ints([3]),
                    keepdims=0)  # [B * H, D, Q]
        total = term if total is None else b.op("Add", total, term)

    # [B * H, D, Q] -> [B, H, D, Q] -> [B, Q, H, D] -> [B, Q, H * D]
    out = b.op("Reshape", total, b.op("Concat", batch, heads, dims, queries, axis=0))
    out = b.op("Transpose", out, perm=[0, 3, 1, 2])
    out = b.op("Reshape", out, b.op("Concat", batch, queries, b.op("Mul", heads, dims), axis=0))
    if value_dtype != compute:
        out = b.op("Cast", out, to=value_dtype)
    return out


def _tensorrt_graph(b, value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights):
    """One MultiscaleDeformableAttnPlugin_TRT node, then a Reshape to [B, Q, H * D]."""
    _levels(b, sampling_locations)
    value_dtype = b.dtype(value)
    if value_dtype not in (_FLOAT, _FLOAT16):
        raise ValueError(
            f"value: TensorRT's {TRT_PLUGIN_NAME} takes float32 or float16, got ONNX data "
            f"type {value_dtype}; export in one of those dtypes or use form='standard'"
        )
    # The plugin takes the level table in INT32 and every float input in value's dtype.
    inputs = [
        value,
        b.op("Cast", spatial_shapes, to=_INT32),
        b.op("Cast", level_start_index, to=_INT32),
        sampling_locations if b.dtype(sampling_locations) == value_dtype
        else b.op("Cast", sampling_locations, to=value_dtype),
        attention_weights if b.dtype(attention_weights) == value_dtype
        else b.op("Cast", attention_weights, to=value_dtype),
    ]
    value_dims = b.static_dims(value) or [None] * 4
    location_dims = b.static_dims(sampling_locations) or [None] * 6
    out_dims = [value_dims[0], location_dims[1], value_dims[2], value_dims[3]]
    out = b.custom(TRT_DOMAIN, TRT_PLUGIN_NAME, inputs,
                   {"plugin_version": TRT_PLUGIN_VERSION, "plugin_namespace": ""}, value,
                   _symbolic_dims(value, sampling_locations, out_dims))
    # [B, Q, H, D] -> [B, Q, H * D]
    return b.op("Reshape", out, b.ints([0, 0, -1]))


def _symbolic_dims(value, sampling_locations, dims):
    """The output dims with the inputs' symbolic names where a dim is dynamic (onnxscript)."""
    value_shape = getattr(value, "shape", None)
    location_shape = getattr(sampling_locations, "shape", None)
    if value_shape is None or location_shape is None or not hasattr(value_shape, "dims"):
        return dims
    return [value_shape[0], location_shape[1], value_shape[2], value_shape[3]]


_GRAPHS = {"standard": _standard_graph, "tensorrt": _tensorrt_graph}


def translation_table(form: str = "standard", opset: int = DEFAULT_OPSET) -> Dict[Any, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: msda's op in
    the given form, written for the given opset (pass the same ``opset_version``)."""
    _check_form(form)
    _check_opset(opset)
    graph = _GRAPHS[form]

    def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights, num_points_list=None, method="default"):
        _check_default_variant(num_points_list, method)
        return graph(_OnnxscriptBuilder(opset), value, spatial_shapes, level_start_index,
                     sampling_locations, attention_weights)

    return {torch.ops.msda.ms_deform_attn.default: ms_deform_attn}


def _is_none_value(v) -> bool:
    node = getattr(v, "node", None)
    return node is not None and node().mustBeNone()


def _check_default_variant(num_points_list, method) -> None:
    """The exported graphs are those of the original op; the variants (per-level point counts,
    discrete sampling) are not exported yet."""
    if num_points_list is not None or method not in ("default", None):
        raise NotImplementedError(
            "msda.onnx: ONNX export of the num_points_list / method='discrete' variants is not "
            "supported; export models that use the original op (equal point counts, bilinear)"
        )


def register_torchscript_symbolic(form: str = "standard", opset: int = DEFAULT_OPSET) -> None:
    """Registers msda's op for the TorchScript exporter (``torch.onnx.export(...,
    dynamo=False, opset_version=opset)``), replacing an earlier registration."""
    _check_form(form)
    _check_opset(opset)
    graph = _GRAPHS[form]

    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights, num_points_list=None, method=None):
        if num_points_list is not None and not _is_none_value(num_points_list):
            _check_default_variant([0], "default")
        if method is not None and not _is_none_value(method):
            from torch.onnx import symbolic_helper

            _check_default_variant(None, symbolic_helper._maybe_get_const(method, "s"))
        return graph(_TorchScriptBuilder(g, opset), value, spatial_shapes, level_start_index,
                     sampling_locations, attention_weights)

    torch.onnx.register_custom_op_symbolic("msda::ms_deform_attn", symbolic, opset)


def export(
    model: torch.nn.Module,
    args: Sequence[Any] = (),
    f=None,
    *,
    kwargs: Optional[Dict[str, Any]] = None,
    form: str = "standard",
    dynamic: bool = True,
    dynamic_shapes=None,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    **export_options,
):
    """Exports ``model`` (which may call msda's op anywhere) to ONNX at ``f`` (a path, or
    None to only return the program).

    Args:
        model, args, kwargs: as for ``torch.onnx.export``; run in eval mode.
        form: ``"standard"`` (standard ONNX operators, any runtime) or ``"tensorrt"`` (one
            ``MultiscaleDeformableAttnPlugin_TRT`` node per call, for TensorRT).
        dynamic: make the first two dims of every tensor argument dynamic where the model
            lets them vary (``torch.export.Dim.AUTO``): batch, query and key counts in either
            layout. Example inputs should have those dims >= 2 (torch.export specialises
            sizes 0 and 1). Ignored when ``dynamic_shapes`` is given.
        dynamic_shapes: passed to ``torch.onnx.export`` as it is (dynamo exporter).
        opset: ONNX opset (>= 16; the dynamo exporter's default, 20, if not given).
        dynamo: True for torch.onnx's dynamo exporter (the default), False for the
            TorchScript one (dynamic axes then come from ``export_options["dynamic_axes"]``).
        input_names, output_names, **export_options: passed to ``torch.onnx.export``.

    Returns what ``torch.onnx.export`` returns: an ``ONNXProgram`` (dynamo) or None.
    """
    _check_form(form)
    _check_opset(opset)
    if not isinstance(args, tuple):
        args = tuple(args) if isinstance(args, list) else (args,)
    was_training = model.training
    model.eval()
    try:
        if not dynamo:
            register_torchscript_symbolic(form, opset)
            return torch.onnx.export(model, args, f, kwargs=kwargs, dynamo=False,
                                     opset_version=opset, input_names=input_names,
                                     output_names=output_names, **export_options)
        if dynamic_shapes is None and dynamic:
            dynamic_shapes = _dynamic_shapes_for(model, args, kwargs)
        return torch.onnx.export(
            model, args, f, kwargs=kwargs, dynamo=True, opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=translation_table(form, opset),
            input_names=input_names, output_names=output_names, **export_options,
        )
    finally:
        model.train(was_training)


def _dynamic_shapes_for(model, args, kwargs):
    """Dim.AUTO on the first two dims of every tensor argument: batch and sequence (queries,
    keys) in both the batch-first and the sequence-first layout. torch.export keeps dynamic
    those the model lets vary and specialises the rest (a conv's channels, a level count)."""
    auto = torch.export.Dim.AUTO

    def mark(x):
        if isinstance(x, torch.Tensor):
            if x.ndim <= 2 and not (x.is_floating_point() or x.dtype == torch.bool):
                return None  # A level table: spatial_shapes [L, 2], level_start_index [L].
            return {i: auto for i in range(min(x.ndim, 2))} or None
        if isinstance(x, (list, tuple)):
            return type(x)(mark(item) for item in x)
        if isinstance(x, dict):
            return {key: mark(item) for key, item in x.items()}
        return None

    if not kwargs:
        return tuple(mark(a) for a in args)
    # With keyword arguments torch.export wants a dict keyed by the forward's parameter names.
    import inspect

    names = list(inspect.signature(model.forward).parameters)
    shapes = {name: mark(a) for name, a in zip(names, args)}
    shapes.update({key: mark(v) for key, v in kwargs.items()})
    return shapes
