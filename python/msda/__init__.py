"""msda: MultiScale Deformable Attention (Deformable DETR), forward and backward, on the CPU.

Entry points:

* ``msda.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
  attention_weights)``: the PyTorch op ``torch.ops.msda.ms_deform_attn`` (autograd,
  ``torch.compile``, autocast).
* ``msda.numpy.ms_deform_attn`` / ``msda.numpy.ms_deform_attn_backward``: the same kernels on
  NumPy arrays, without importing torch.
* ``msda.nn.MultiScaleDeformableAttention`` (mmcv-compatible layer),
  ``msda.nn.HFMultiScaleDeformableAttention`` and ``msda.nn.patch_transformers``.
* ``msda.onnx.export``: ONNX export of models that call the op (standard operators, or
  TensorRT's multi-scale deformable attention plugin node).

Importing ``msda`` does not import torch. If torch is already imported, the torch API (and
the ``torch.ops.msda`` ops) is registered right away; otherwise on first use of
``msda.ms_deform_attn`` / ``msda.nn`` / ``msda.ops``, or by ``import msda.ops``.
"""
import importlib as _importlib
import sys as _sys

from . import _C

_LAZY_ATTRIBUTES = {
    "ms_deform_attn": ("msda.ops", "ms_deform_attn"),
    "ms_deform_attn_backward": ("msda.ops", "ms_deform_attn_backward"),
    "level_start_index": ("msda.ops", "level_start_index"),
}
_LAZY_MODULES = ("ops", "nn", "numpy", "onnx")

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_backward",
    "level_start_index",
    "library_version",
    "__version__",
]


def library_version() -> str:
    """Version of the msda C library compiled into the extension, e.g. ``"0.1.0"``."""
    v = _C.version()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


# Written once, in the C header (MSDA_VERSION_*): the package's version is the library's.
__version__ = library_version()


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        module_name, attribute = _LAZY_ATTRIBUTES[name]
        value = getattr(_importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    if name in _LAZY_MODULES:
        return _importlib.import_module(f"msda.{name}")
    raise AttributeError(f"module 'msda' has no attribute {name!r}")


if "torch" in _sys.modules:
    from . import ops as _ops  # noqa: F401  (registers torch.ops.msda.*)


def __dir__():
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | set(_LAZY_MODULES))
