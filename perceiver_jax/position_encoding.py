"""Position encodings: the abstract interface, a trainable table, and Fourier features.

Index grids are static, so Fourier features of a full grid are computed once on the host in numpy with
torch's exact float32 arithmetic (see `torch_linspace`) and enter the graph as constants.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.sharding import EMBED, POSITIONS, partitioned

Dtype = Any


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """float32 `linspace` bit-identical to torch's CPU kernel (which `np`/`jnp.linspace` are not).

    torch fills the first half forwards from `start` and the second half backwards from `end` with a
    float32 step, in double precision. Returns `(steps,)` float32.
    """
    start, end = np.float32(start), np.float32(end)  # torch holds the endpoints as float32 scalars
    if steps == 1:
        return np.array([start], np.float32)
    step = np.float32(np.float32(end - start) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    forward = np.float64(start) + np.float64(step) * i
    backward = np.float64(end) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, forward, backward).astype(np.float32)


def linear_positions(
    index_dims: Sequence[int], output_range: tuple[float, float] = (-1.0, 1.0)
) -> np.ndarray:
    """Grid of coordinates in `output_range` per dimension, 'ij' order: `(*index_dims, len(index_dims))`."""
    ranges = [torch_linspace(output_range[0], output_range[1], n) for n in index_dims]
    return np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1)


def fourier_features(
    pos: np.ndarray | jax.Array,
    num_bands: int,
    max_resolution: Sequence[int],
    concat_pos: bool = True,
    sine_only: bool = False,
):
    """Fourier features of positions `pos` `(N, d)` in [-1, 1] -> `(N, C)`.

    Frequencies are `linspace(1, res/2, num_bands)` per dimension; the output is `[pos, sin(pi f pos),
    cos(pi f pos)]` with C = d * (2 * num_bands + 1) (`[pos, sin]` when `sine_only`). Works on numpy
    (host constants) and jax arrays alike.
    """
    xp = np if isinstance(pos, np.ndarray) else jnp
    freqs = np.stack([torch_linspace(1.0, res / 2, num_bands) for res in max_resolution])  # (d, K)
    per_pos = (pos[:, :, None] * freqs[None]).reshape(pos.shape[0], -1).astype(np.float32)  # (N, d*K)
    angles = (np.float32(math.pi) * per_pos).astype(np.float32)
    parts = [xp.sin(angles)] if sine_only else [xp.sin(angles), xp.cos(angles)]
    if concat_pos:
        parts.insert(0, pos.astype(np.float32))
    return xp.concatenate(parts, axis=-1)


class PositionEncoding(nn.Module):
    """Interface of position encodings: `__call__(batch_size, ...) -> (B, N, C)` and `output_size()`."""

    def output_size(self) -> int:
        """C, the number of channels this encoding produces."""
        raise NotImplementedError


class TrainablePositionEncoding(PositionEncoding):
    """A learned `(prod(index_dims), num_channels)` table, parameter `position_embeddings`.

    Attributes:
      index_dims: N or the grid shape whose product is N.
      num_channels: C.
      init_std: std of the normal initialiser.
    """

    index_dims: int | tuple[int, ...]
    num_channels: int = 128
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def output_size(self) -> int:
        """C."""
        return self.num_channels

    @nn.compact
    def __call__(self, batch_size: int, interpolate_to: tuple[int, int] | None = None) -> jax.Array:
        """Returns the table broadcast to `(batch_size, N, C)`.

        `interpolate_to=(h, w)` resizes a square table to an h x w grid with torch's bicubic, as HF's
        `interpolate_pos_encoding` (giving `(batch_size, h * w, C)`).
        """
        index_dim = int(np.prod(self.index_dims))
        table = self.param(
            "position_embeddings",
            partitioned(jax.nn.initializers.normal(self.init_std), POSITIONS, EMBED),
            (index_dim, self.num_channels),
            self.param_dtype,
        )
        if interpolate_to is not None:
            from perceiver_jax.image_processing import interpolate_position_table

            table = interpolate_position_table(table, tuple(interpolate_to))
        table = table.astype(self.dtype)
        return jnp.broadcast_to(table[None], (batch_size,) + table.shape)


class FourierPositionEncoding(PositionEncoding):
    """Fixed Fourier features of each position's coordinates in [-1, 1] (no parameters).

    Attributes:
      num_bands: K frequency bands per dimension.
      max_resolution: resolution per dimension setting the top frequency (res / 2); its length is d.
      concat_pos: prepend the raw coordinates.
      sine_only: sin features only (no cos).
    """

    num_bands: int
    max_resolution: tuple[int, ...]
    concat_pos: bool = True
    sine_only: bool = False
    dtype: Dtype = jnp.float32

    def output_size(self) -> int:
        """C = d * K * (1 if sine_only else 2) + (d if concat_pos else 0)."""
        d = len(self.max_resolution)
        return d * self.num_bands * (1 if self.sine_only else 2) + (d if self.concat_pos else 0)

    def __call__(self, index_dims: Sequence[int], batch_size: int, pos: jax.Array | None = None) -> jax.Array:
        """Features of the full `index_dims` grid, or of given positions `pos` `(B, N, d)` (as HF, the
        sin/cos part uses batch element 0's positions). Returns `(batch_size, N, C)`."""
        if pos is None:
            grid = linear_positions(index_dims).reshape(-1, len(index_dims))
            features = jnp.asarray(
                fourier_features(grid, self.num_bands, self.max_resolution, self.concat_pos, self.sine_only)
            )
            return jnp.broadcast_to(features[None], (batch_size,) + features.shape).astype(self.dtype)
        if pos.shape[-1] != len(self.max_resolution):
            raise ValueError(
                f"positions have {pos.shape[-1]} coordinates; this encoding expects "
                f"{len(self.max_resolution)} (len(max_resolution))."
            )
        features = fourier_features(pos[0], self.num_bands, self.max_resolution, False, self.sine_only)
        features = jnp.broadcast_to(features[None], (pos.shape[0],) + features.shape)
        if self.concat_pos:
            features = jnp.concatenate([pos.astype(jnp.float32), features], axis=-1)
        return features.astype(self.dtype)
