"""PyTorch API: the custom ops ``msda::ms_deform_attn`` and ``msda::ms_deform_attn_backward``.

Both are ``torch.library.custom_op``s with fake (meta) implementations, so they work under
``torch.compile(fullgraph=True)``, ``torch.export`` and ``torch.library.opcheck``; the forward
has an autograd formula that calls the backward op for just the gradients that are needed.

Autocast (CPU): inside ``torch.autocast("cpu", dtype=...)`` value and attention_weights are
cast to the autocast dtype and sampling_locations to float32 (the kernel samples with fp32
coordinates and accumulates in fp32), so the output has the autocast dtype. float64 inputs
are left as they are, as autocast does for built-in ops.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C, _common
from ._common import ARGUMENT_NAMES, check_counts_per_level, check_variant, level_start_index, output_shape

__all__ = ["ms_deform_attn", "ms_deform_attn_backward", "level_start_index"]


def _check_cpu(name: str, t: Tensor) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f"{name}: must be a CPU tensor on this path (a call runs on msda's C++ core when "
            f"value is a CPU tensor, on its Triton kernels when it is a CUDA one), got device "
            f"{t.device}"
        )


def _check_same_device(names, tensors) -> None:
    """Every tensor on value's device. A meta tensor among CPU ones would otherwise send the
    call to the fake implementation, which returns uninitialised memory."""
    device = tensors[0].device
    for name, t in zip(names, tensors):
        # On a GPU the level table may stay on the host (the Triton path copies it over).
        host_table = name in ("spatial_shapes", "level_start_index") and t.device.type == "cpu"
        if t.device != device and not (device.type == "cuda" and host_table):
            raise ValueError(
                f"{name}: must be on the same device as value ({device}), got {t.device}"
            )


def _run_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 num_points_list, method):
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    for name, t in zip(ARGUMENT_NAMES, tensors):
        _check_cpu(name, t)
    counts, discrete = check_variant(num_points_list, method)
    check_counts_per_level(counts, spatial_shapes)
    out = torch.empty(output_shape(value, sampling_locations, counts), dtype=value.dtype)
    # detach(): DLPack refuses tensors that require grad; no copy is made.
    _C.forward(*(t.detach() for t in tensors), out, torch.get_num_threads(), counts, discrete)
    return out


@torch.library.custom_op("msda::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_list: Optional[List[int]] = None,
    method: str = "default",
) -> Tensor:
    return _run_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        num_points_list, method
    )


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      num_points_list=None, method="default"):
    _check_same_device(
        ARGUMENT_NAMES,
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights),
    )
    counts, _ = check_variant(num_points_list, method)
    return value.new_empty(output_shape(value, sampling_locations, counts))


def _empty(like: Tensor) -> Tensor:
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


def _gradient_buffers(value, sampling_locations, attention_weights, needs):
    """The backward op's three outputs: full-size where needed, empty where skipped."""
    return tuple(
        _empty(like) if need else like.new_empty(0)
        for like, need in zip((value, sampling_locations, attention_weights), needs)
    )


@torch.library.custom_op("msda::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    need_value: bool,
    need_locations: bool,
    need_weights: bool,
    num_points_list: Optional[List[int]] = None,
    method: str = "default",
) -> Tuple[Tensor, Tensor, Tensor]:
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    for name, t in zip(ARGUMENT_NAMES + ("grad_output",), tensors + (grad_output,)):
        _check_cpu(name, t)
    counts, discrete = check_variant(num_points_list, method)
    check_counts_per_level(counts, spatial_shapes)
    output_shape(value, sampling_locations, counts)
    grad_value, grad_locations, grad_weights = _gradient_buffers(
        value, sampling_locations, attention_weights, (need_value, need_locations, need_weights)
    )
    if need_value or need_locations or need_weights:
        _C.backward(
            *(t.detach() for t in tensors),
            grad_output.detach(),
            grad_value if need_value else None,
            grad_locations if need_locations else None,
            grad_weights if need_weights else None,
            torch.get_num_threads(),
            counts,
            discrete,
        )
    return grad_value, grad_locations, grad_weights


@_ms_deform_attn_backward_op.register_fake
def _(
    grad_output,
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    need_value,
    need_locations,
    need_weights,
    num_points_list=None,
    method="default",
):
    _check_same_device(
        ARGUMENT_NAMES + ("grad_output",),
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
         grad_output),
    )
    counts, _ = check_variant(num_points_list, method)
    output_shape(value, sampling_locations, counts)
    return _gradient_buffers(
        value, sampling_locations, attention_weights, (need_value, need_locations, need_weights)
    )


# CUDA tensors (NVIDIA, and AMD through ROCm's "cuda" device) run on the Triton kernels of
# msda.triton, imported on the first such call: the CPU package never imports triton.
@_ms_deform_attn_op.register_kernel("cuda")
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      num_points_list=None, method="default"):
    from .triton import _gpu

    return _gpu.forward(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, num_points_list, method)


@_ms_deform_attn_backward_op.register_kernel("cuda")
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
      attention_weights, need_value, need_locations, need_weights, num_points_list=None,
      method="default"):
    from .triton import _gpu

    return _gpu.backward(grad_output, value, spatial_shapes, level_start_index,
                         sampling_locations, attention_weights, need_value, need_locations,
                         need_weights, num_points_list, method)


def _decompose_on_gpu(launcher_name):
    """Under torch.compile (AOTAutograd's functional tracing), a call on CUDA tensors becomes
    its Triton kernels (wrap_triton), which Inductor then compiles into the graph; CPU calls,
    and torch.export (which keeps the op whole), see the op itself."""

    def decompose(mode, op, types, args, kwargs):
        try:
            from torch.export._trace import custom_triton_ops_decomposition_disabled
        except ImportError:  # Older torch: export decomposes as compile does.
            def custom_triton_ops_decomposition_disabled():
                return False

        value = args[1] if launcher_name == "backward" else args[0]
        if value.device.type != "cuda" or custom_triton_ops_decomposition_disabled():
            return mode.__torch_dispatch__(op, types, args, kwargs)
        from .triton import _gpu

        with mode:
            return getattr(_gpu, launcher_name + "_traced")(*args, **kwargs)

    return decompose


def _register_decompositions():
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    _ms_deform_attn_op.register_torch_dispatch(FunctionalTensorMode,
                                               _decompose_on_gpu("forward"))
    _ms_deform_attn_backward_op.register_torch_dispatch(FunctionalTensorMode,
                                                        _decompose_on_gpu("backward"))


_register_decompositions()


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.num_points_list = inputs[5] if len(inputs) > 5 else None
    ctx.method = inputs[6] if len(inputs) > 6 else "default"


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    need_value, _, _, need_locations, need_weights = ctx.needs_input_grad[:5]
    if not (need_value or need_locations or need_weights):
        return None, None, None, None, None, None, None
    if grad_output.dtype != value.dtype:
        grad_output = grad_output.to(value.dtype)
    grad_value, grad_locations, grad_weights = _ms_deform_attn_backward_op(
        grad_output,
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        need_value,
        need_locations,
        need_weights,
        ctx.num_points_list,
        ctx.method,
    )
    return (
        grad_value if need_value else None,
        None,
        None,
        grad_locations if need_locations else None,
        grad_weights if need_weights else None,
        None,
        None,
    )


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


# Autocast on the CPU: value / attention_weights to the autocast dtype, locations to fp32.
_autocast_lib = torch.library.Library("msda", "FRAGMENT")


def _autocast_cpu(
    _keyset, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
    num_points_list=None, method="default"
):
    def eligible(t):
        return t.is_floating_point() and t.device.type == "cpu" and t.dtype != torch.float64

    if eligible(value):
        dtype = torch.get_autocast_dtype("cpu")
        value = value.to(dtype)
        if eligible(attention_weights):
            attention_weights = attention_weights.to(dtype)
        if eligible(sampling_locations):
            sampling_locations = sampling_locations.to(torch.float32)
    with torch._C._ExcludeDispatchKeyGuard(
        torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
    ):
        return torch.ops.msda.ms_deform_attn.default(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            num_points_list, method
        )


_autocast_lib.impl("ms_deform_attn", _autocast_cpu, "AutocastCPU", with_keyset=True)


def _index_tensor(name: str, x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        try:
            t = torch.tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: expected a tensor or a (nested) list of ints: {e}") from None
        if t.numel() > 0 and t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name}: expected a list of ints, got elements of dtype {t.dtype}")
        return t.to(torch.int64)
    raise TypeError(f"{name}: expected a torch.Tensor (or a list of ints), got {type(x).__name__}")


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type not in ("cpu", "meta", "cuda"):
        raise ValueError(
            f"{name}: must be a CPU or CUDA tensor (msda runs on its C++ core and, for CUDA "
            f"tensors, on its Triton kernels), got device {t.device}"
        )


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Union[Tensor, Sequence[Sequence[int]]],
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    num_points_list: Optional[Sequence[int]] = None,
    method: str = "default",
) -> Tensor:
    """MultiScale Deformable Attention forward (differentiable): output [B, Q, H * D].

    Args:
        value: [B, K, H, D], float32 / float16 / bfloat16 / float64, K = sum of H_l * W_l.
        spatial_shapes: [L, 2] int32 / int64 CPU tensor (or list) of rows (H_l, W_l).
        level_start_index: [L] int32 / int64 CPU tensor, prefix sums of H_l * W_l from 0;
            None computes it from spatial_shapes.
        sampling_locations: [B, Q, H, L, P, 2] in [0, 1], last dim (x, y); value's dtype or
            float32.
        attention_weights: [B, Q, H, L, P] in value's dtype, used as given (no softmax).
        num_points_list: None, or one point count per level (RT-DETRv2, D-FINE): then
            sampling_locations is [B, Q, H, N, 2] and attention_weights [B, Q, H, N], N the
            sum, level l's points after those of the levels before it.
        method: "default" (bilinear) or "discrete" (RT-DETRv2's nearest pixel, clamped into
            the map; no gradient for sampling_locations).

    Any strides are accepted. Sampling is bilinear with zero padding, align_corners=False
    (as ``F.grid_sample`` with ``grid = 2 * loc - 1``). Runs on torch.get_num_threads()
    threads. Wrong shapes, dtypes or devices raise ValueError / TypeError naming the argument.
    """
    spatial_shapes = _index_tensor("spatial_shapes", spatial_shapes)
    if level_start_index is None:
        level_start_index = _common.level_start_index(spatial_shapes)
    else:
        level_start_index = _index_tensor("level_start_index", level_start_index)
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    for name, t in zip(ARGUMENT_NAMES, tensors):
        _check_tensor(name, t)
    counts, _ = check_variant(num_points_list, method)
    if counts is None and method == "default":  # The original op's schema, as exported.
        return _ms_deform_attn_op(*tensors)
    return _ms_deform_attn_op(*tensors, counts, method)



def ms_deform_attn_backward(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
    *,
    need_value: bool = True,
    need_locations: bool = True,
    need_weights: bool = True,
    num_points_list: Optional[Sequence[int]] = None,
    method: str = "default",
) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The backward called directly, with the arguments in the order of
    ``msda.numpy.ms_deform_attn_backward`` and the C API (the five inputs, then grad_output):
    (grad_value, grad_sampling_locations, grad_attention_weights), None for a gradient not
    asked for (it is not computed)."""
    for name, t in zip(
        ARGUMENT_NAMES + ("grad_output",),
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
         grad_output),
    ):
        _check_tensor(name, t)
    needs = (bool(need_value), bool(need_locations), bool(need_weights))
    counts, _ = check_variant(num_points_list, method)
    grads = _ms_deform_attn_backward_op(
        grad_output,
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        *needs,
        counts,
        method,
    )
    return tuple(g if need else None for g, need in zip(grads, needs))
