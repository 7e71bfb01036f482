"""The CUDA kernels of the ``msda::ms_deform_attn`` ops: eager calls launch the Triton kernels
directly; traced calls (torch.compile) go through ``wrap_triton`` so that the kernels enter the
graph.

Each takes the launcher's arguments, and after them, positional or keyword, the variant
arguments ``num_points_list`` and ``method``."""
from torch._library.triton import set_wrap_triton_enabled

from . import _launch, is_deterministic

_BACKWARD_ARGS = 9  # grad_output .. need_weights: the deterministic flag comes after them.


def forward_traced(*args, **variant):
    return _launch.forward(*args, **variant)


def backward_traced(*args, **variant):
    # The variant arguments come after the deterministic flag in _launch.backward.
    head, tail = args[:_BACKWARD_ARGS], args[_BACKWARD_ARGS:]
    return _launch.backward(*head, is_deterministic(), *tail, **variant)


def forward(*args, **variant):
    with set_wrap_triton_enabled(False):
        return forward_traced(*args, **variant)


def backward(*args, **variant):
    with set_wrap_triton_enabled(False):
        return backward_traced(*args, **variant)
