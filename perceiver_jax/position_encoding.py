"""Position encodings: one interface, a trainable table, Fourier features, and a projection wrapper.

Every encoding is built for a grid (`index_dims`) and called as `encoding(batch_size, *, pos=None)`,
returning `(batch_size, N, C)` features for the N = prod(index_dims) grid points, or for the positions
`pos` `(batch_size, N', d)` in [-1, 1] when given (DeepMind's `position_encoding.py` interface). A learned
table does not depend on positions and ignores `pos`. `encoding.for_grid(batch_size, index_dims, *,
interpolate=False)` gives the features of another grid: an encoding of positions evaluates that grid's
coordinates, a learned table is resized (HF's `interpolate_pos_encoding`) or refuses.

Index grids are static, so Fourier features of a grid are computed once on the host in numpy with
torch's exact float32 arithmetic (see `torch_linspace`) and enter the graph as constants.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.attention import dense
from perceiver_jax.image_processing import interpolate_position_table
from perceiver_jax.settings import Settings
from perceiver_jax.sharding import ACT_EMBED, BATCH, EMBED, LENGTH, POSITIONS, constrain, partitioned


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


def _batched(features: jax.Array, batch_size: int, dtype) -> jax.Array:
    """`(N, C)` -> `(batch_size, N, C)` in `dtype`, split along the batch under a mesh."""
    features = jnp.broadcast_to(jnp.asarray(features, dtype)[None], (batch_size,) + features.shape)
    return constrain(features, BATCH, LENGTH, ACT_EMBED)


class PositionEncoding(nn.Module):
    """Interface of position encodings (abstract).

    An encoding has `index_dims`, the grid it encodes, and `output_size()`, its channels C. Calling it as
    `(batch_size, *, pos=None)` returns `(batch_size, N, C)`: the grid's N = prod(index_dims) points, or
    the points `pos` `(batch_size, N', d)` (coordinates in [-1, 1]) when given.
    """

    def output_size(self) -> int:
        """C, the number of channels this encoding produces."""
        raise NotImplementedError

    def __call__(self, batch_size: int, *, pos: jax.Array | np.ndarray | None = None) -> jax.Array:
        """`(batch_size, N, C)` features of the grid, or of `pos` `(batch_size, N', d)`."""
        raise NotImplementedError

    def for_grid(self, batch_size: int, index_dims: Sequence[int], *, interpolate: bool = False) -> jax.Array:
        """`(batch_size, prod(index_dims), C)` features of the grid `index_dims` (its coordinates
        `linear_positions`); `interpolate` only matters to learned tables (HF ignores it for the others)."""
        index_dims = tuple(index_dims)
        if index_dims == tuple(self.index_dims):
            return self(batch_size)
        return self(batch_size, pos=linear_positions(index_dims).reshape(1, -1, len(index_dims)))


class TrainablePositionEncoding(PositionEncoding, kw_only=True):
    """A learned `(prod(index_dims), num_channels)` table, parameter `position_embeddings`.

    The table is the same for any positions, so `pos` is ignored (as in DeepMind's code); `for_grid` resizes
    it to another 2-D grid (HF's `interpolate_pos_encoding`) when asked.

    Attributes:
      index_dims: the grid; N = prod(index_dims) rows.
      num_channels: C.
      init_std: std of the normal initialiser.
    """

    index_dims: tuple[int, ...]
    num_channels: int = 128
    init_std: float = 0.02
    settings: Settings = Settings()

    def output_size(self) -> int:
        """C."""
        return self.num_channels

    def setup(self):
        self.position_embeddings = self.param(
            "position_embeddings",
            partitioned(jax.nn.initializers.normal(self.init_std), POSITIONS, EMBED),
            (math.prod(self.index_dims), self.num_channels),
            self.settings.param_dtype,
        )

    def __call__(self, batch_size: int, *, pos: jax.Array | np.ndarray | None = None) -> jax.Array:
        """The table broadcast to `(batch_size, N, C)`."""
        del pos  # a learned table does not depend on positions
        return _batched(self.position_embeddings, batch_size, self.settings.dtype)

    def for_grid(self, batch_size: int, index_dims: Sequence[int], *, interpolate: bool = False) -> jax.Array:
        """With `interpolate`, the table of a square 2-D grid resized to `index_dims` (torch bicubic, as
        HF's `interpolate_pos_encoding`); otherwise the table, whose rows must be as many as the grid's
        points (HF's tables are flat: any grid of as many points reads them row-major)."""
        index_dims = tuple(index_dims)
        if math.prod(index_dims) == math.prod(self.index_dims) and not interpolate:
            return self(batch_size)
        if not interpolate:
            raise ValueError(
                f"the grid {index_dims} ({math.prod(index_dims)} positions) is not the learned position "
                f"table's {tuple(self.index_dims)} ({math.prod(self.index_dims)}): pass "
                "interpolate_pos_encoding=True to resize a 2-D table (torch bicubic, as HF), or inputs of "
                "the size the table was built for."
            )
        if len(index_dims) != 2:
            raise ValueError(
                f"interpolate_pos_encoding resizes a 2-D table; the inputs give a grid {index_dims}."
            )
        table = interpolate_position_table(self.position_embeddings, index_dims)
        return _batched(table, batch_size, self.settings.dtype)


class FourierPositionEncoding(PositionEncoding, kw_only=True):
    """Fixed Fourier features of each position's coordinates in [-1, 1] (no parameters).

    The grid's coordinates are `linspace(-1, 1, n)` per dimension, 'ij' order (HF, DeepMind).

    Attributes:
      index_dims: the grid (d = len(index_dims) dimensions).
      num_bands: K frequency bands per dimension.
      max_resolution: resolution per dimension setting the top frequency (res / 2); None: index_dims.
      concat_pos: prepend the raw coordinates.
      sine_only: sin features only (no cos).
    """

    index_dims: tuple[int, ...]
    num_bands: int
    max_resolution: tuple[int, ...] | None = None
    concat_pos: bool = True
    sine_only: bool = False
    settings: Settings = Settings()

    def __post_init__(self):
        if len(self.resolution) != len(self.index_dims):
            raise ValueError(
                f"max_resolution {self.max_resolution} and index_dims {self.index_dims} must have one entry "
                "per dimension."
            )
        super().__post_init__()

    @property
    def resolution(self) -> tuple[int, ...]:
        """The resolution setting the top frequency per dimension."""
        return tuple(self.index_dims if self.max_resolution is None else self.max_resolution)

    def output_size(self) -> int:
        """C = d * K * (1 if sine_only else 2) + (d if concat_pos else 0)."""
        d = len(self.resolution)
        return d * self.num_bands * (1 if self.sine_only else 2) + (d if self.concat_pos else 0)

    def __call__(self, batch_size: int, *, pos: jax.Array | np.ndarray | None = None) -> jax.Array:
        """Features of the grid, or of `pos` `(B, N', d)`. Numpy positions, one grid for the whole batch
        (`(1, N', d)`, or the same rows), are computed on the host (exact constants); jax positions use batch
        element 0's for the sin/cos part and each element's own for the raw coordinates, as HF does."""
        d = len(self.resolution)
        if pos is None:
            pos = linear_positions(self.index_dims).reshape(-1, d)
        elif pos.ndim != 3 or pos.shape[-1] != d:
            raise ValueError(f"positions must be (batch, points, {d}); got shape {pos.shape}.")
        elif isinstance(pos, np.ndarray):
            if not np.array_equal(pos, np.broadcast_to(pos[:1], pos.shape)):
                raise ValueError(
                    "numpy positions must be the same for every batch element; pass a jax array."
                )
            pos = pos[0]
        else:
            features = fourier_features(pos[0], self.num_bands, self.resolution, False, self.sine_only)
            features = jnp.broadcast_to(features[None], (pos.shape[0],) + features.shape)
            if self.concat_pos:
                features = jnp.concatenate([pos.astype(jnp.float32), features], axis=-1)
            return constrain(features.astype(self.settings.dtype), BATCH, LENGTH, ACT_EMBED)
        features = fourier_features(pos, self.num_bands, self.resolution, self.concat_pos, self.sine_only)
        return _batched(features, batch_size, self.settings.dtype)


class PositionEncodingProjector(PositionEncoding, kw_only=True):
    """Another encoding followed by a Dense `positions_projection` to `output_channels` (DeepMind's
    `PositionEncodingProjector`; HF's `project_pos_dim`).

    The wrapped encoding shares this module's scope, so its parameters keep their names (a learned table
    stays `.../position_embeddings/position_embeddings`, HF's key) next to `positions_projection`.

    Attributes:
      encoding: the wrapped position encoding.
      output_channels: width of the projection.
      init_std: std of the projection's kernel initialiser.
    """

    encoding: PositionEncoding
    output_channels: int
    init_std: float = 0.02
    settings: Settings = Settings()

    def setup(self):
        nn.share_scope(self, self.encoding)
        self.positions_projection = dense(
            self.output_channels,
            in_axis=None,  # position channels (a mesh axis may shard one dimension only: out's embed)
            out_axis=EMBED,
            init_std=self.init_std,
            settings=self.settings,
            name="positions_projection",
        )

    @property
    def index_dims(self) -> tuple[int, ...]:
        """The wrapped encoding's grid."""
        return self.encoding.index_dims

    def output_size(self) -> int:
        """`output_channels`."""
        return self.output_channels

    def __call__(self, batch_size: int, *, pos: jax.Array | np.ndarray | None = None) -> jax.Array:
        """The wrapped encoding's features `(B, N, C_in)` projected to `(B, N, output_channels)`."""
        return self._project(self.encoding(batch_size, pos=pos))

    def for_grid(self, batch_size: int, index_dims: Sequence[int], *, interpolate: bool = False) -> jax.Array:
        """The wrapped encoding's features of the grid `index_dims`, projected (a learned table is resized
        before the projection, as in HF)."""
        return self._project(self.encoding.for_grid(batch_size, index_dims, interpolate=interpolate))

    def _project(self, features: jax.Array) -> jax.Array:
        return constrain(self.positions_projection(features), BATCH, LENGTH, ACT_EMBED)
