"""Helpers shared by the NumPy and PyTorch entries (no torch import here)."""

ARGUMENT_NAMES = (
    "value",
    "spatial_shapes",
    "level_start_index",
    "sampling_locations",
    "attention_weights",
)

# msda.h's MSDA_MAX_NUM_THREADS (the binding exports it as _C.MAX_NUM_THREADS).
MAX_NUM_THREADS = 1024


def _shape(x):
    return list(x.shape)


def level_start_index(spatial_shapes):
    """Prefix sums of H_l * W_l starting at 0, from spatial_shapes [L, 2] rows (H_l, W_l).

    The one helper behind ``msda.level_start_index`` and ``msda.numpy.level_start_index``: a
    torch tensor gives a tensor on its device (traceable: plain tensor arithmetic), a NumPy
    array or a nested list a NumPy array; integer inputs give int64.
    """
    if not hasattr(spatial_shapes, "cumsum"):
        import numpy as np

        spatial_shapes = np.asarray(spatial_shapes, dtype=np.int64)
    elif hasattr(spatial_shapes, "long"):  # A torch tensor: H*W of int32 rows could overflow.
        if not spatial_shapes.is_floating_point():
            spatial_shapes = spatial_shapes.long()
    elif spatial_shapes.dtype.kind in "iu":  # A NumPy integer array, for the same reason.
        spatial_shapes = spatial_shapes.astype("int64")
    if spatial_shapes.ndim != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] < 1:
        raise ValueError(
            "spatial_shapes: must have shape [levels, 2] with levels >= 1, got shape "
            f"{_shape(spatial_shapes)}"
        )
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return areas.cumsum(0) - areas  # Exclusive prefix sums (cumsum widens to int64).


def output_shape(value, sampling_locations, num_points_list=None):
    """[B, Q, H * D] from value [B, K, H, D] and sampling_locations [B, Q, H, L, P, 2] (or,
    with num_points_list, [B, Q, H, sum of num_points_list, 2]).

    Only the ranks are checked here (they are needed to size the output); every other rule is
    checked by the C library, whose messages name the argument.
    """
    if value.ndim != 4:
        raise ValueError(
            "value: must have rank 4 [batch, keys, heads, embed_dims], got shape "
            f"{_shape(value)}"
        )
    if num_points_list is not None:
        if sampling_locations.ndim != 5:
            raise ValueError(
                "sampling_locations: must have rank 5 [batch, queries, heads, sum of "
                f"num_points_list, 2] with num_points_list, got shape {_shape(sampling_locations)}"
            )
    elif sampling_locations.ndim != 6:
        raise ValueError(
            "sampling_locations: must have rank 6 [batch, queries, heads, levels, points, 2], "
            f"got shape {_shape(sampling_locations)}"
        )
    batch, _, heads, dims = value.shape
    return (batch, sampling_locations.shape[1], heads * dims)


METHODS = ("default", "discrete")


def check_variant(num_points_list, method):
    """The operator variant: (num_points_list as a list of ints or None, discrete as a bool).

    num_points_list: None (every level has P points, locations [B, Q, H, L, P, 2]) or one
    count >= 1 per level (locations [B, Q, H, sum, 2], RT-DETRv2's layout). method:
    "default" (bilinear) or "discrete" (nearest pixel, RT-DETRv2's method="discrete").
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: must be 'default' or 'discrete', got {method!r}")
    if num_points_list is None:
        return None, method == "discrete"
    if hasattr(num_points_list, "tolist"):  # A tensor or an array of counts.
        num_points_list = num_points_list.tolist()
    if not isinstance(num_points_list, (list, tuple)):
        raise TypeError(
            "num_points_list: must be a list of ints (one point count per level) or None, got "
            f"{type(num_points_list).__name__}"
        )
    counts = []
    for i, c in enumerate(num_points_list):
        if isinstance(c, bool) or not hasattr(c, "__index__"):
            raise TypeError(
                f"num_points_list: entry {i} must be an int, got {type(c).__name__}"
            )
        c = int(c)
        if c < 1:
            raise ValueError(f"num_points_list: entry {i} must be >= 1, got {c}")
        counts.append(c)
    if not counts:
        raise ValueError("num_points_list: must have one entry per level, got an empty list")
    return counts, method == "discrete"


def check_counts_per_level(counts, spatial_shapes):
    """num_points_list has one entry per row of spatial_shapes (when both are known)."""
    if counts is None or getattr(spatial_shapes, "ndim", 0) != 2:
        return
    levels = spatial_shapes.shape[0]
    if len(counts) != levels:
        raise ValueError(
            f"num_points_list: must have one entry per level of spatial_shapes ({levels}), got "
            f"{len(counts)} entries"
        )


def check_num_threads(num_threads):
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"num_threads: must be an int or None, got {type(num_threads).__name__}")
    if num_threads < 0 or num_threads > MAX_NUM_THREADS:
        raise ValueError(
            f"num_threads: must be in [0, {MAX_NUM_THREADS}] (0 or None = msda's default), got "
            f"{num_threads}"
        )
    return num_threads
