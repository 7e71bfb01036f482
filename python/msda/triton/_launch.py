"""Launchers of the Triton kernels: output allocation, grids, autotuning, and the deterministic
backward's sort. Written with torch ops and ``wrap_triton`` only, so that ``torch.compile``
traces through them and puts the kernels into its graph."""
import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _kernels
from ._checks import check

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# MSDA_TRITON_AUTOTUNE=0 runs one fixed configuration (quick tests); the interpreter always
# does (autotuning would run every configuration).
AUTOTUNE = not INTERPRET and os.environ.get("MSDA_TRITON_AUTOTUNE", "1") != "0"

# Blocks of queries and warps tried per (D, H, L * P).
_CONFIGS = [
    triton.Config({"BLOCK_Q": bq}, num_warps=w)
    for bq, w in ((16, 2), (32, 4), (64, 4), (64, 8), (128, 8))
]
_FIXED_BLOCK_Q = 16 if INTERPRET else 32
_KEY = ["D", "H", "LP"]

if not AUTOTUNE:
    _forward = _kernels._forward_kernel
    _backward = _kernels._backward_kernel
else:
    _forward = triton.autotune(_CONFIGS, key=_KEY)(_kernels._forward_kernel)
    # Each trial adds into grad_value again: zero it before each.
    _backward = triton.autotune(_CONFIGS, key=_KEY, reset_to_zero=["grad_value"])(
        _kernels._backward_kernel)
_gather = _kernels._gather_value_grad_kernel


def _run(kernel, grid, *args, **meta):
    """Launches through wrap_triton (traceable by torch.compile) except in the interpreter,
    whose kernels wrap_triton does not take."""
    if INTERPRET:
        kernel[grid](*args, **meta)
    else:
        wrap_triton(kernel)[grid](*args, **meta)


def _meta(**meta):
    if not AUTOTUNE:
        meta["BLOCK_Q"] = _FIXED_BLOCK_Q
    return meta


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_d(D):
    return min(triton.next_power_of_2(D), 128)


def _on(device, t):
    return t if t.device == device else t.to(device, non_blocking=True)


def _points(counts, L, N, loc, attn):
    """How the kernels address the points: (loc, attn, P, point_starts, variable).

    P points per level: loc [B, Q, H, L, P, 2], attn [B, Q, H, L, P] (equal counts given as
    num_points_list are viewed so: the same kernels as without it). Unequal counts: the flat
    [B, Q, H, N, 2] / [B, Q, H, N] tensors, a 0 level stride (see _strides) and the per-level
    table point_starts [L + 1] of prefix sums of the counts, on value's device."""
    empty = torch.empty(0, dtype=torch.int64, device=loc.device)
    if counts is None:
        return loc, attn, N // L, empty, False
    if len(set(counts)) == 1:
        # Splitting one dim is always a view, whatever the strides.
        B, Q, H = loc.shape[:3]
        return (loc.view(B, Q, H, L, counts[0], 2), attn.view(B, Q, H, L, counts[0]),
                counts[0], empty, False)
    starts = [0]
    for p in counts:
        starts.append(starts[-1] + p)
    return loc, attn, 0, torch.tensor(starts, dtype=torch.int64, device=loc.device), True


def _strides(t, rank):
    """t's strides as the kernels take them (rank 6 for locations, 5 for weights): a flat
    points tensor gets a 0 level stride before its point dim; an empty placeholder all 0."""
    if t.numel() == 0:
        return (0,) * rank
    s = t.stride()
    return s if t.ndim == rank else s[:3] + (0,) + s[3:]


def forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            num_points_list=None, method="default"):
    B, K, H, D, Q, L, N = check(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, None, num_points_list, method)
    out = torch.empty((B, Q, H * D), dtype=value.dtype, device=value.device)
    if out.numel() == 0:
        return out
    counts = None if num_points_list is None else tuple(num_points_list)
    loc, attn, P, point_starts, variable = _points(counts, L, N, sampling_locations,
                                                   attention_weights)
    shapes = _on(value.device, spatial_shapes)
    starts = _on(value.device, level_start_index)
    block_d = _block_d(D)

    def grid(meta):
        return (B * H * triton.cdiv(Q, meta["BLOCK_Q"]), triton.cdiv(D, block_d))

    _run(_forward, grid, value, shapes, starts, loc, attn, out, point_starts,
         B, Q, K, H, D, L, P, *value.stride(), *shapes.stride(), *starts.stride(),
         *_strides(loc, 6), *_strides(attn, 5), *out.stride(), N,
         **_meta(ACC=_acc(value.dtype), BLOCK_D=block_d, VARIABLE=variable,
                 DISCRETE=method == "discrete"))
    return out


def backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
             attention_weights, need_value, need_locations, need_weights, deterministic,
             num_points_list=None, method="default"):
    """(grad_value, grad_sampling_locations, grad_attention_weights); an empty tensor for a
    gradient not asked for. The discrete method has no location gradient: zeros."""
    B, K, H, D, Q, L, N = check(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, grad_output, num_points_list, method)
    discrete = method == "discrete"
    device = value.device
    acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    if not need_locations:
        grad_loc = value.new_empty(0)
    elif discrete:
        grad_loc = torch.zeros(sampling_locations.shape, dtype=sampling_locations.dtype,
                               device=device)
    else:
        grad_loc = torch.empty(sampling_locations.shape, dtype=sampling_locations.dtype,
                               device=device)
    grad_attn = (torch.empty(attention_weights.shape, dtype=attention_weights.dtype,
                             device=device) if need_weights else value.new_empty(0))
    if not need_value:
        grad_value = value.new_empty(0)
    elif deterministic:
        grad_value = torch.empty(value.shape, dtype=value.dtype, device=device)
    else:
        # Atomic adds go into an accumulator of the accumulation type (value's own dtype for
        # fp32 and fp64, so then it is grad_value itself).
        grad_value = torch.zeros(value.shape, dtype=acc_dtype, device=device)
    kernel_loc = bool(need_locations) and not discrete
    if B * Q == 0 or not (need_value or kernel_loc or need_weights):
        if need_value:
            grad_value = torch.zeros(value.shape, dtype=value.dtype, device=device)
        return grad_value, grad_loc, grad_attn

    counts = None if num_points_list is None else tuple(num_points_list)
    loc, attn, P, point_starts, variable = _points(counts, L, N, sampling_locations,
                                                   attention_weights)
    shapes = _on(device, spatial_shapes)
    starts = _on(device, level_start_index)
    block_d = _block_d(D)
    corners = 1 if discrete else 4
    entries = B * Q * H * N * corners if (need_value and deterministic) else 0
    entry_keys = torch.empty(entries, dtype=torch.int64, device=device)
    entry_coefs = torch.empty(entries, dtype=acc_dtype, device=device)
    atomic = need_value and not deterministic
    gv = grad_value if atomic else value.new_empty((0, 0, 0, 0), dtype=acc_dtype)
    gl = grad_loc.view(loc.shape) if kernel_loc else loc.new_empty((0,) * 6)
    ga = grad_attn.view(attn.shape) if need_weights else attn.new_empty((0,) * 5)
    strides = lambda t, n: t.stride() if t.ndim == n and t.numel() else (0,) * n  # noqa: E731

    def grid(meta):
        return (B * H * triton.cdiv(Q, meta["BLOCK_Q"]),)

    _run(_backward, grid, grad_output, value, shapes, starts, loc, attn, gv, gl, ga,
         entry_keys, entry_coefs, point_starts, B, Q, K, H, D, L, P,
         *grad_output.stride(), *value.stride(), *shapes.stride(), *starts.stride(),
         *_strides(loc, 6), *_strides(attn, 5), *strides(gv, 4), *_strides(gl, 6),
         *_strides(ga, 5), N,
         **_meta(ACC=_acc(value.dtype), BLOCK_D=block_d, ATOMIC=atomic,
                 ENTRIES=entries > 0, NEED_LOC=kernel_loc, NEED_ATTN=bool(need_weights),
                 VARIABLE=variable, DISCRETE=discrete))

    if entries > 0:
        # Group the entries by grad_value row, keeping entry order within a row (a stable
        # sort), then sum each row's entries in that order.
        sorted_keys, perm = torch.sort(entry_keys, stable=True)
        rows = B * H * K
        row_starts = torch.searchsorted(
            sorted_keys, torch.arange(rows + 1, dtype=torch.int64, device=device))
        _run(_gather, (rows, triton.cdiv(D, block_d)), grad_output, perm, row_starts,
             entry_coefs, grad_value, Q, K, H, D, N * corners, *grad_output.stride(),
             *grad_value.stride(), BLOCK_D=block_d, ACC=_acc(value.dtype))
    elif atomic and grad_value.dtype != value.dtype:
        grad_value = grad_value.to(value.dtype)
    return grad_value, grad_loc, grad_attn
