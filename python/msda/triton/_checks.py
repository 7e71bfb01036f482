"""Argument checks of the Triton path: the C library's rules (docs/errors.md) and messages, in
the same order, on tensors that may live on a GPU.

The level table's contents (V22-V25) are read only when spatial_shapes and level_start_index
are on the host: reading them from a GPU would synchronise the device. The kernels mask every
key row to [0, keys), so a wrong table on the GPU gives wrong numbers, never an access outside
value.
"""
import torch
from torch._subclasses.fake_tensor import is_fake

from .._common import output_shape

_NAMES = {
    torch.float32: "FLOAT32",
    torch.float16: "FLOAT16",
    torch.bfloat16: "BFLOAT16",
    torch.float64: "FLOAT64",
    torch.int32: "INT32",
    torch.int64: "INT64",
}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INDEXES = (torch.int32, torch.int64)


def _fail(exc, message, status):
    raise exc(f"{message} [{status}]")


def _shape(t):
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _supported(name, t):
    if t.dtype not in _NAMES:
        text = str(t.dtype).replace("torch.", "")
        raise TypeError(
            f"{name}: dtype {text} is not supported (msda takes float32, float16, bfloat16, "
            "float64 and, for spatial_shapes / level_start_index, int32 or int64)"
        )


def _dtype(name, t, expected, rule):
    if t.dtype != expected:
        _fail(TypeError, f"{name}: dtype must be {_NAMES[expected]} ({rule}), got "
              f"{_NAMES[t.dtype]}", "MSDA_ERROR_INVALID_DTYPE")


def _rank(name, t, rank, layout):
    if t.ndim != rank:
        _fail(ValueError, f"{name}: must have rank {rank} {layout}, got {_shape(t)}",
              "MSDA_ERROR_INVALID_RANK")


def _dims(name, t, expected, what):
    for i, (e, w) in enumerate(zip(expected, what)):
        if e >= 0 and t.shape[i] != e:
            _fail(ValueError, f"{name}: dim {i} ({w}) must be {e}, got {t.shape[i]} in shape "
                  f"{_shape(t)}", "MSDA_ERROR_SHAPE_MISMATCH")


def _device(name, t, device, host_ok):
    if t.device != device and not (host_ok and t.device.type == "cpu"):
        raise ValueError(f"{name}: must be on the same device as value ({device}), got {t.device}")


METHODS = ("default", "discrete")


def check_variant(num_points_list, method):
    """Checks the variant arguments on their own, with the CPU op's rules and messages
    (msda._common.check_variant); returns num_points_list as a tuple of ints (or None) and
    method."""
    from .._common import check_variant as common

    counts, _ = common(num_points_list, method)
    return (None if counts is None else tuple(counts)), method


def _points_rank(value, sampling_locations, counts):
    """The rank checks of the points-per-level layout, in the order of output_shape's."""
    if counts is None:
        output_shape(value, sampling_locations)
        return
    _rank("value", value, 4, "[batch, keys, heads, embed_dims]")
    _rank("sampling_locations", sampling_locations, 5,
          "[batch, queries, heads, points, 2] (with num_points_list)")


def check(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output=None, num_points_list=None, method="default"):
    """Checks a call; returns (B, K, H, D, Q, L, N), N the points of a (query, head): L * P, or
    the sum of num_points_list. Raises TypeError / ValueError naming the argument, as the CPU
    op does."""
    counts, method = check_variant(num_points_list, method)
    inputs = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    if grad_output is not None:
        inputs["grad_output"] = grad_output
    for name, t in inputs.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    for name, t in inputs.items():
        _device(name, t, value.device, name in ("spatial_shapes", "level_start_index"))
    _points_rank(value, sampling_locations, counts)
    for name, t in inputs.items():
        _supported(name, t)

    vt = value.dtype
    if vt not in _FLOATS:
        _fail(TypeError, f"value: dtype must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT64, got "
              f"{_NAMES[vt]}", "MSDA_ERROR_INVALID_DTYPE")
    for name in ("spatial_shapes", "level_start_index"):
        if inputs[name].dtype not in _INDEXES:
            _fail(TypeError, f"{name}: dtype must be INT32 or INT64, got "
                  f"{_NAMES[inputs[name].dtype]}", "MSDA_ERROR_INVALID_DTYPE")
    if sampling_locations.dtype not in (vt, torch.float32):
        _fail(TypeError, f"sampling_locations: dtype must be value's dtype ({_NAMES[vt]}) or "
              f"FLOAT32, got {_NAMES[sampling_locations.dtype]}", "MSDA_ERROR_INVALID_DTYPE")
    _dtype("attention_weights", attention_weights, vt, "value's dtype")
    if grad_output is not None:
        _dtype("grad_output", grad_output, vt, "value's dtype")

    _rank("value", value, 4, "[batch, keys, heads, embed_dims]")
    _rank("spatial_shapes", spatial_shapes, 2, "[levels, 2]")
    _rank("level_start_index", level_start_index, 1, "[levels]")
    if counts is None:
        _rank("sampling_locations", sampling_locations, 6,
              "[batch, queries, heads, levels, points, 2]")
        _rank("attention_weights", attention_weights, 5,
              "[batch, queries, heads, levels, points]")
    else:
        _rank("sampling_locations", sampling_locations, 5,
              "[batch, queries, heads, points, 2] (with num_points_list)")
        _rank("attention_weights", attention_weights, 4,
              "[batch, queries, heads, points] (with num_points_list)")

    B, K, H, D = value.shape
    if H < 1 or D < 1:
        _fail(ValueError, "value: heads (dim 2) and embed_dims (dim 3) must be >= 1, got shape "
              f"{_shape(value)}", "MSDA_ERROR_SHAPE_MISMATCH")
    L = spatial_shapes.shape[0]
    if L < 1:
        _fail(ValueError, "spatial_shapes: must have at least one level",
              "MSDA_ERROR_SHAPE_MISMATCH")
    _dims("spatial_shapes", spatial_shapes, (-1, 2), ("levels", "(H, W)"))
    _dims("level_start_index", level_start_index, (L,), ("levels, from spatial_shapes",))
    if counts is None:
        _dims("sampling_locations", sampling_locations, (B, -1, H, L, -1, 2),
              ("batch, from value", "queries", "heads, from value",
               "levels, from spatial_shapes", "points", "(x, y)"))
        Q, P = sampling_locations.shape[1], sampling_locations.shape[4]
        if P < 1:
            _fail(ValueError, "sampling_locations: points (dim 4) must be >= 1, got shape "
                  f"{_shape(sampling_locations)}", "MSDA_ERROR_SHAPE_MISMATCH")
        _dims("attention_weights", attention_weights, (B, Q, H, L, P),
              ("batch, from value", "queries, from sampling_locations", "heads, from value",
               "levels, from spatial_shapes", "points, from sampling_locations"))
        N = L * P
    else:
        if len(counts) != L:
            raise ValueError(f"num_points_list: must have one entry per level of spatial_shapes "
                             f"({L}), got {len(counts)} entries")
        N = sum(counts)
        _dims("sampling_locations", sampling_locations, (B, -1, H, N, 2),
              ("batch, from value", "queries", "heads, from value",
               "points, the sum of num_points_list", "(x, y)"))
        Q = sampling_locations.shape[1]
        _dims("attention_weights", attention_weights, (B, Q, H, N),
              ("batch, from value", "queries, from sampling_locations", "heads, from value",
               "points, the sum of num_points_list"))
    if grad_output is not None:
        _rank("grad_output", grad_output, 3, "[batch, queries, heads * embed_dims]")
        _dims("grad_output", grad_output, (B, Q, H * D), ("batch", "queries", "heads * embed_dims"))

    if _readable(spatial_shapes) and _readable(level_start_index):
        _check_levels(spatial_shapes.tolist(), level_start_index.tolist(), K)
    return B, K, H, D, Q, L, N


def _readable(t):
    """Whether t's contents can be read without a device synchronisation (or a trace break)."""
    return (t.device.type == "cpu" and not is_fake(t) and not torch._is_functional_tensor(t)
            and not torch.compiler.is_compiling())


def _check_levels(shapes, starts, keys):
    limit = 2**63 - 1
    start = 0
    for level, ((h, w), given) in enumerate(zip(shapes, starts)):
        if h < 1 or w < 1:
            _fail(ValueError, f"spatial_shapes: level {level} has (H, W) = ({h}, {w}); both must "
                  "be >= 1", "MSDA_ERROR_INVALID_VALUE")
        if h * w > limit - start:
            _fail(ValueError, f"spatial_shapes: level {level} makes the number of keys overflow "
                  "int64", "MSDA_ERROR_LIMIT_EXCEEDED")
        if given != start:
            _fail(ValueError, f"level_start_index: entry {level} must be {start} (the sum of H*W "
                  f"of the levels before it), got {given}", "MSDA_ERROR_INVALID_VALUE")
        start += h * w
    if start != keys:
        _fail(ValueError, f"spatial_shapes: the sum of H*W over levels is {start} but value has "
              f"{keys} keys (dim 1)", "MSDA_ERROR_INVALID_VALUE")
