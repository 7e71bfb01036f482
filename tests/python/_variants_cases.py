"""Inputs and tolerances shared by the variants' tests on the CPU (test_variants.py) and on the
Triton kernels (test_triton_variants.py)."""
import torch

from _reference import UNIT_ROUNDOFF


def level_starts(levels):
    out, s = [], 0
    for h, w in levels:
        out.append(s)
        s += h * w
    return out


def make(levels, num_points_list=None, P=2, B=1, Q=3, H=2, D=3, dtype=torch.float64,
         loc_dtype=None, seed=0, spread=1.4, safe=False):
    """(value, spatial_shapes, level_start_index, loc, attn) on the CPU, fp64 drawn then rounded
    to dtype. Locations are spread over [-0.2, 1.2] (borders and beyond) unless safe, which
    keeps every point 0.1 pixel away from the pixel-centre lines of its level."""
    g = torch.Generator().manual_seed(seed)
    L = len(levels)
    K = sum(h * w for h, w in levels)
    counts = list(num_points_list) if num_points_list is not None else [P] * L
    N = sum(counts)
    value = torch.randn(B, K, H, D, generator=g, dtype=torch.float64)
    level_of = [l for l, p in enumerate(counts) for _ in range(p)]
    sizes = torch.tensor([[levels[l][1], levels[l][0]] for l in level_of], dtype=torch.float64)
    if safe:
        base = torch.randint(-1, 64, (B, Q, H, N, 2), generator=g).double()
        base = torch.remainder(base + 1, sizes + 1) - 1
        pix = base + 0.1 + 0.8 * torch.rand(B, Q, H, N, 2, generator=g, dtype=torch.float64)
        loc = (pix + 0.5) / sizes
    else:
        loc = torch.rand(B, Q, H, N, 2, generator=g, dtype=torch.float64) * spread - (spread - 1) / 2
    attn = torch.rand(B, Q, H, N, generator=g, dtype=torch.float64)
    if num_points_list is None:
        loc = loc.reshape(B, Q, H, L, P, 2)
        attn = attn.reshape(B, Q, H, L, P)
    ss = torch.tensor(levels, dtype=torch.int64)
    lsi = torch.tensor(level_starts(levels), dtype=torch.int64)
    return (value.to(dtype), ss, lsi, loc.to(loc_dtype or dtype), attn.to(dtype))


LEVELS3 = ((3, 5), (1, 4), (2, 1))  # 3x5, 1xW and Hx1 maps.
METHODS = ["default", "discrete"]
DTYPES = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float64, torch.float64),
]


def ids(x):
    return str(x).replace("torch.", "")


def assert_close(actual, expected, terms):
    """|actual - expected| <= 4 (u_store |expected| + (u_store + terms u_acc) scale), scale
    max|expected|: one rounding on store in the result's dtype, and terms roundings of the
    accumulation type (fp32, fp64 for fp64) on the scale of the result (the sums over points
    and D, and the geometry's own rounding, at most a few pixels' worth)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    u_store = UNIT_ROUNDOFF[actual.dtype]
    u_acc = UNIT_ROUNDOFF[torch.float64 if actual.dtype == torch.float64 else torch.float32]
    a = actual.detach().cpu().double()
    e = expected.double()
    if e.numel() == 0:
        return
    scale = max(e.abs().max().item(), 1e-30)
    bound = 4 * (u_store * e.abs() + (u_store + terms * u_acc) * scale)
    err = (a - e).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"max error {err.max().item():.3e} is {worst:.2f}x the bound"
