"""NumPy entry: msda's kernels on NumPy arrays, without importing torch.

NumPy has no bfloat16, so value / attention_weights are float16, float32 or float64 here;
sampling_locations are value's dtype or float32; spatial_shapes and level_start_index are
int32 or int64. Arrays are read in place with their strides (negative or odd strides are
copied first).
"""
import numpy as np

from . import _C
from ._common import check_num_threads, check_counts_per_level, check_variant, level_start_index, output_shape

__all__ = ["ms_deform_attn", "ms_deform_attn_backward", "level_start_index"]

_UNSUPPORTED_KINDS = "OSUMmVcb"


def _array(name, x):
    a = np.asarray(x)
    if a.dtype.kind in _UNSUPPORTED_KINDS:
        raise TypeError(
            f"{name}: dtype {a.dtype} is not supported (msda takes float16, float32, float64 "
            "and, for spatial_shapes / level_start_index, int32 or int64)"
        )
    if any(s < 0 or s % a.itemsize for s in a.strides):
        a = np.ascontiguousarray(a)
    return a


def _inputs(value, spatial_shapes, level_start_index_, sampling_locations, attention_weights):
    spatial_shapes = _array("spatial_shapes", spatial_shapes)
    if level_start_index_ is None:
        level_start_index_ = level_start_index(spatial_shapes)
    return (
        _array("value", value),
        spatial_shapes,
        _array("level_start_index", level_start_index_),
        _array("sampling_locations", sampling_locations),
        _array("attention_weights", attention_weights),
    )


def ms_deform_attn(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    *,
    out=None,
    num_threads=None,
    num_points_list=None,
    method="default",
):
    """Forward: returns output [B, Q, H * D] in value's dtype.

    value [B, K, H, D]; spatial_shapes [L, 2] rows (H_l, W_l); level_start_index [L] (None:
    computed from spatial_shapes); sampling_locations [B, Q, H, L, P, 2] in [0, 1], last dim
    (x, y); attention_weights [B, Q, H, L, P], used as given. With ``num_points_list`` (one
    point count per level, RT-DETRv2's layout) sampling_locations is [B, Q, H, sum, 2] and
    attention_weights [B, Q, H, sum]; ``method="discrete"`` samples the nearest pixel
    (docs/semantics.md). ``out`` may be a preallocated
    writable array of the output's shape and dtype. ``num_threads`` None or 0 uses msda's
    default (MSDA_NUM_THREADS, else every hardware thread).
    """
    args = _inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    threads = check_num_threads(num_threads)
    counts, discrete = check_variant(num_points_list, method)
    check_counts_per_level(counts, args[1])
    shape = output_shape(args[0], args[3], counts)
    if out is None:
        out = np.empty(shape, dtype=args[0].dtype)
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"out: must be a numpy.ndarray, got {type(out).__name__}")
    elif not out.flags.writeable:
        raise ValueError("out: must be writable")
    _C.forward(*args, out, threads, counts, discrete)
    return out


def ms_deform_attn_backward(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    grad_output,
    *,
    need_value=True,
    need_locations=True,
    need_weights=True,
    num_threads=None,
    num_points_list=None,
    method="default",
):
    """Backward: returns (grad_value, grad_sampling_locations, grad_attention_weights).

    Each has its input's shape and dtype; a gradient not asked for (need_* False) is None and
    is not computed. grad_output has the output's shape and value's dtype. num_points_list
    and method as for the forward (with method="discrete" grad_sampling_locations is zero).
    """
    args = _inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    grad_output = _array("grad_output", grad_output)
    threads = check_num_threads(num_threads)
    counts, discrete = check_variant(num_points_list, method)
    check_counts_per_level(counts, args[1])
    value, _, _, locations, weights = args
    output_shape(value, locations, counts)
    grad_value = np.empty(value.shape, value.dtype) if need_value else None
    grad_locations = np.empty(locations.shape, locations.dtype) if need_locations else None
    grad_weights = np.empty(weights.shape, weights.dtype) if need_weights else None
    _C.backward(*args, grad_output, grad_value, grad_locations, grad_weights, threads, counts,
                discrete)
    return grad_value, grad_locations, grad_weights
