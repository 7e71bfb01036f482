"""PyTorch API: the custom ops ``msda::ms_deform_attn`` and ``msda::ms_deform_attn_backward``.

Both are defined on a ``torch.library.Library`` with kernels per dispatch key and fake (meta)
implementations, so they work under ``torch.compile(fullgraph=True)``, ``torch.export`` and
``torch.library.opcheck``; the forward has an autograd formula that calls the backward op for
just the gradients that are needed. Plain eager calls on CPU tensors go straight to the same
kernels without the dispatcher (the direct path, below), which halves a small call's cost.

Autocast (CPU): inside ``torch.autocast("cpu", dtype=...)`` value and attention_weights are
cast to the autocast dtype and sampling_locations to float32 (the kernel samples with fp32
coordinates and accumulates in fp32), so the output has the autocast dtype. float64 inputs
are left as they are, as autocast does for built-in ops.
"""
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C, _common
from ._common import ARGUMENT_NAMES, check_counts_per_level, check_variant, level_start_index, output_shape

__all__ = ["ms_deform_attn", "ms_deform_attn_backward", "level_start_index"]


# The ops are defined on a torch.library.Library with Python kernels per dispatch key (CPU,
# CUDA, Autograd, AutocastCPU) and a fake kernel, rather than with torch.library.custom_op:
# custom_op's layers (its autograd wrapper, argument checks and pytree handling) cost about
# 8x a plain Library kernel per call, which dominates a decoder layer's small calls
# (bench/bench_small_calls.py measures both). The schemas are the ones custom_op inferred, so
# exported programs and the ONNX exporter see the same ops.
_lib = torch.library.Library("msda", "DEF")
_lib.define(
    "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
    "Tensor sampling_locations, Tensor attention_weights, SymInt[]? num_points_list=None, "
    'str method="default") -> Tensor',
    tags=(torch.Tag.pt2_compliant_tag,),
)
_lib.define(
    "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
    "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
    "bool need_value, bool need_locations, bool need_weights, SymInt[]? num_points_list=None, "
    'str method="default") -> (Tensor, Tensor, Tensor)',
    tags=(torch.Tag.pt2_compliant_tag,),
)
_forward_op = torch.ops.msda.ms_deform_attn.default
_backward_op = torch.ops.msda.ms_deform_attn_backward.default

# A DLPack capsule of a tensor without Tensor.__dlpack__'s Python-level checks (about 7x
# slower per tensor, six tensors a call); the C side refuses what it cannot read, and a
# failure is retried through _dlpack_named, which names the argument.
_to_dlpack = getattr(torch._C, "_to_dlpack", None) or (lambda t: t.detach())


def _dlpack_named(name: str, t: Tensor):
    if t.layout != torch.strided:
        raise ValueError(f"{name}: must be a strided (dense) tensor, got layout {t.layout}")
    try:
        return t.detach().__dlpack__()
    except (BufferError, RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: cannot be passed to msda's C++ core: {e}") from None


def _capsules(names, tensors):
    try:
        return [_to_dlpack(t) for t in tensors]
    except Exception:  # Name the tensor that failed (or raise the failure as it was).
        out = [_dlpack_named(n, t) for n, t in zip(names, tensors)]
        return out


_STRIDED = torch.strided


def _plain_cpu(tensors) -> bool:
    """Whether every tensor is a plain (no subclass) dense CPU tensor."""
    for t in tensors:
        if type(t) is not Tensor or not t.is_cpu or t.layout is not _STRIDED:
            return False
    return True


def _materialised(tensors) -> bool:
    """Whether DLPack can hand over every tensor's data as it is: a negative-bit view
    (``z.conj().imag``) or a ZeroTensor cannot (the dispatcher's fallbacks materialise those
    first). Asked only outside tracing (after _unobserved): Dynamo cannot trace is_neg."""
    for t in tensors:
        if t.is_neg() or t._is_zerotensor():
            return False
    return True


def _check_cpu(names, tensors) -> None:
    for name, t in zip(names, tensors):
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


def _variant(num_points_list, method, spatial_shapes):
    """(counts, discrete) of a call, checked; the original op's arguments are the quick case."""
    if num_points_list is None and method == "default":
        return None, False
    counts, discrete = check_variant(num_points_list, method)
    check_counts_per_level(counts, spatial_shapes)
    return counts, discrete


# Where PyTorch's intra-op threads are an OpenMP team (its CPU builds on Linux), msda runs its
# parallel sections on that team instead of its own pool (the extension finds the runtime:
# _C.openmp_runtime()). Right after a parallel op the team's threads spin waiting for more
# work; threads of msda's own pool would then share their cores with them.
_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()

_BACKWARD_NAMES = ARGUMENT_NAMES + ("grad_output",)
_FORWARD_CAPSULE_NAMES = ARGUMENT_NAMES + ("output",)
_GRADIENT_NAMES = ("grad_value", "grad_sampling_locations", "grad_attention_weights")


def _forward_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 num_points_list=None, method="default"):
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if not _plain_cpu(tensors):  # Subclasses answer through .device.
        _check_cpu(ARGUMENT_NAMES, tensors)
    return _forward_run(tensors, *_variant(num_points_list, method, spatial_shapes))


def _forward_run(tensors, counts, discrete):
    """The CPU kernel's work, on the five inputs known to be CPU tensors."""
    value, sampling_locations = tensors[0], tensors[3]
    out = value.new_empty(output_shape(value, sampling_locations, counts))
    _C.forward(*_capsules(_FORWARD_CAPSULE_NAMES, tensors + (out,)),
               torch.get_num_threads(), counts, discrete, _OPENMP)
    return out


def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                  num_points_list=None, method="default"):
    _check_same_device(
        ARGUMENT_NAMES,
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights),
    )
    counts, _ = check_variant(num_points_list, method)
    return value.new_empty(output_shape(value, sampling_locations, counts))


def _gradient_buffers(value, sampling_locations, attention_weights, needs):
    """The backward op's three outputs: full-size where needed, empty where skipped.

    Full-size buffers are dense row-major whatever the input's strides (the C API writes any
    strides, and the autograd engine copies a gradient whose strides do not suit it).
    """
    if needs[0] and needs[1] and needs[2]:  # The common case, without the loop.
        return (torch.empty_like(value, memory_format=_CONTIGUOUS),
                torch.empty_like(sampling_locations, memory_format=_CONTIGUOUS),
                torch.empty_like(attention_weights, memory_format=_CONTIGUOUS))
    return tuple(
        torch.empty_like(like, memory_format=_CONTIGUOUS) if need else like.new_empty(0)
        for like, need in zip((value, sampling_locations, attention_weights), needs)
    )


_CONTIGUOUS = torch.contiguous_format


def _backward_cpu(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, need_value, need_locations, need_weights,
                  num_points_list=None, method="default"):
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
               grad_output)
    if not _plain_cpu(tensors):  # Subclasses answer through .device.
        _check_cpu(_BACKWARD_NAMES, tensors)
    return _backward_run(tensors, (need_value, need_locations, need_weights),
                         *_variant(num_points_list, method, spatial_shapes))


def _backward_run(tensors, needs, counts, discrete):
    """The backward CPU kernel's work, on the five inputs and grad_output (in that order)
    known to be CPU tensors."""
    value, sampling_locations, attention_weights = tensors[0], tensors[3], tensors[4]
    output_shape(value, sampling_locations, counts)
    grads = _gradient_buffers(value, sampling_locations, attention_weights, needs)
    need_value, need_locations, need_weights = needs
    if need_value and need_locations and need_weights:
        capsules = _capsules(_BACKWARD_NAMES + _GRADIENT_NAMES, tensors + grads)
        _C.backward(*capsules, torch.get_num_threads(), counts, discrete, _OPENMP)
    elif need_value or need_locations or need_weights:
        given = [g for g, need in zip(grads, needs) if need]
        capsules = _capsules(
            _BACKWARD_NAMES + tuple(n for n, need in zip(_GRADIENT_NAMES, needs) if need),
            tensors + tuple(given),
        )
        outs = iter(capsules[6:])
        _C.backward(*capsules[:6], *(next(outs) if need else None for need in needs),
                    torch.get_num_threads(), counts, discrete, _OPENMP)
    return grads


def _backward_fake(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, need_value, need_locations, need_weights,
                   num_points_list=None, method="default"):
    _check_same_device(
        _BACKWARD_NAMES,
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
         grad_output),
    )
    counts, _ = check_variant(num_points_list, method)
    output_shape(value, sampling_locations, counts)
    return _gradient_buffers(
        value, sampling_locations, attention_weights, (need_value, need_locations, need_weights)
    )


_lib.impl("ms_deform_attn", _forward_cpu, "CPU")
_lib.impl("ms_deform_attn_backward", _backward_cpu, "CPU")
torch.library.register_fake("msda::ms_deform_attn", _forward_fake, lib=_lib)
torch.library.register_fake("msda::ms_deform_attn_backward", _backward_fake, lib=_lib)


# CUDA tensors (NVIDIA, and AMD through ROCm's "cuda" device) run on the Triton kernels of
# msda.triton, imported on the first such call: the CPU package never imports triton.
def _forward_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, num_points_list=None, method="default"):
    from .triton import _gpu

    return _gpu.forward(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, num_points_list, method)


def _backward_cuda(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, need_value, need_locations, need_weights,
                   num_points_list=None, method="default"):
    from .triton import _gpu

    return _gpu.backward(grad_output, value, spatial_shapes, level_start_index,
                         sampling_locations, attention_weights, need_value, need_locations,
                         need_weights, num_points_list, method)


_lib.impl("ms_deform_attn", _forward_cuda, "CUDA")
_lib.impl("ms_deform_attn_backward", _backward_cuda, "CUDA")


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

    torch.library.register_torch_dispatch("msda::ms_deform_attn", FunctionalTensorMode,
                                          _decompose_on_gpu("forward"), lib=_lib)
    torch.library.register_torch_dispatch("msda::ms_deform_attn_backward", FunctionalTensorMode,
                                          _decompose_on_gpu("backward"), lib=_lib)


_register_decompositions()


# The direct path. A call through the dispatcher crosses into Python once per kernel on its
# way (the Autograd kernel, then the CPU one: about 3 us each, more than the C call of a small
# problem). When every tensor is a plain dense CPU tensor and nothing that acts on or watches
# op calls is on, the dispatcher could only end in the CPU kernels below, so the wrapper, the
# autograd.Function and its backward call them directly. Anything else takes the dispatcher:
# tensor subclasses (FakeTensor, FunctionalTensor, Parameter, DTensor), torch.compile /
# export / make_fx / opcheck (through those subclasses or their modes), torch dispatch and
# function modes, functorch transforms (vmap, grad), torch.jit.trace, the profiler (which
# records the op by name) and autocast. tests/python/test_small_calls.py checks each.
_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch_active = torch._C._are_functorch_transforms_active
_tracing = torch._C._get_tracing_state
_profiling = torch._C._autograd._profiler_enabled
_autocast = torch.is_autocast_enabled


def _unobserved() -> bool:
    return not (_is_compiling() or _dispatch_modes() or _function_modes() or _functorch_active()
                or _tracing() is not None or _profiling() or _autocast("cpu"))


def _direct(tensors) -> bool:
    """Whether a call on these tensors may skip the dispatcher (see above)."""
    return _plain_cpu(tensors) and _unobserved() and _materialised(tensors)


# Autograd: the forward's Autograd kernel records an autograd.Function only when a gradient
# can flow; otherwise it goes straight to the kernel below (one Python layer per call).
_below_autograd = torch._C._AutoDispatchBelowAutograd


# torch.autograd.Function.apply binds the arguments to forward's signature with inspect on
# every call when setup_context is defined (about half the cost of a small call with a
# gradient). The Autograd kernel always passes all seven arguments positionally, so outside
# functorch transforms the node is made by the C apply that Function.apply ends in; inside
# them (grad, vjp, ...) Function.apply's own path runs. Functorch wrappers of a finished
# transform, which Function.apply unwraps, are unwrapped by the dispatcher before this kernel.
_base_apply = vars(torch._C._FunctionBase).get("apply")


class _MsDeformAttnFunction(torch.autograd.Function):
    @classmethod
    def apply(cls, *args):  # Positional arguments only (see above).
        if _base_apply is None or _functorch_active():
            return super().apply(*args)
        return _base_apply.__get__(None, cls)(*args)

    @staticmethod
    def forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                num_points_list, method):
        tensors = (value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights)
        if _direct(tensors):
            return _forward_run(tensors, *_variant(num_points_list, method, spatial_shapes))
        with _below_autograd():
            return _forward_op(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, num_points_list, method)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:5])
        ctx.num_points_list = inputs[5]
        ctx.method = inputs[6]

    @staticmethod
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
            ctx.saved_tensors
        )
        need_value, _, _, need_locations, need_weights = ctx.needs_input_grad[:5]
        if not (need_value or need_locations or need_weights):
            return None, None, None, None, None, None, None
        if grad_output.dtype != value.dtype:
            grad_output = grad_output.to(value.dtype)
        needs = (need_value, need_locations, need_weights)
        tensors = (value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, grad_output)
        if torch.is_grad_enabled():  # create_graph: through the autograd fallback, as ever.
            grads = _backward_op(grad_output, *tensors[:5], *needs, ctx.num_points_list,
                                 ctx.method)
        elif _direct(tensors):
            grads = _backward_run(tensors, needs,
                                  *_variant(ctx.num_points_list, ctx.method, spatial_shapes))
        else:
            # What the backward op's autograd fallback does when grad mode is off, without
            # its boxed pass over the arguments (a third of the op's dispatch cost).
            with _below_autograd():
                grads = _backward_op(grad_output, *tensors[:5], *needs, ctx.num_points_list,
                                     ctx.method)
        grad_value, grad_locations, grad_weights = grads
        return (
            grad_value if need_value else None,
            None,
            None,
            grad_locations if need_locations else None,
            grad_weights if need_weights else None,
            None,
            None,
        )


def _needs_graph(value, sampling_locations, attention_weights) -> bool:
    return torch.is_grad_enabled() and (
        value.requires_grad or sampling_locations.requires_grad or attention_weights.requires_grad
    )


def _forward_autograd(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights, num_points_list=None, method="default"):
    if _needs_graph(value, sampling_locations, attention_weights):
        return _MsDeformAttnFunction.apply(value, spatial_shapes, level_start_index,
                                           sampling_locations, attention_weights,
                                           num_points_list, method)
    with _below_autograd():
        return _forward_op(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, num_points_list, method)


_lib.impl("ms_deform_attn", _forward_autograd, "Autograd")


# Autocast on the CPU: value / attention_weights to the autocast dtype, locations to fp32.
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
        return _forward_op(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            num_points_list, method
        )


_lib.impl("ms_deform_attn", _autocast_cpu, "AutocastCPU", with_keyset=True)


# The direct path's autograd node in C++ (python/src/torch_ops.cc): msda/_torch_ops.so, where
# the package was built against a torch (pip install --no-build-isolation), loaded only under
# that torch version. MSDA_TORCH_OPS=0 keeps the Python autograd.Function.
def _load_eager_op():
    if os.environ.get("MSDA_TORCH_OPS", "1") == "0":
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, "_torch_ops.txt")) as f:
            built_for = f.read().strip()
    except OSError:
        return None
    if built_for != torch.__version__:
        return None
    try:
        torch.ops.load_library(os.path.join(here, "_torch_ops.so"))
        # The overload's C entry (OpOverload.__call__ only forwards to it).
        overload = torch.ops.msda._ms_deform_attn_eager.default
        return getattr(overload, "_op", overload)
    except (OSError, RuntimeError, AttributeError):
        return None


_eager_op = _load_eager_op()


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
    if t.layout != torch.strided:
        raise ValueError(f"{name}: must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type not in ("cpu", "meta", "cuda"):
        raise ValueError(
            f"{name}: must be a CPU or CUDA tensor (msda runs on its C++ core and, for CUDA "
            f"tensors, on its Triton kernels), got device {t.device}"
        )


def _check_tensors(names, tensors) -> bool:
    """Raises naming the first argument that is no tensor msda takes; returns whether all
    are plain dense CPU tensors (the common case, checked first: subclasses, FakeTensor among
    them, take the full check)."""
    if _plain_cpu(tensors):
        return True
    for name, t in zip(names, tensors):
        _check_tensor(name, t)
    return False


# level_start_index computed from spatial_shapes, for eager CPU calls, by the rows' values:
# reading an [L, 2] table costs a tenth of the three tensor ops that compute the prefix sums.
# Keyed on values, never on the tensor's identity (a freed tensor's id, address and version
# come back with other contents). The tensors here are never handed to the caller, and the op
# does not write to its inputs.
_LEVEL_STARTS = {}
_LEVEL_STARTS_MAX = 64
_INDEX_DTYPES = (torch.int64, torch.int32)


def _level_start_index(spatial_shapes: Tensor) -> Tensor:
    if not (type(spatial_shapes) is Tensor and spatial_shapes.is_cpu
            and spatial_shapes.dtype in _INDEX_DTYPES and spatial_shapes.ndim == 2
            and _unobserved()):
        return _common.level_start_index(spatial_shapes)  # Traceable; checks the shape.
    key = tuple(map(tuple, spatial_shapes.tolist()))
    starts = _LEVEL_STARTS.get(key)
    if starts is None:
        starts = _common.level_start_index(spatial_shapes)
        # An inference tensor could not be saved for backward by a later call.
        if not torch.is_inference_mode_enabled():
            if len(_LEVEL_STARTS) >= _LEVEL_STARTS_MAX:
                _LEVEL_STARTS.clear()
            _LEVEL_STARTS[key] = starts
    return starts


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
    if type(spatial_shapes) is not Tensor:
        spatial_shapes = _index_tensor("spatial_shapes", spatial_shapes)
    if level_start_index is None:
        level_start_index = _level_start_index(spatial_shapes)
    elif type(level_start_index) is not Tensor:
        level_start_index = _index_tensor("level_start_index", level_start_index)
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    direct = (_check_tensors(ARGUMENT_NAMES, tensors) and _unobserved()
              and _materialised(tensors))
    if num_points_list is None and method == "default":  # The original op's call, as exported.
        if not direct:
            return _forward_op(*tensors)
        counts = None
    else:
        counts, _ = check_variant(num_points_list, method)
        if not direct:
            return _forward_op(*tensors, counts, method)
    # What the op's Autograd kernel and CPU kernel would do, without the dispatcher. The C++
    # node's op (where loaded) also serves calls without a gradient: its cached executors
    # skip the planning a call through msda._C does.
    if counts is None and method == "default" and _eager_op is not None:
        return _eager_op(*tensors)
    if _needs_graph(value, sampling_locations, attention_weights):
        return _MsDeformAttnFunction.apply(*tensors, counts, method)
    return _forward_run(tensors, *_variant(counts, method, spatial_shapes))



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
    _check_tensors(
        _BACKWARD_NAMES,
        (value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
         grad_output),
    )
    needs = (bool(need_value), bool(need_locations), bool(need_weights))
    counts, _ = check_variant(num_points_list, method)
    grads = _backward_op(
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
