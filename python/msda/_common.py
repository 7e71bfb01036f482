"""Helpers shared by the NumPy and PyTorch entries (no torch import here)."""

ARGUMENT_NAMES = (
    "value",
    "spatial_shapes",
    "level_start_index",
    "sampling_locations",
    "attention_weights",
)


def _shape(x):
    return list(x.shape)


def output_shape(value, sampling_locations):
    """[B, Q, H * D] from value [B, K, H, D] and sampling_locations [B, Q, H, L, P, 2].

    Only the ranks are checked here (they are needed to size the output); every other rule is
    checked by the C library, whose messages name the argument.
    """
    if value.ndim != 4:
        raise ValueError(
            "value: must have rank 4 [batch, keys, heads, embed_dims], got shape "
            f"{_shape(value)}"
        )
    if sampling_locations.ndim != 6:
        raise ValueError(
            "sampling_locations: must have rank 6 [batch, queries, heads, levels, points, 2], "
            f"got shape {_shape(sampling_locations)}"
        )
    batch, _, heads, dims = value.shape
    return (batch, sampling_locations.shape[1], heads * dims)


def check_num_threads(num_threads):
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"num_threads: must be an int or None, got {type(num_threads).__name__}")
    if num_threads < 0:
        raise ValueError(f"num_threads: must be >= 0 (0 or None = msda's default), got {num_threads}")
    return num_threads
