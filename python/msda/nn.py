"""nn modules on top of the msda op.

* :class:`MultiScaleDeformableAttention`: the layer of mmcv
  (``mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttention``), same constructor,
  forward, submodules and state_dict keys, so mmcv / mmdet checkpoints load as they are.
* :class:`HFMultiScaleDeformableAttention`: a drop-in for the parameter-free kernel module
  ``MultiScaleDeformableAttention`` of Hugging Face transformers (Deformable DETR and its
  relatives), and :func:`patch_transformers` to swap it into a loaded model.
"""
import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._common import level_start_index as _level_start_index
from .ops import ms_deform_attn

__all__ = [
    "MultiScaleDeformableAttention",
    "HFMultiScaleDeformableAttention",
    "patch_transformers",
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

        Returns: a tensor shaped like query.
        """
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

    def forward(
        self,
        value: Tensor,
        value_spatial_shapes: Optional[Tensor],
        value_spatial_shapes_list: Optional[Sequence[Tuple[int, int]]],
        level_start_index: Optional[Tensor],
        sampling_locations: Tensor,
        attention_weights: Tensor,
        im2col_step: int = 64,
    ) -> Tensor:
        if value_spatial_shapes is None or value_spatial_shapes.device.type != "cpu":
            if value_spatial_shapes_list is None:
                raise ValueError("value_spatial_shapes: required (or value_spatial_shapes_list)")
            value_spatial_shapes = _spatial_shapes_tensor(value_spatial_shapes_list)
            level_start_index = None
        if level_start_index is not None and level_start_index.device.type != "cpu":
            level_start_index = None
        if attention_weights.dtype != value.dtype:
            attention_weights = attention_weights.to(value.dtype)
        if sampling_locations.dtype not in (value.dtype, torch.float32):
            sampling_locations = sampling_locations.to(value.dtype)
        return ms_deform_attn(
            value, value_spatial_shapes, level_start_index, sampling_locations, attention_weights
        )


def patch_transformers(
    model: nn.Module, class_names: Sequence[str] = ("MultiScaleDeformableAttention",)
) -> List[str]:
    """Replaces, in place, every submodule of ``model`` whose class is named in
    ``class_names`` and that has no parameters of its own (the transformers kernel module,
    not mmcv's layer of the same name) by :class:`HFMultiScaleDeformableAttention`.

    Returns the qualified names of the replaced submodules (a warning is issued if none).
    transformers itself is not imported.
    """
    names = set(class_names)
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ not in names:
                continue
            if isinstance(child, (HFMultiScaleDeformableAttention, MultiScaleDeformableAttention)):
                continue
            if next(child.parameters(recurse=False), None) is not None:
                continue
            setattr(parent, child_name, HFMultiScaleDeformableAttention())
            replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not replaced:
        warnings.warn(
            f"patch_transformers: no parameter-free module of class {sorted(names)} found",
            stacklevel=2,
        )
    return replaced
