"""Triton kernels of MultiScale Deformable Attention (docs/semantics.md), forward and backward.

A program handles one (batch item, head) and a block of BLOCK_Q queries; for every level and
point it computes the bilinear geometry of the block's queries as vectors, then gathers the
four corner rows of value as [BLOCK_Q, BLOCK_D] tiles.

Variants (compile-time switches): VARIABLE, points per level (num_points_list): the points of
level l are the flat points point_starts[l] .. point_starts[l + 1] - 1 (the level strides are
0), while P points per level (and equal counts) keep today's (l, p) loops; DISCRETE, each point
reads the one pixel trunc(clamp(x * W + 0.5, 0, W - 1)) (y likewise) with no location gradient,
one grad_value entry per point instead of four. Every tensor is addressed through its
strides (no copies), with 64-bit offsets. Half types are converted on load and arithmetic is in
ACC (fp32, or fp64 for fp64 problems).

Backward:
* ``_backward_kernel`` computes the location and weight gradients of its points (sums over D
  within the program, so they need no reduction) and either adds every corner's contribution
  to grad_value with atomic adds (ATOMIC) or, for the deterministic mode (ENTRIES), writes each
  corner's key row and coefficient to an entry list;
* ``_gather_value_grad_kernel`` then sums, for each grad_value row, the entries that a stable
  sort grouped by row, in entry order: a fixed order, so the result is bitwise the same on every
  run.
"""
import triton
import triton.language as tl


@triton.jit
def _corner(hi, wi, gate, Hl, Wl, start, K):
    """Row of value a corner reads and whether it exists (inside its map and the keys)."""
    ok = gate & (hi >= 0) & (hi < Hl) & (wi >= 0) & (wi < Wl)
    row = start + hi * Wl + wi
    ok = ok & (row >= 0) & (row < K)  # Wrong level tables cannot read outside value.
    return tl.where(ok, row, 0), ok


@triton.jit
def _program_queries(Q, H, BLOCK_Q: tl.constexpr):
    """The batch item, head and queries of this program: program (b * H + h) * query_blocks +
    query block, on dim 0 of the grid (the one without a 65535 limit)."""
    query_blocks = tl.cdiv(Q, BLOCK_Q)
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // query_blocks
    q = (pid % query_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    return bh // H, bh % H, q


@triton.jit
def _point(loc, attn, shapes, starts, b, q, h, l, p, q_mask,
           sl0, sl1, sl2, sl3, sl4, sl5, sa0, sa1, sa2, sa3, sa4, ss0, ss1, st0,
           ACC: tl.constexpr):
    """Point (l, p) of a block of queries: its (x, y), attention weight, level size and level
    start. With points per level, sl3 and sa3 are 0 and p is the flat point index."""
    Hl = tl.load(shapes + l * ss0).to(tl.int64)
    Wl = tl.load(shapes + l * ss0 + ss1).to(tl.int64)
    start = tl.load(starts + l * st0).to(tl.int64)
    lp = loc + b * sl0 + q * sl1 + h * sl2 + l * sl3 + p * sl4
    x = tl.load(lp, mask=q_mask, other=0.0).to(ACC)
    y = tl.load(lp + sl5, mask=q_mask, other=0.0).to(ACC)
    a = tl.load(attn + b * sa0 + q * sa1 + h * sa2 + l * sa3 + p * sa4, mask=q_mask,
                other=0.0).to(ACC)
    return x, y, a, Hl, Wl, start


@triton.jit
def _geometry(x, y, Hl, Wl, start, q_mask, K):
    """The bilinear geometry of a point for a block of queries: the four corners' rows, masks
    and weights, the fractions and the map size."""
    Hf = Hl.to(x.dtype)
    Wf = Wl.to(x.dtype)
    w_im = x * Wf - 0.5
    h_im = y * Hf - 0.5
    # Strict gate; NaN fails every comparison.
    gate = q_mask & (h_im > -1.0) & (w_im > -1.0) & (h_im < Hf) & (w_im < Wf)
    h_im = tl.where(gate, h_im, 0.0)
    w_im = tl.where(gate, w_im, 0.0)
    h0f = tl.floor(h_im)
    w0f = tl.floor(w_im)
    lh = h_im - h0f
    lw = w_im - w0f
    hh = 1.0 - lh
    hw = 1.0 - lw
    h0 = h0f.to(tl.int64)
    w0 = w0f.to(tl.int64)
    r00, m00 = _corner(h0, w0, gate, Hl, Wl, start, K)
    r01, m01 = _corner(h0, w0 + 1, gate, Hl, Wl, start, K)
    r10, m10 = _corner(h0 + 1, w0, gate, Hl, Wl, start, K)
    r11, m11 = _corner(h0 + 1, w0 + 1, gate, Hl, Wl, start, K)
    return (r00, r01, r10, r11, m00, m01, m10, m11, hh * hw, hh * lw, lh * hw, lh * lw, lh, lw,
            hh, hw, gate, Hf, Wf)


@triton.jit
def _pixel_index(c, size):
    """trunc(clamp(c * size + 0.5, 0, size - 1)), NaN giving 0, each operation rounded in c's
    type. NaN is replaced in the product (a NaN product makes a NaN sum): the select between
    the multiply and the add also keeps them from fusing into an fma, which would round once."""
    sf = size.to(c.dtype)
    t = c * sf
    t = tl.where(t != t, 0.0, t)
    t = t + 0.5
    t = tl.minimum(tl.maximum(t, 0.0), sf - 1.0)
    return t.to(tl.int64)


@triton.jit
def _discrete(x, y, Hl, Wl, start, q_mask, K):
    """The one pixel a discrete point reads (no zero padding: clamped into its map) and whether
    it is read (a wrong level table cannot read outside value)."""
    row = start + _pixel_index(y, Hl) * Wl + _pixel_index(x, Wl)
    ok = q_mask & (row >= 0) & (row < K)
    return tl.where(ok, row, 0), ok


@triton.jit
def _points_of_level(l, P, point_starts, VARIABLE: tl.constexpr):
    """The points of level l, [begin, end), and the flat index of point 0 of the range's
    numbering: P per level, or the per-level table point_starts [L + 1] (points per level,
    where the point index is flat)."""
    if VARIABLE:
        begin = tl.load(point_starts + l).to(tl.int64)
        end = tl.load(point_starts + l + 1).to(tl.int64)
        base = begin * 0
    else:
        begin = l * 0
        end = begin + P
        base = l * P
    return begin, end, base


@triton.jit
def _forward_kernel(
    value, shapes, starts, loc, attn, out, point_starts,
    B, Q, K, H, D, L, P,
    sv0, sv1, sv2, sv3,
    ss0, ss1, st0,
    sl0, sl1, sl2, sl3, sl4, sl5,
    sa0, sa1, sa2, sa3, sa4,
    so0, so1, so2,
    LP,  # Points per (query, head): an autotuning key only.
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
    VARIABLE: tl.constexpr, DISCRETE: tl.constexpr,
):
    b, h, q = _program_queries(Q, H, BLOCK_Q)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    q_mask = q < Q
    d_mask = d < D
    dm = d_mask[None, :]
    v_head = value + b * sv0 + h * sv2 + d[None, :] * sv3
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC)
    for l in range(L):
        p_begin, p_end, _base = _points_of_level(l, P, point_starts, VARIABLE)
        for p in range(p_begin, p_end):
            x, y, a, Hl, Wl, start = _point(loc, attn, shapes, starts, b, q, h, l, p, q_mask,
                                            sl0, sl1, sl2, sl3, sl4, sl5, sa0, sa1, sa2, sa3,
                                            sa4, ss0, ss1, st0, ACC)
            if DISCRETE:
                row, ok = _discrete(x, y, Hl, Wl, start, q_mask, K)
                sample = tl.load(v_head + row[:, None] * sv1, mask=ok[:, None] & dm,
                                 other=0.0).to(ACC)
            else:
                (r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, _lh, _lw, _hh,
                 _hw, _gate, _Hf, _Wf) = _geometry(x, y, Hl, Wl, start, q_mask, K)
                v00 = tl.load(v_head + r00[:, None] * sv1, mask=m00[:, None] & dm,
                              other=0.0).to(ACC)
                v01 = tl.load(v_head + r01[:, None] * sv1, mask=m01[:, None] & dm,
                              other=0.0).to(ACC)
                v10 = tl.load(v_head + r10[:, None] * sv1, mask=m10[:, None] & dm,
                              other=0.0).to(ACC)
                v11 = tl.load(v_head + r11[:, None] * sv1, mask=m11[:, None] & dm,
                              other=0.0).to(ACC)
                sample = (w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 +
                          w11[:, None] * v11)
            acc += a[:, None] * sample
    o = out + b * so0 + q[:, None] * so1 + (h * D + d[None, :]) * so2
    tl.store(o, acc.to(out.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _backward_kernel(
    grad_out, value, shapes, starts, loc, attn,
    grad_value, grad_loc, grad_attn, entry_keys, entry_coefs, point_starts,
    B, Q, K, H, D, L, P,
    sg0, sg1, sg2,
    sv0, sv1, sv2, sv3,
    ss0, ss1, st0,
    sl0, sl1, sl2, sl3, sl4, sl5,
    sa0, sa1, sa2, sa3, sa4,
    sgv0, sgv1, sgv2, sgv3,
    sgl0, sgl1, sgl2, sgl3, sgl4, sgl5,
    sga0, sga1, sga2, sga3, sga4,
    LP,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
    ATOMIC: tl.constexpr, ENTRIES: tl.constexpr, NEED_LOC: tl.constexpr,
    NEED_ATTN: tl.constexpr, VARIABLE: tl.constexpr, DISCRETE: tl.constexpr,
):
    b, h, q = _program_queries(Q, H, BLOCK_Q)
    q_mask = q < Q
    v_head = value + b * sv0 + h * sv2
    g_head = grad_out + b * sg0 + q[:, None] * sg1
    gv_head = grad_value + b * sgv0 + h * sgv2
    row_base = (b * H + h) * K
    none = B * H * K
    for l in range(L):
        p_begin, p_end, n_base = _points_of_level(l, P, point_starts, VARIABLE)
        for p in range(p_begin, p_end):
            x, y, a, Hl, Wl, start = _point(loc, attn, shapes, starts, b, q, h, l, p, q_mask,
                                            sl0, sl1, sl2, sl3, sl4, sl5, sa0, sa1, sa2, sa3,
                                            sa4, ss0, ss1, st0, ACC)
            # Entries of (b, q, h, point n): from ((b * Q + q) * H + h) * LP + n, times 4 (one
            # per corner), or 1 for a discrete point.
            n = n_base + p
            dot_a = tl.zeros((BLOCK_Q,), dtype=ACC)
            if DISCRETE:
                row, ok = _discrete(x, y, Hl, Wl, start, q_mask, K)
                for d0 in range(0, D, BLOCK_D):
                    d = d0 + tl.arange(0, BLOCK_D)
                    dm = (d < D)[None, :]
                    g = tl.load(g_head + (h * D + d[None, :]) * sg2, mask=q_mask[:, None] & dm,
                                other=0.0).to(ACC)
                    if NEED_ATTN:
                        v = tl.load(v_head + d[None, :] * sv3 + row[:, None] * sv1,
                                    mask=ok[:, None] & dm, other=0.0).to(ACC)
                        dot_a += tl.sum(g * v, axis=1)
                    if ATOMIC:
                        tl.atomic_add(gv_head + d[None, :] * sgv3 + row[:, None] * sgv1,
                                      a[:, None] * g, mask=ok[:, None] & dm)
                if ENTRIES:
                    e = ((b * Q + q) * H + h) * LP + n
                    tl.store(entry_keys + e, tl.where(ok, row_base + row, none), mask=q_mask)
                    tl.store(entry_coefs + e, a, mask=q_mask)
                if NEED_ATTN:
                    ga = grad_attn + b * sga0 + q * sga1 + h * sga2 + l * sga3 + p * sga4
                    tl.store(ga, dot_a.to(grad_attn.dtype.element_ty), mask=q_mask)
            else:
                (r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, lh, lw, hh, hw,
                 gate, Hf, Wf) = _geometry(x, y, Hl, Wl, start, q_mask, K)
                dot_x = tl.zeros((BLOCK_Q,), dtype=ACC)
                dot_y = tl.zeros((BLOCK_Q,), dtype=ACC)
                for d0 in range(0, D, BLOCK_D):
                    d = d0 + tl.arange(0, BLOCK_D)
                    dm = (d < D)[None, :]
                    g = tl.load(g_head + (h * D + d[None, :]) * sg2, mask=q_mask[:, None] & dm,
                                other=0.0).to(ACC)
                    if NEED_LOC or NEED_ATTN:
                        vd = v_head + d[None, :] * sv3
                        v00 = tl.load(vd + r00[:, None] * sv1, mask=m00[:, None] & dm,
                                      other=0.0).to(ACC)
                        v01 = tl.load(vd + r01[:, None] * sv1, mask=m01[:, None] & dm,
                                      other=0.0).to(ACC)
                        v10 = tl.load(vd + r10[:, None] * sv1, mask=m10[:, None] & dm,
                                      other=0.0).to(ACC)
                        v11 = tl.load(vd + r11[:, None] * sv1, mask=m11[:, None] & dm,
                                      other=0.0).to(ACC)
                        if NEED_ATTN:
                            sample = (w00[:, None] * v00 + w01[:, None] * v01 +
                                      w10[:, None] * v10 + w11[:, None] * v11)
                            dot_a += tl.sum(g * sample, axis=1)
                        if NEED_LOC:
                            dot_x += tl.sum(g * (hh[:, None] * (v01 - v00) +
                                                 lh[:, None] * (v11 - v10)), axis=1)
                            dot_y += tl.sum(g * (hw[:, None] * (v10 - v00) +
                                                 lw[:, None] * (v11 - v01)), axis=1)
                    if ATOMIC:
                        gvd = gv_head + d[None, :] * sgv3
                        tl.atomic_add(gvd + r00[:, None] * sgv1, (w00 * a)[:, None] * g,
                                      mask=m00[:, None] & dm)
                        tl.atomic_add(gvd + r01[:, None] * sgv1, (w01 * a)[:, None] * g,
                                      mask=m01[:, None] & dm)
                        tl.atomic_add(gvd + r10[:, None] * sgv1, (w10 * a)[:, None] * g,
                                      mask=m10[:, None] & dm)
                        tl.atomic_add(gvd + r11[:, None] * sgv1, (w11 * a)[:, None] * g,
                                      mask=m11[:, None] & dm)
                if ENTRIES:
                    # Key the grad_value row (b, h, key) as (b * H + h) * K + key, or
                    # B * H * K (sorted last, never read) for a corner that does not exist.
                    e = (((b * Q + q) * H + h) * LP + n) * 4
                    tl.store(entry_keys + e, tl.where(m00, row_base + r00, none), mask=q_mask)
                    tl.store(entry_keys + e + 1, tl.where(m01, row_base + r01, none),
                             mask=q_mask)
                    tl.store(entry_keys + e + 2, tl.where(m10, row_base + r10, none),
                             mask=q_mask)
                    tl.store(entry_keys + e + 3, tl.where(m11, row_base + r11, none),
                             mask=q_mask)
                    tl.store(entry_coefs + e, w00 * a, mask=q_mask)
                    tl.store(entry_coefs + e + 1, w01 * a, mask=q_mask)
                    tl.store(entry_coefs + e + 2, w10 * a, mask=q_mask)
                    tl.store(entry_coefs + e + 3, w11 * a, mask=q_mask)
                if NEED_ATTN:
                    ga = grad_attn + b * sga0 + q * sga1 + h * sga2 + l * sga3 + p * sga4
                    tl.store(ga, tl.where(gate, dot_a, 0.0).to(grad_attn.dtype.element_ty),
                             mask=q_mask)
                if NEED_LOC:
                    gl = grad_loc + b * sgl0 + q * sgl1 + h * sgl2 + l * sgl3 + p * sgl4
                    gx = tl.where(gate, Wf * a * dot_x, 0.0)
                    gy = tl.where(gate, Hf * a * dot_y, 0.0)
                    tl.store(gl, gx.to(grad_loc.dtype.element_ty), mask=q_mask)
                    tl.store(gl + sgl5, gy.to(grad_loc.dtype.element_ty), mask=q_mask)


@triton.jit
def _gather_value_grad_kernel(
    grad_out, perm, row_starts, entry_coefs, grad_value,
    Q, K, H, D, EPQ,
    sg0, sg1, sg2,
    sgv0, sgv1, sgv2, sgv3,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """One grad_value row (b, key, h) per program (and a block of D): the sum of its entries
    in sorted order, which a stable sort makes entry order. EPQ: entries per (query, head)."""
    r = tl.program_id(0).to(tl.int64)  # (b * H + h) * K + key
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    key = r % K
    h = (r // K) % H
    b = r // (K * H)
    begin = tl.load(row_starts + r)
    end = tl.load(row_starts + r + 1)
    acc = tl.zeros((BLOCK_D,), dtype=ACC)
    g_head = grad_out + b * sg0 + (h * D + d) * sg2
    for i in range(begin, end):
        e = tl.load(perm + i)
        q = (e // (EPQ * H)) % Q
        c = tl.load(entry_coefs + e)
        g = tl.load(g_head + q * sg1, mask=d_mask, other=0.0).to(ACC)
        acc += c * g
    out = grad_value + b * sgv0 + key * sgv1 + h * sgv2 + d * sgv3
    tl.store(out, acc.to(grad_value.dtype.element_ty), mask=d_mask)
