"""msda's Triton kernels: MultiScale Deformable Attention on GPUs (NVIDIA and AMD, through
Triton), and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set before
triton is imported).

``msda.ms_deform_attn`` on GPU tensors runs these kernels already; the entries here run them on
whatever device the tensors are on:

* ``ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
  attention_weights, *, num_points_list=None, method="default")``: differentiable, as
  ``msda.ms_deform_attn``;
* ``ms_deform_attn_backward(value, ..., attention_weights, grad_output, *, need_value,
  need_locations, need_weights, num_points_list=None, method="default")``: as
  ``msda.ms_deform_attn_backward``.

Two variants (RT-DETRv2, D-FINE, DEIMv2):

* ``num_points_list = [P_0, ..., P_{L-1}]`` (ints >= 1, one per level): points per level.
  sampling_locations is then [B, Q, H, N, 2] and attention_weights [B, Q, H, N],
  N = sum P_l; the points sum_{l' < l} P_l' .. + P_l - 1 sample level l;
* ``method="discrete"``: each point reads one pixel of its level, x index
  trunc(clamp(x * W_l + 0.5, 0, W_l - 1)) (y likewise; NaN gives 0), computed in fp32 (fp64 for
  fp64 problems) with each operation rounded; no zero padding. Its location gradient is zero.

The backward adds grad_value with fp32 (fp64) atomic adds, whose order, and so whose last
bits, change from run to run. The deterministic mode sums each grad_value element in a fixed
order instead (bitwise the same on every run); it is on when
``torch.are_deterministic_algorithms_enabled()``, or as set by ``set_deterministic``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "msda.triton (msda on GPUs) needs Triton: pip install triton (or the msda[gpu] extra)"
    ) from e

from . import _launch  # noqa: E402
from ._checks import check_variant  # noqa: E402

__all__ = ["ms_deform_attn", "ms_deform_attn_backward", "set_deterministic", "is_deterministic"]

_deterministic: Optional[bool] = None


def set_deterministic(mode: Optional[bool]) -> None:
    """True: the backward always sums grad_value in a fixed order; False: always with atomic
    adds; None (the default): deterministic when torch.are_deterministic_algorithms_enabled()."""
    global _deterministic
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"mode: must be True, False or None, got {type(mode).__name__}")
    _deterministic = mode


def is_deterministic() -> bool:
    """Whether a backward called now sums grad_value in a fixed order."""
    if _deterministic is not None:
        return _deterministic
    return torch.are_deterministic_algorithms_enabled()


def _index(name, x):
    from ..ops import _index_tensor

    return _index_tensor(name, x)


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, num_points_list, method):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        ctx.variant = (num_points_list, method)
        return _launch.forward(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, num_points_list, method)

    @staticmethod
    def backward(ctx, grad_output):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        need_value, _, _, need_loc, need_attn = ctx.needs_input_grad[:5]
        grads = _launch.backward(grad_output.to(value.dtype), value, shapes, starts, loc, attn,
                                 need_value, need_loc, need_attn, is_deterministic(),
                                 *ctx.variant)
        gv, gl, ga = (g if need else None for g, need in zip(grads, (need_value, need_loc,
                                                                      need_attn)))
        return gv, None, None, gl, ga, None, None


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
    """As ``msda.ms_deform_attn`` (same arguments, checks and result), on the Triton kernels;
    num_points_list and method select the variants (see the module's docstring)."""
    num_points_list, method = check_variant(num_points_list, method)
    spatial_shapes = _index("spatial_shapes", spatial_shapes)
    if level_start_index is None:
        from ..ops import level_start_index as starts_of

        level_start_index = starts_of(spatial_shapes)
    else:
        level_start_index = _index("level_start_index", level_start_index)
    return _Function.apply(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, num_points_list, method)


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
    """As ``msda.ms_deform_attn_backward``, on the Triton kernels; num_points_list and method
    as in ``ms_deform_attn``."""
    needs = (bool(need_value), bool(need_locations), bool(need_weights))
    grads = _launch.backward(grad_output, value, spatial_shapes, level_start_index,
                             sampling_locations, attention_weights, *needs, is_deterministic(),
                             num_points_list, method)
    return tuple(g if need else None for g, need in zip(grads, needs))
