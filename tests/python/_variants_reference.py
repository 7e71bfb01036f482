"""An fp64 reference of the two operator variants of RT-DETRv2, D-FINE and DEIMv2, written from
the formulas with plain torch (explicit corner gathers; no msda, no grid_sample):

* points per level: ``num_points_list = [P_0, ..., P_{L-1}]``; sampling_locations is
  [B, Q, H, N, 2] and attention_weights [B, Q, H, N], N = sum P_l, and the points
  sum_{l' < l} P_l' .. + P_l - 1 sample level l. With None, the layout is [B, Q, H, L, P, 2] /
  [B, Q, H, L, P];
* ``method="discrete"``: each point reads one pixel of its level, x index =
  trunc(clamp(x * W_l + 0.5, 0, W_l - 1)) with NaN mapped to 0 (y likewise), no zero padding;
  the location gradient is zero.

The default mode is bilinear sampling with zero padding (docs/semantics.md). Its gradients here
are the analytic formulas, not autograd, so that autograd through ``reference_forward`` can check
them.

The discrete pixel index is computed in float32, or float64 when value is float64, as the
kernels do: x * W_l is rounded, then + 0.5 is rounded, then truncated. Pass the tensors in the
dtype under test (not converted to float64 first) so the reference picks the same pixels.
"""
import torch

__all__ = ["reference_forward", "reference_backward", "flat_points"]


def _levels(spatial_shapes):
    return [(int(h), int(w)) for h, w in torch.as_tensor(spatial_shapes).tolist()]


def flat_points(sampling_locations, attention_weights, num_levels, num_points_list=None):
    """(loc [B, Q, H, N, 2], attn [B, Q, H, N], level of each point: a list of N ints)."""
    if num_points_list is None:
        B, Q, H, L, P, _ = sampling_locations.shape
        assert L == num_levels
        loc = sampling_locations.reshape(B, Q, H, L * P, 2)
        attn = attention_weights.reshape(B, Q, H, L * P)
        level_of = [l for l in range(L) for _ in range(P)]
    else:
        assert len(num_points_list) == num_levels
        loc, attn = sampling_locations, attention_weights
        level_of = [l for l, p in enumerate(num_points_list) for _ in range(p)]
        assert loc.shape[3] == len(level_of) and attn.shape[3] == len(level_of)
    return loc, attn, level_of


def _unflat(t, like):
    return t.reshape(like.shape)


def _gather_rows(value_level, rows, valid):
    """value_level [B, HW, H, D] (fp64); rows, valid [B, Q, H, n] -> [B, Q, H, n, D], zero where
    not valid."""
    B, HW, H, D = value_level.shape
    _, Q, _, n = rows.shape
    v = value_level.permute(0, 2, 1, 3)  # [B, H, HW, D]
    idx = torch.where(valid, rows, torch.zeros_like(rows)).permute(0, 2, 1, 3).reshape(B, H, Q * n)
    got = torch.gather(v, 2, idx[..., None].expand(B, H, Q * n, D))  # [B, H, Q*n, D]
    got = got.reshape(B, H, Q, n, D).permute(0, 2, 1, 3, 4)
    return torch.where(valid[..., None], got, torch.zeros_like(got))


def _discrete_index(coord, size, dtype):
    """trunc(clamp(coord * size + 0.5, 0, size - 1)) with NaN -> 0, in dtype (each op rounded)."""
    c = coord.to(dtype)
    t = c * torch.tensor(float(size), dtype=dtype)
    t = t + torch.tensor(0.5, dtype=dtype)
    t = torch.nan_to_num(t, nan=0.0, posinf=float(size - 1), neginf=0.0)
    t = t.clamp(0.0, float(size - 1))
    return t.to(torch.int64)


def _bilinear(x, y, Hl, Wl):
    """Geometry of points (x, y) (fp64) on an Hl x Wl map: gate, the four corners' (row, valid,
    weight) and the fractions."""
    w_im = x * Wl - 0.5
    h_im = y * Hl - 0.5
    gate = (h_im > -1) & (w_im > -1) & (h_im < Hl) & (w_im < Wl)
    h_im = torch.where(gate, h_im, torch.zeros_like(h_im))
    w_im = torch.where(gate, w_im, torch.zeros_like(w_im))
    h0 = torch.floor(h_im)
    w0 = torch.floor(w_im)
    lh = h_im - h0
    lw = w_im - w0
    hh = 1 - lh
    hw = 1 - lw
    h0 = h0.to(torch.int64)
    w0 = w0.to(torch.int64)
    corners = []
    for dh, dw, wt in ((0, 0, hh * hw), (0, 1, hh * lw), (1, 0, lh * hw), (1, 1, lh * lw)):
        hi, wi = h0 + dh, w0 + dw
        valid = gate & (hi >= 0) & (hi < Hl) & (wi >= 0) & (wi < Wl)
        corners.append((hi * Wl + wi, valid, wt))
    return gate, corners, lh, lw, hh, hw


def _per_level(value, spatial_shapes, sampling_locations, attention_weights, num_points_list):
    levels = _levels(spatial_shapes)
    loc, attn, level_of = flat_points(sampling_locations, attention_weights, len(levels),
                                      num_points_list)
    start = 0
    out = []
    for l, (Hl, Wl) in enumerate(levels):
        pts = [n for n, lv in enumerate(level_of) if lv == l]
        out.append((l, Hl, Wl, start, torch.tensor(pts, dtype=torch.int64)))
        start += Hl * Wl
    assert start == value.shape[1], "spatial_shapes must cover value's keys"
    return loc, attn, out


def _index_dtype(value):
    return torch.float64 if value.dtype == torch.float64 else torch.float32


def reference_forward(value, spatial_shapes, sampling_locations, attention_weights,
                      num_points_list=None, method="default"):
    """float64 output [B, Q, H * D]. Differentiable (autograd) in value, attention_weights and,
    in the default mode, sampling_locations."""
    assert method in ("default", "discrete")
    index_dtype = _index_dtype(value)
    loc, attn, levels = _per_level(value, spatial_shapes, sampling_locations, attention_weights,
                                   num_points_list)
    v64 = value.double()
    B, K, H, D = value.shape
    Q = loc.shape[1]
    out = v64.new_zeros(B, Q, H, D)
    for l, Hl, Wl, start, pts in levels:
        if pts.numel() == 0:
            continue
        vl = v64[:, start:start + Hl * Wl]
        a = attn.index_select(3, pts).double()  # [B, Q, H, n]
        pl = loc.index_select(3, pts)  # [B, Q, H, n, 2]
        if method == "discrete":
            xi = _discrete_index(pl[..., 0], Wl, index_dtype)
            yi = _discrete_index(pl[..., 1], Hl, index_dtype)
            rows = yi * Wl + xi
            sample = _gather_rows(vl, rows, torch.ones_like(rows, dtype=torch.bool))
        else:
            _gate, corners, *_ = _bilinear(pl[..., 0].double(), pl[..., 1].double(), Hl, Wl)
            sample = 0
            for rows, valid, wt in corners:
                sample = sample + wt[..., None] * _gather_rows(vl, rows, valid)
        out = out + (a[..., None] * sample).sum(3)
    return out.reshape(B, Q, H * D)


def reference_backward(value, spatial_shapes, sampling_locations, attention_weights,
                       grad_output, num_points_list=None, method="default"):
    """(grad_value, grad_sampling_locations, grad_attention_weights), float64, shaped like the
    inputs; analytic formulas (no autograd)."""
    assert method in ("default", "discrete")
    index_dtype = _index_dtype(value)
    loc, attn, levels = _per_level(value, spatial_shapes, sampling_locations, attention_weights,
                                   num_points_list)
    v64 = value.detach().double()
    B, K, H, D = value.shape
    Q = loc.shape[1]
    g = grad_output.detach().double().reshape(B, Q, H, 1, D)
    grad_value = v64.new_zeros(B, K, H, D)
    grad_loc = v64.new_zeros(loc.shape)
    grad_attn = v64.new_zeros(attn.shape)

    def scatter(start, rows, valid, coef):
        # grad_value[b, start + row, h, :] += coef[b, q, h, n] * g[b, q, h, :]
        contrib = torch.where(valid[..., None], coef[..., None] * g, torch.zeros_like(g))
        n = rows.shape[3]
        b_idx = torch.arange(B)[:, None, None, None].expand(B, Q, H, n)
        h_idx = torch.arange(H)[None, None, :, None].expand(B, Q, H, n)
        r_idx = start + torch.where(valid, rows, torch.zeros_like(rows))
        grad_value.index_put_((b_idx, r_idx, h_idx), contrib, accumulate=True)

    for l, Hl, Wl, start, pts in levels:
        if pts.numel() == 0:
            continue
        vl = v64[:, start:start + Hl * Wl]
        a = attn.detach().index_select(3, pts).double()
        pl = loc.detach().index_select(3, pts)
        if method == "discrete":
            xi = _discrete_index(pl[..., 0], Wl, index_dtype)
            yi = _discrete_index(pl[..., 1], Hl, index_dtype)
            rows = yi * Wl + xi
            valid = torch.ones_like(rows, dtype=torch.bool)
            sample = _gather_rows(vl, rows, valid)
            grad_attn[:, :, :, pts] = (g * sample).sum(-1)
            scatter(start, rows, valid, a)
            continue
        gate, corners, lh, lw, hh, hw = _bilinear(pl[..., 0].double(), pl[..., 1].double(),
                                                  Hl, Wl)
        (r00, m00, w00), (r01, m01, w01), (r10, m10, w10), (r11, m11, w11) = corners
        v00, v01, v10, v11 = (_gather_rows(vl, r, m) for r, m in ((r00, m00), (r01, m01),
                                                                  (r10, m10), (r11, m11)))
        sample = (w00[..., None] * v00 + w01[..., None] * v01 + w10[..., None] * v10
                  + w11[..., None] * v11)
        zero = torch.zeros_like(a)
        grad_attn[:, :, :, pts] = torch.where(gate, (g * sample).sum(-1), zero)
        dx = (g * (hh[..., None] * (v01 - v00) + lh[..., None] * (v11 - v10))).sum(-1)
        dy = (g * (hw[..., None] * (v10 - v00) + lw[..., None] * (v11 - v01))).sum(-1)
        grad_loc[:, :, :, pts, 0] = torch.where(gate, Wl * a * dx, zero)
        grad_loc[:, :, :, pts, 1] = torch.where(gate, Hl * a * dy, zero)
        for rows, valid, wt in corners:
            scatter(start, rows, valid, wt * a)
    return (grad_value, _unflat(grad_loc, sampling_locations),
            _unflat(grad_attn, attention_weights))
