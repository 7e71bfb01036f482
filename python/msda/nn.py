"""nn modules on top of the msda op.

* :class:`MultiScaleDeformableAttention`: the layer of mmcv
  (``mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttention``), same constructor,
  forward, submodules and state_dict keys, so mmcv / mmdet checkpoints load as they are.
  :func:`patch_mmcv` makes mmcv's own layer (or, without mmcv's ops, mmengine's registry
  entry of that name) run msda.
* :class:`HFMultiScaleDeformableAttention`, :func:`hf_multi_scale_deformable_attention` and
  :func:`hf_multi_scale_deformable_attention_v2`: drop-ins for the kernel module and the two
  module-level functions through which Hugging Face transformers' families (Deformable DETR,
  RT-DETR, Mask2Former, D-FINE, ...: :data:`TRANSFORMERS_FAMILIES`) sample, and
  :func:`patch_transformers` / :func:`unpatch_transformers` to put them in a model or in the
  whole process.
"""
import importlib
import logging
import math
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._common import level_start_index as _level_start_index
from .ops import ms_deform_attn

__all__ = [
    "MultiScaleDeformableAttention",
    "HFMultiScaleDeformableAttention",
    "hf_multi_scale_deformable_attention",
    "hf_multi_scale_deformable_attention_v2",
    "patch_transformers",
    "unpatch_transformers",
    "patch_mmcv",
    "unpatch_mmcv",
    "TRANSFORMERS_FAMILIES",
]


def _spatial_shapes_tensor(spatial_shapes) -> Tensor:
    if isinstance(spatial_shapes, Tensor):
        return spatial_shapes
    return torch.tensor([[int(h), int(w)] for h, w in spatial_shapes], dtype=torch.int64)


class MultiScaleDeformableAttention(nn.Module):
    """MultiScale Deformable Attention layer with mmcv's interface (Deformable DETR).

    Args:
        embed_dims: channels of query and value (default 256).
        num_heads: attention heads (default 8); embed_dims must be divisible by it.
        num_levels: feature levels (default 4).
        num_points: sampling points per head and level (default 4).
        im2col_step: accepted for compatibility; the CPU kernel does not need it.
        dropout: dropout on the output before the residual (default 0.1).
        batch_first: tensors are (batch, n, embed_dims) if True, else (n, batch, embed_dims).
        norm_cfg, init_cfg: accepted for compatibility (mmcv does not use norm_cfg either;
            init_cfg is stored and otherwise ignored: weights are set by init_weights()).
        value_proj_ratio: value_proj's output size relative to embed_dims (default 1.0).

    Submodules (and state_dict keys) are those of mmcv: sampling_offsets, attention_weights,
    value_proj, output_proj (each .weight / .bias) and dropout.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        im2col_step: int = 64,
        dropout: float = 0.1,
        batch_first: bool = False,
        norm_cfg: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
        value_proj_ratio: float = 1.0,
    ):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(
                f"embed_dims: must be divisible by num_heads, got embed_dims={embed_dims} and "
                f"num_heads={num_heads}"
            )
        value_proj_size = int(embed_dims * value_proj_ratio)
        if value_proj_size % num_heads != 0:
            raise ValueError(
                f"value_proj_ratio: int(embed_dims * value_proj_ratio) = {value_proj_size} must "
                f"be divisible by num_heads={num_heads}"
            )
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.batch_first = batch_first
        self.norm_cfg = norm_cfg
        self.init_cfg = init_cfg
        self.value_proj_ratio = value_proj_ratio

        self.dropout = nn.Dropout(dropout)
        points = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims, points * 2)
        self.attention_weights = nn.Linear(embed_dims, points)
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """mmcv's initialisation: zero sampling_offsets weight with a bias that puts head h's
        points on a ray at angle 2*pi*h/num_heads (point i at i + 1 steps of the unit square's
        boundary); zero attention_weights; Xavier-uniform value_proj / output_proj, zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        device = self.sampling_offsets.weight.device
        angles = torch.arange(self.num_heads, dtype=torch.float32, device=device)
        angles = angles * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [heads, 2]
        # Scale each direction so its larger coordinate has magnitude 1.
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32, device=device)
        grid = directions[:, None, None, :] * steps[None, None, :, None]  # [heads, 1, points, 2]
        grid = grid.expand(self.num_heads, self.num_levels, self.num_points, 2)
        self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight, gain=1.0)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        identity: Optional[Tensor] = None,
        query_pos: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        reference_points: Optional[Tensor] = None,
        spatial_shapes: Optional[Tensor] = None,
        level_start_index: Optional[Tensor] = None,
        **kwargs,
    ) -> Tensor:
        """As mmcv's forward.

        Args:
            query: (num_query, bs, embed_dims), or (bs, num_query, embed_dims) if batch_first.
            key: unused (as in mmcv).
            value: (num_value, bs, embed_dims) or batch first; defaults to query.
            identity: added to the output (residual); defaults to query (before query_pos).
            query_pos: added to query before the projections.
            key_padding_mask: (bs, num_value) bool, True where value is padding (zeroed).
            reference_points: (bs, num_query, num_levels, 2) points (x, y) in [0, 1], or
                (bs, num_query, num_levels, 4) boxes (cx, cy, w, h).
            spatial_shapes: (num_levels, 2) int (H_l, W_l), on the CPU.
            level_start_index: (num_levels,) int; computed from spatial_shapes if None.
            residual: mmcv's deprecated name for identity, accepted as mmcv accepts it: a
                DeprecationWarning (mmengine's deprecated_api_warning issues the same) and
                the tensor used as identity; giving both is a TypeError. Any other keyword
                is ignored, as mmcv ignores it.

        Returns: a tensor shaped like query.
        """
        if "residual" in kwargs:
            residual = kwargs.pop("residual")
            if identity is not None:
                raise TypeError(
                    "MultiScaleDeformableAttention.forward: got both identity and its deprecated "
                    "name residual; pass identity only"
                )
            warnings.warn(
                '"residual" is deprecated in `MultiScaleDeformableAttention.forward`, please use '
                '"identity" instead',
                DeprecationWarning,
                stacklevel=2,
            )
            identity = residual
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        if reference_points is None:
            raise ValueError("reference_points: required, (bs, num_query, num_levels, 2 or 4)")
        if spatial_shapes is None:
            raise ValueError("spatial_shapes: required, (num_levels, 2) int (H_l, W_l)")
        spatial_shapes = _spatial_shapes_tensor(spatial_shapes)
        if level_start_index is None:
            level_start_index = _level_start_index(spatial_shapes)

        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, heads, -1)

        offsets = self.sampling_offsets(query).view(bs, num_query, heads, levels, points, 2)
        weights = self.attention_weights(query).view(bs, num_query, heads, levels * points)
        weights = weights.softmax(-1).view(bs, num_query, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (W_l, H_l).
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # [levels, 2] = (W, H)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            # Boxes: offsets are relative to half the box size, over num_points.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                "reference_points: last dim must be 2 (x, y) or 4 (cx, cy, w, h), got shape "
                f"{list(reference_points.shape)}"
            )
        if locations.dtype != value.dtype and locations.dtype != torch.float32:
            locations = locations.to(value.dtype)
        if weights.dtype != value.dtype:
            weights = weights.to(value.dtype)

        output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return self.dropout(output) + identity

    def extra_repr(self) -> str:
        return (
            f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, "
            f"num_levels={self.num_levels}, num_points={self.num_points}, "
            f"batch_first={self.batch_first}"
        )


# Hugging Face transformers.
#
# transformers (5.x) reaches the sampling in three ways, and each is patched where it is looked
# up at call time:
#
# * a parameter-free kernel module ``MultiScaleDeformableAttention`` (decorated with
#   ``use_kernel_forward_from_hub``), held by each attention layer as ``.attn``;
# * a module-level function ``multi_scale_deformable_attention(value, value_spatial_shapes,
#   sampling_locations, attention_weights)`` that the layer's forward looks up in its modeling
#   module's globals (Mask2Former, OneFormer);
# * a module-level function ``multi_scale_deformable_attention_v2(value, value_spatial_shapes,
#   sampling_locations, attention_weights, num_points_list, method)``, looked up in the
#   module's globals (RT-DETRv2) or stored on each layer at construction as
#   ``ms_deformable_attn_core`` (D-FINE, DEIMv2).

_KERNEL_CLASS_NAME = "MultiScaleDeformableAttention"
_FUNCTION_NAMES = ("multi_scale_deformable_attention", "multi_scale_deformable_attention_v2")
_CORE_ATTRIBUTE = "ms_deformable_attn_core"

# The transformers families that use multi-scale deformable attention, and their modeling
# module (under transformers.models): what patch_transformers() without a model patches.
TRANSFORMERS_FAMILIES = {
    "DeformableDetr": "deformable_detr.modeling_deformable_detr",
    "GroundingDino": "grounding_dino.modeling_grounding_dino",
    "MMGroundingDino": "mm_grounding_dino.modeling_mm_grounding_dino",
    "RTDetr": "rt_detr.modeling_rt_detr",
    "RTDetrV2": "rt_detr_v2.modeling_rt_detr_v2",
    "DFine": "d_fine.modeling_d_fine",
    "Deimv2": "deimv2.modeling_deimv2",
    "Mask2Former": "mask2former.modeling_mask2former",
    "OneFormer": "oneformer.modeling_oneformer",
    "OmDetTurbo": "omdet_turbo.modeling_omdet_turbo",
    "PPDocLayoutV2": "pp_doclayout_v2.modeling_pp_doclayout_v2",
    "PPDocLayoutV3": "pp_doclayout_v3.modeling_pp_doclayout_v3",
    "PPDocLayoutV4": "pp_doclayout_v4.modeling_pp_doclayout_v4",
    "LwDetr": "lw_detr.modeling_lw_detr",
    "RfDetr": "rf_detr.modeling_rf_detr",
}

_logger = logging.getLogger("msda")


def _mark(function):
    """Marks a function as msda's replacement, so that patching twice finds nothing to do."""
    function._msda_replacement = True
    return function


def _is_msda(obj) -> bool:
    return getattr(obj, "_msda_replacement", False) is True


def _like_pytorch_path(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor):
    """Casts as the pure-PyTorch path tolerates mixed dtypes: attention_weights to value's
    dtype, sampling_locations to value's dtype unless they are float32 (the core op's rule)."""
    if attention_weights.dtype != value.dtype:
        attention_weights = attention_weights.to(value.dtype)
    if sampling_locations.dtype not in (value.dtype, torch.float32):
        sampling_locations = sampling_locations.to(value.dtype)
    return sampling_locations, attention_weights


def _hf_kernel_forward(
    self,
    value: Tensor,
    value_spatial_shapes: Optional[Tensor],
    value_spatial_shapes_list: Optional[Sequence[Tuple[int, int]]],
    level_start_index: Optional[Tensor],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
) -> Tensor:
    if value_spatial_shapes is None or (
        value_spatial_shapes.device.type != "cpu" and value.device.type == "cpu"
    ):
        if value_spatial_shapes_list is None:
            raise ValueError("value_spatial_shapes: required (or value_spatial_shapes_list)")
        value_spatial_shapes = _spatial_shapes_tensor(value_spatial_shapes_list)
        level_start_index = None
    if level_start_index is not None and level_start_index.device != value_spatial_shapes.device:
        level_start_index = None
    sampling_locations, attention_weights = _like_pytorch_path(
        value, sampling_locations, attention_weights
    )
    return ms_deform_attn(
        value, value_spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


_mark(_hf_kernel_forward)


class HFMultiScaleDeformableAttention(nn.Module):
    """Drop-in for Hugging Face transformers' ``MultiScaleDeformableAttention`` kernel module
    (the parameter-free ``attn`` of ``DeformableDetrMultiscaleDeformableAttention`` and of
    the models that copy it).

    forward(value [B, K, H, D], value_spatial_shapes [L, 2], value_spatial_shapes_list,
    level_start_index [L], sampling_locations [B, Q, H, L, P, 2], attention_weights
    [B, Q, H, L, P], im2col_step) -> [B, Q, H * D]. im2col_step is ignored. Unlike the core
    op it accepts mixed dtypes, as the pure-PyTorch path does: attention_weights are cast to
    value's dtype and sampling_locations to value's dtype unless they are float32.
    """

    forward = _hf_kernel_forward


@_mark
def hf_multi_scale_deformable_attention(
    value: Tensor,
    value_spatial_shapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Drop-in for transformers' module-level ``multi_scale_deformable_attention`` (Mask2Former,
    OneFormer): value [B, K, H, D], value_spatial_shapes an [L, 2] tensor or a list of (H_l,
    W_l), sampling_locations [B, Q, H, L, P, 2], attention_weights [B, Q, H, L, P] ->
    [B, Q, H * D]."""
    sampling_locations, attention_weights = _like_pytorch_path(
        value, sampling_locations, attention_weights
    )
    return ms_deform_attn(value, value_spatial_shapes, None, sampling_locations, attention_weights)


@_mark
def hf_multi_scale_deformable_attention_v2(
    value: Tensor,
    value_spatial_shapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points_list: Sequence[int],
    method: str = "default",
) -> Tensor:
    """Drop-in for transformers' ``multi_scale_deformable_attention_v2`` (RT-DETRv2, D-FINE,
    DEIMv2): value [B, K, H, D], value_spatial_shapes an [L, 2] tensor or a list of (H_l, W_l),
    sampling_locations [B, Q, H, sum(num_points_list), 2], attention_weights
    [B, Q, H, sum(num_points_list)], level l sampled by num_points_list[l] consecutive points;
    method "default" (bilinear) or "discrete" (the nearest pixel, no location gradient) ->
    [B, Q, H * D]."""
    sampling_locations, attention_weights = _like_pytorch_path(
        value, sampling_locations, attention_weights
    )
    return ms_deform_attn(
        value,
        value_spatial_shapes,
        None,
        sampling_locations,
        attention_weights,
        num_points_list=[int(p) for p in num_points_list],
        method=method,
    )


_REPLACEMENTS = {
    "multi_scale_deformable_attention": hf_multi_scale_deformable_attention,
    "multi_scale_deformable_attention_v2": hf_multi_scale_deformable_attention_v2,
}

# What the process-wide patches replaced: (object, attribute name) -> (qualified name, original).
_saved: Dict[Tuple[int, str], Tuple[object, str, str, object]] = {}


def _replace_attribute(owner, attribute: str, replacement, qualified_name: str) -> None:
    key = (id(owner), attribute)
    if key not in _saved:
        _saved[key] = (owner, attribute, qualified_name, owner.__dict__.get(attribute))
    setattr(owner, attribute, replacement)


def _is_kernel_class(cls) -> bool:
    """transformers' kernel module: named MultiScaleDeformableAttention, no parameters made in
    __init__ (mmcv's layer of that name has some), a forward of its own that is not msda's."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return False
    if cls.__name__ != _KERNEL_CLASS_NAME or issubclass(cls, MultiScaleDeformableAttention):
        return False
    return "forward" in cls.__dict__ and cls.__module__.startswith("transformers.")


def _original_function(obj, name: str) -> bool:
    return callable(obj) and not _is_msda(obj) and getattr(obj, "__name__", None) == name


def _patch_kernel_class(module) -> List[str]:
    """Replaces the forward of a modeling module's kernel class, in the class."""
    cls = module.__dict__.get(_KERNEL_CLASS_NAME)
    if cls is None or not _is_kernel_class(cls) or _is_msda(cls.__dict__["forward"]):
        return []
    name = f"{cls.__module__}.{cls.__qualname__}.forward"
    _replace_attribute(cls, "forward", _hf_kernel_forward, name)
    return [name]


def _patch_functions(module) -> List[str]:
    """Replaces a modeling module's module-level functions, there and in every other
    transformers module that imported the same function object by name."""
    replaced = []
    for function_name in _FUNCTION_NAMES:
        original = module.__dict__.get(function_name)
        if not _original_function(original, function_name):
            continue
        for other in list(sys.modules.values()):
            other_name = getattr(other, "__name__", None)
            if not isinstance(other_name, str) or not other_name.startswith("transformers"):
                continue
            for attribute, obj in list(getattr(other, "__dict__", {}).items()):
                if obj is original:
                    name = f"{other_name}.{attribute}"
                    _replace_attribute(other, attribute, _REPLACEMENTS[function_name], name)
                    replaced.append(name)
    return replaced


def _report(replaced: List[str], what: str) -> None:
    if replaced:
        _logger.info("msda.nn.%s: replaced %d: %s", what, len(replaced), ", ".join(replaced))


def patch_transformers(
    model: Optional[nn.Module] = None,
    class_names: Sequence[str] = (_KERNEL_CLASS_NAME,),
) -> List[str]:
    """Makes Hugging Face transformers models run their multi-scale deformable attention on
    msda's op; returns what it replaced (also logged at INFO on the ``msda`` logger).

    With ``model``: in that model, every submodule whose class is named in ``class_names``
    and has no parameters of its own (the kernel module, not mmcv's layer of the same name) is
    replaced by :class:`HFMultiScaleDeformableAttention` (named ``"layers.0.attn"``...), every
    layer's ``ms_deformable_attn_core`` (D-FINE, DEIMv2) is set to
    :func:`hf_multi_scale_deformable_attention_v2`, and the module-level
    ``multi_scale_deformable_attention`` / ``_v2`` functions of the modeling modules its layers
    come from (Mask2Former, OneFormer, RT-DETRv2, ...) are replaced there, named by module
    (``"transformers.models.mask2former.modeling_mask2former.multi_scale_deformable_attention"``):
    a function is looked up in its module when called, so that part serves every model of the
    family in the process, until :func:`unpatch_transformers`. A warning is issued if the model
    has no multi-scale deformable attention at all.

    Without ``model``: every family of :data:`TRANSFORMERS_FAMILIES` (modeling modules are
    imported; one that the installed transformers lacks is skipped) is patched process-wide,
    so that models built afterwards (``from_pretrained``, from a config) and the existing
    ones run msda: the kernel classes' ``forward`` and the module-level functions are replaced.
    D-FINE and DEIMv2 layers built before keep the function they stored; patch those models.

    Patching is idempotent: what already runs msda is skipped, and a second call returns [].
    """
    if model is None:
        replaced = []
        for module_name in TRANSFORMERS_FAMILIES.values():
            try:
                module = importlib.import_module(f"transformers.models.{module_name}")
            except ImportError as error:  # Another transformers version: no such family.
                _logger.debug("msda.nn.patch_transformers: skipping %s: %s", module_name, error)
                continue
            replaced += _patch_kernel_class(module) + _patch_functions(module)
        _report(replaced, "patch_transformers")
        return replaced

    names = set(class_names)
    replaced = []
    found = False
    modeling_modules = {}
    for parent_name, parent in list(model.named_modules()):
        module = sys.modules.get(type(parent).__module__)
        if module is not None and module.__name__.startswith("transformers."):
            modeling_modules[module.__name__] = module
        prefix = f"{parent_name}." if parent_name else ""
        core = parent.__dict__.get(_CORE_ATTRIBUTE)
        if core is not None and callable(core):
            found = True
            if not _is_msda(core) and getattr(core, "__name__", None) in _REPLACEMENTS:
                setattr(parent, _CORE_ATTRIBUTE, _REPLACEMENTS[core.__name__])
                replaced.append(prefix + _CORE_ATTRIBUTE)
        for child_name, child in list(parent.named_children()):
            if isinstance(child, HFMultiScaleDeformableAttention):
                found = True
                continue
            if type(child).__name__ not in names or isinstance(child, MultiScaleDeformableAttention):
                continue
            if next(child.parameters(recurse=False), None) is not None:
                continue
            found = True
            if _is_msda(getattr(type(child), "forward", None)):
                continue  # Its class is patched process-wide already.
            setattr(parent, child_name, HFMultiScaleDeformableAttention())
            replaced.append(prefix + child_name)
    for module in modeling_modules.values():
        for function_name in _FUNCTION_NAMES:
            function = module.__dict__.get(function_name)
            if function is not None and callable(function):
                found = True
        replaced += _patch_functions(module)
    if not found:
        warnings.warn(
            f"patch_transformers: no multi-scale deformable attention found (no parameter-free "
            f"module of class {sorted(names)}, no {' or '.join(_FUNCTION_NAMES)})",
            stacklevel=2,
        )
    _report(replaced, "patch_transformers")
    return replaced


def unpatch_transformers() -> List[str]:
    """Undoes the process-wide replacements of :func:`patch_transformers` (kernel classes'
    forward, module-level functions, also those made by a patch with a model) and returns
    their names. Kernel modules swapped inside a model and D-FINE / DEIMv2 layers' stored
    function stay msda's: build or load the model again to get transformers' own."""
    return _restore(lambda owner: True, "unpatch_transformers", _saved)


def _restore(select, what: str, saved) -> List[str]:
    restored = []
    for key, (owner, attribute, name, original) in list(saved.items()):
        if not select(owner):
            continue
        if original is None:
            delattr(owner, attribute)
        else:
            setattr(owner, attribute, original)
        del saved[key]
        restored.append(name)
    _report(restored, what)
    return restored


# mmcv / mmdet.

_mmcv_saved: Dict[Tuple[int, str], Tuple[object, str, str, object]] = {}
_mmcv_registered: List[Tuple[object, object]] = []  # (registry, class it held before or None)


def _mmcv_forward(self, *args, **kwargs):
    return MultiScaleDeformableAttention.forward(self, *args, **kwargs)


_mark(_mmcv_forward)


def patch_mmcv() -> List[str]:
    """Makes mmcv / mmdet models run msda's op; returns what it replaced (also logged).

    * With mmcv's layer importable (``mmcv.ops.multi_scale_deform_attn``, i.e. mmcv built with
      its ops): its ``forward`` is replaced, in the class, by msda's (the same computation and
      arguments, ``residual=`` included). Every layer built from that class runs msda: those
      mmdet constructs directly (``MultiScaleDeformableAttention(**cfg)``), those built from
      configs (``type="MultiScaleDeformableAttention"``), those already built. The class,
      ``__init__`` and ``init_weights`` stay mmcv's, so mmdet's ``isinstance`` checks
      (DeformableDETR / DINO ``init_weights``) and checkpoints work as before.
    * Without it (mmcv-lite, or mmengine alone): :class:`MultiScaleDeformableAttention` is
      registered as ``"MultiScaleDeformableAttention"`` in mmengine's ``MODELS`` registry
      (``force=True``; mmcv's and mmdet's registries build through it) and, if
      ``mmcv.cnn.bricks.transformer`` imports, set there under that name, where mmcv-lite
      has none. Its ``init_weights`` is mmcv's initialisation, and mmengine's
      ``BaseModule.init_weights`` calls it on children.

    Idempotent; :func:`unpatch_mmcv` undoes it. Raises ImportError without mmengine.
    """
    replaced = []
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention as mmcv_layer
    except ImportError:  # Also mmcv-lite: the module needs mmcv's compiled extension.
        mmcv_layer = None
    if mmcv_layer is not None:
        if not _is_msda(mmcv_layer.__dict__.get("forward")):
            name = f"{mmcv_layer.__module__}.{mmcv_layer.__qualname__}.forward"
            key = (id(mmcv_layer), "forward")
            _mmcv_saved.setdefault(key, (mmcv_layer, "forward", name, mmcv_layer.__dict__["forward"]))
            mmcv_layer.forward = _mmcv_forward
            replaced.append(name)
        _report(replaced, "patch_mmcv")
        return replaced

    from mmengine.registry import MODELS

    if MODELS.get(_KERNEL_CLASS_NAME) is not MultiScaleDeformableAttention:
        _mmcv_registered.append((MODELS, MODELS.module_dict.get(_KERNEL_CLASS_NAME)))
        MODELS.register_module(_KERNEL_CLASS_NAME, force=True, module=MultiScaleDeformableAttention)
        replaced.append(f"mmengine.registry.MODELS[{_KERNEL_CLASS_NAME!r}]")
    try:
        import mmcv.cnn.bricks.transformer as bricks
    except ImportError:
        bricks = None
    if bricks is not None and bricks.__dict__.get(_KERNEL_CLASS_NAME) is not MultiScaleDeformableAttention:
        key = (id(bricks), _KERNEL_CLASS_NAME)
        name = f"{bricks.__name__}.{_KERNEL_CLASS_NAME}"
        _mmcv_saved.setdefault(key, (bricks, _KERNEL_CLASS_NAME, name, bricks.__dict__.get(_KERNEL_CLASS_NAME)))
        setattr(bricks, _KERNEL_CLASS_NAME, MultiScaleDeformableAttention)
        replaced.append(name)
    _report(replaced, "patch_mmcv")
    return replaced


def unpatch_mmcv() -> List[str]:
    """Undoes :func:`patch_mmcv` and returns the names it restored."""
    restored = _restore(lambda owner: True, "unpatch_mmcv", _mmcv_saved)
    while _mmcv_registered:
        registry, previous = _mmcv_registered.pop()
        if previous is None:
            registry._module_dict.pop(_KERNEL_CLASS_NAME, None)
        else:
            registry.register_module(_KERNEL_CLASS_NAME, force=True, module=previous)
        restored.append(f"{registry.name} registry[{_KERNEL_CLASS_NAME!r}]")
    return restored
