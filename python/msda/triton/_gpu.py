"""The CUDA kernels of the ``msda::ms_deform_attn`` ops: eager calls launch the Triton kernels
directly; traced calls (torch.compile) go through ``wrap_triton`` so that the kernels enter the
graph."""
from torch._library.triton import set_wrap_triton_enabled

from . import _launch, is_deterministic


def forward_traced(*args):
    return _launch.forward(*args)


def backward_traced(*args):
    return _launch.backward(*args, is_deterministic())


def forward(*args):
    with set_wrap_triton_enabled(False):
        return forward_traced(*args)


def backward(*args):
    with set_wrap_triton_enabled(False):
        return backward_traced(*args)
