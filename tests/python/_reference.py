"""Test oracles written with plain PyTorch (F.grid_sample), independent of msda."""
import math

import torch
import torch.nn.functional as F

# Relative tolerances per dtype (compared against an fp64 oracle run on the same, already
# rounded, inputs: what is left is fp32 accumulation and one rounding of the result).
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 2.5e-2,
}

# Unit roundoff of each dtype: half the distance from 1 to the next number.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
# The least error allowed against the fp64 oracle, in roundings of the result's scale, where
# the grid_sample oracle in the same dtype is (nearly) exact. FLOAT32 and FLOAT64 compute in
# their own precision, so a sum of a few dozen terms may round tens of times (the oracle in
# fp64 is the reference itself); FLOAT16 and BFLOAT16 compute in fp32 and round once on store
# (at most one rounding of the scale, two with the fp32 arithmetic before it).
FLOOR_ROUNDINGS = {
    torch.float64: 32,
    torch.float32: 32,
    torch.float16: 2,
    torch.bfloat16: 2,
}


def assert_close(actual, expected, dtype=None, scale=None, peer=None):
    """Compares actual with the fp64 oracle's expected, in dtype (actual's by default).

    Always: |actual - expected| <= tol * (|expected| + scale) elementwise, tol from TOL[dtype]
    and scale max|expected| unless given. With peer, the grid_sample oracle run in dtype on the
    same inputs, also: max|actual - expected| <= max(max|peer - expected|,
    FLOOR_ROUNDINGS[dtype] * UNIT_ROUNDOFF[dtype] * scale). msda is then held to the accuracy
    of the PyTorch composition it replaces, in that dtype, not to a fixed table: in FLOAT16 and
    BFLOAT16 the composition's own error is the bound (msda's is a quarter to a third of it on
    the tests' shapes), in FLOAT32 and FLOAT64 the floor is."""
    dtype = dtype or actual.dtype
    tol = TOL[dtype]
    actual = actual.double()
    expected = expected.double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if expected.numel() == 0:
        return
    if scale is None:
        scale = expected.abs().max().item()
    err = (actual - expected).abs()
    bound = tol * (expected.abs() + max(scale, 1e-30))
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"max error {err.max().item():.3e} is {worst:.2f}x the bound (tol {tol})"
    if peer is not None:
        peer_err = (peer.double() - expected).abs().max().item()
        assert math.isfinite(peer_err), f"the {dtype} oracle's error is {peer_err}"
        floor = FLOOR_ROUNDINGS[dtype] * UNIT_ROUNDOFF[dtype] * max(scale, 1e-30)
        limit = max(peer_err, floor)
        assert err.max().item() <= limit, (
            f"max error {err.max().item():.3e} is {err.max().item() / limit:.2f}x the error of "
            f"grid_sample in {dtype} ({peer_err:.3e}; floor {floor:.3e})")


def ms_deform_attn_ref(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The grid_sample path (as in Deformable DETR's pure-PyTorch version)."""
    B, K, H, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations.to(value.dtype) - 1
    samples = []
    for level, (h, w) in enumerate(shapes):
        # [B, h*w, H, D] -> [B*H, D, h, w]
        v = values[level].permute(0, 2, 3, 1).reshape(B * H, D, h, w)
        # [B, Q, H, P, 2] -> [B*H, Q, P, 2]
        g = grids[:, :, :, level].transpose(1, 2).reshape(B * H, Q, P, 2)
        samples.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*H, D, Q, P]
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # [B*H, D, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    out = (stacked * weights).sum(-1).view(B, H * D, Q)
    return out.transpose(1, 2).contiguous()


def level_start_index(spatial_shapes):
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def make_inputs(
    B=2,
    Q=5,
    H=2,
    D=4,
    P=3,
    levels=((6, 8), (3, 4)),
    dtype=torch.float64,
    loc_dtype=None,
    index_dtype=torch.int64,
    safe=False,
    seed=0,
):
    """Random inputs. safe=True keeps every sampling point at least 0.1 pixel away from the
    pixel-centre grid lines (where the bilinear sample has kinks), for gradient checks; some
    points still fall wholly outside the map."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=index_dtype)
    lsi = level_start_index(spatial_shapes)
    K = sum(h * w for h, w in levels)
    L = len(levels)
    value = torch.randn(B, K, H, D, generator=g, dtype=torch.float64)
    if safe:
        # Pixel coordinates (x_im, y_im) = loc * size - 0.5 with fractional part in [0.1, 0.9].
        sizes = torch.tensor([[w, h] for h, w in levels], dtype=torch.float64)  # (W, H)
        base = torch.randint(-1, 1 << 10, (B, Q, H, L, P, 2), generator=g).double()
        base = torch.remainder(base, sizes[None, None, None, :, None, :] + 1) - 1  # -1 .. size-1
        frac = 0.1 + 0.8 * torch.rand(B, Q, H, L, P, 2, generator=g, dtype=torch.float64)
        pix = base + frac
        loc = (pix + 0.5) / sizes[None, None, None, :, None, :]
        # A few points far outside the map (zero contribution, zero gradient).
        far = torch.rand(B, Q, H, L, P, 1, generator=g) < 0.1
        loc = torch.where(far, loc + 3.0, loc)
    else:
        loc = torch.rand(B, Q, H, L, P, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(B, Q, H, L, P, generator=g, dtype=torch.float64)
    attn = attn / attn.sum(dim=(-1, -2), keepdim=True)
    loc_dtype = loc_dtype or dtype
    return (
        value.to(dtype),
        spatial_shapes,
        lsi.to(index_dtype),
        loc.to(loc_dtype),
        attn.to(dtype),
    )


def mmcv_layer_ref(state, query, value, reference_points, spatial_shapes, num_heads, num_levels,
                   num_points, batch_first=False, key_padding_mask=None, identity=None,
                   query_pos=None):
    """mmcv's MultiScaleDeformableAttention forward (eval mode, dropout off) written out with
    plain tensor ops and the grid_sample oracle, from a state_dict with mmcv's key names."""
    if identity is None:
        identity = query
    if query_pos is not None:
        query = query + query_pos
    if not batch_first:
        query = query.permute(1, 0, 2)
        value = value.permute(1, 0, 2)
    bs, nq, _ = query.shape
    _, nv, _ = value.shape

    def linear(x, name):
        return x @ state[f"{name}.weight"].t() + state[f"{name}.bias"]

    value = linear(value, "value_proj")
    if key_padding_mask is not None:
        value = value.masked_fill(key_padding_mask[..., None], 0.0)
    value = value.view(bs, nv, num_heads, -1)
    offsets = linear(query, "sampling_offsets").view(bs, nq, num_heads, num_levels, num_points, 2)
    weights = linear(query, "attention_weights").view(bs, nq, num_heads, num_levels * num_points)
    weights = weights.softmax(-1).view(bs, nq, num_heads, num_levels, num_points)
    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        loc = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
        loc = (reference_points[:, :, None, :, None, :2]
               + offsets / num_points * reference_points[:, :, None, :, None, 2:] * 0.5)
    out = ms_deform_attn_ref(value, spatial_shapes, level_start_index(spatial_shapes), loc, weights)
    out = linear(out, "output_proj")
    if not batch_first:
        out = out.permute(1, 0, 2)
    return out + identity


def mmcv_grid_init(num_heads, num_levels, num_points):
    """mmcv's sampling_offsets bias initialisation, computed independently."""
    bias = torch.empty(num_heads, num_levels, num_points, 2)
    for h in range(num_heads):
        theta = 2.0 * math.pi * h / num_heads
        c, s = math.cos(theta), math.sin(theta)
        m = max(abs(c), abs(s))
        for l in range(num_levels):
            for p in range(num_points):
                bias[h, l, p, 0] = c / m * (p + 1)
                bias[h, l, p, 1] = s / m * (p + 1)
    return bias.reshape(-1)
