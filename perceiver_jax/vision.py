"""Image modules, channels-last: space-to-depth, the conv stem and HF's `PerceiverImagePreprocessor`.

HF works on `(B, C, H, W)` images and `(B, T, C, H, W)` videos; these modules take `(B, H, W, C)` and
`(B, T, H, W, C)` and produce the same tokens in the same order (row-major over (T,) H, W, with the channels
of a space-to-depth block ordered as HF's), so HF weights convert without permutation.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.attention import dense
from perceiver_jax.position_encoding import (
    FourierPositionEncoding,
    PositionEncoding,
    TrainablePositionEncoding,
)
from perceiver_jax.sharding import CONV_SPATIAL, EMBED, partitioned

Dtype = Any

PREP_TYPES = ("conv", "conv1x1", "patches", "pixels")


def space_to_depth(frames: jax.Array, temporal_block_size: int = 1, spatial_block_size: int = 1) -> jax.Array:
    """Moves blocks of pixels (and frames) into the channels, as HF's `space_to_depth`, channels-last.

    Images `(B, H, W, C)` -> `(B, H/s, W/s, s*s*C)`; videos `(B, T, H, W, C)` -> `(B, T/t, H/s, W/s,
    t*s*s*C)`, with s = `spatial_block_size`, t = `temporal_block_size`. A block's channels are ordered
    (frame, row, column, channel), HF's order.
    """
    s, t = spatial_block_size, temporal_block_size
    if frames.ndim not in (4, 5):
        raise ValueError(
            "space_to_depth takes images (batch, height, width, channels) or videos (batch, time, height, "
            f"width, channels); got shape {frames.shape}."
        )
    batch, height, width, channels = frames.shape[0], *frames.shape[-3:]
    time = frames.shape[1] if frames.ndim == 5 else 1
    if height % s or width % s or (frames.ndim == 5 and time % t):
        raise ValueError(
            f"space_to_depth blocks (time {t}, space {s}x{s}) must divide the input's (time,) height and "
            f"width; got shape {frames.shape}."
        )
    if frames.ndim == 4:
        blocks = frames.reshape(batch, height // s, s, width // s, s, channels)
        blocks = blocks.transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(batch, height // s, width // s, s * s * channels)
    blocks = frames.reshape(batch, time // t, t, height // s, s, width // s, s, channels)
    blocks = blocks.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return blocks.reshape(batch, time // t, height // s, width // s, t * s * s * channels)


class BatchNorm(nn.Module):
    """torch's `BatchNorm2d` on the last axis: parameters `scale`, `bias`; `batch_stats` `mean`, `var`.

    Inference normalises with the running statistics. Training normalises with the batch's (biased)
    statistics and updates the running ones as torch does, including the unbiased variance
    `var * n / (n - 1)` (which `flax.linen.BatchNorm` does not use): `new = momentum * old +
    (1 - momentum) * batch` (flax momentum 0.9 = torch momentum 0.1).

    Attributes:
      momentum: weight of the old running statistics.
      epsilon: added to the variance.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool = True) -> jax.Array:
        """`x` `(..., C)` -> `(..., C)`; statistics over every axis but the last."""
        features = x.shape[-1]
        scale = self.param(
            "scale", partitioned(jax.nn.initializers.ones, EMBED), (features,), self.param_dtype
        )
        bias = self.param(
            "bias", partitioned(jax.nn.initializers.zeros, EMBED), (features,), self.param_dtype
        )
        zeros = partitioned(lambda shape: jnp.zeros(shape, jnp.float32), EMBED)
        ones = partitioned(lambda shape: jnp.ones(shape, jnp.float32), EMBED)
        running_mean = self.variable("batch_stats", "mean", zeros, (features,))
        running_var = self.variable("batch_stats", "var", ones, (features,))
        x32 = x.astype(jnp.float32)
        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        return (y + bias.astype(jnp.float32)).astype(self.dtype)


class Conv2DDownsample(nn.Module):
    """HF's conv stem, 4x downsampling: `(B, H, W, C)` -> `(B, H', W', out_channels)`.

    A 7x7 stride-2 convolution `conv` padded by 3 on every side, without bias; `batchnorm` (see
    `BatchNorm`); ReLU; a 3x3 stride-2 max-pool without padding (224 px -> 112 -> 55). HF's `num_layers`
    argument is ignored by HF (always one conv and one pool), so there is none here.

    Attributes:
      out_channels: channels of the convolution.
      use_batchnorm: apply `batchnorm` after the convolution.
      init_std: std of the convolution kernel's normal initialiser.
    """

    out_channels: int = 64
    use_batchnorm: bool = True
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        """`x` `(B, H, W, C)` -> `(B, H', W', out_channels)`.

        With `deterministic=False` the batch norm uses batch statistics and updates `batch_stats`
        (apply with `mutable=['batch_stats']`).
        """
        x = nn.Conv(
            self.out_channels,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=partitioned(
                jax.nn.initializers.normal(self.init_std), CONV_SPATIAL, CONV_SPATIAL, None, EMBED
            ),
            name="conv",
        )(x)
        if self.use_batchnorm:
            x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="batchnorm")(
                x, use_running_average=deterministic
            )
        x = nn.relu(x)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class ImagePreprocessor(nn.Module):
    """HF's `PerceiverImagePreprocessor`: images or videos -> tokens with position encodings.

    Featurisation (`prep_type`):
      'conv': the `Conv2DDownsample` stem `convnet` (4x downsampling whatever `spatial_downsample`, which
        must be a power of 4, as HF checks); images only.
      'conv1x1': a 1x1 convolution `convnet_1x1` (with bias) of stride `spatial_downsample`; images only.
      'pixels': the raw values, subsampled every `spatial_downsample` pixels (and `temporal_downsample`
        frames). HF slices the batch and channel axes of 4-D inputs instead (a bug, harmless at 1, the
        only value its heads use); here the spatial axes are subsampled.
      'patches': `space_to_depth` by `temporal_downsample` x `spatial_downsample`^2 (a single remaining
        frame is squeezed, as for optical flow), then optionally the Dense `conv_after_patches`.
    The features are flattened to `(B, M, C)` (row-major over the index dims) and the position encoding
    (`position_embeddings`, optionally projected by the Dense `positions_projection`) is concatenated to
    or added to them.

    Attributes:
      position_embeddings: a `TrainablePositionEncoding` (a table of M positions, resized with torch's
        bicubic when `interpolate_pos_encoding`) or a `FourierPositionEncoding` of the index dims.
      prep_type: one of `PREP_TYPES`.
      spatial_downsample, temporal_downsample: see above.
      out_channels: channels of the convolutions and of `conv_after_patches`.
      conv_after_patching: apply `conv_after_patches` after space-to-depth.
      conv2d_use_batchnorm: batch norm in the 'conv' stem.
      concat_or_add_pos: 'concat' or 'add' the position encoding.
      project_pos_dim: if > 0, `positions_projection` maps the position encoding to this width.
      init_std: std of the normal initialiser of kernels.
    """

    position_embeddings: PositionEncoding
    prep_type: str = "conv"
    spatial_downsample: int = 4
    temporal_downsample: int = 1
    out_channels: int = 64
    conv_after_patching: bool = False
    conv2d_use_batchnorm: bool = True
    concat_or_add_pos: str = "concat"
    project_pos_dim: int = -1
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check_settings(self, inputs: jax.Array) -> None:
        if self.prep_type not in PREP_TYPES:
            raise ValueError(f"prep_type {self.prep_type!r} is not one of {PREP_TYPES}.")
        if self.concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"concat_or_add_pos must be 'concat' or 'add', got {self.concat_or_add_pos!r}.")
        if self.prep_type == "conv":
            layers = math.log(self.spatial_downsample, 4)
            if layers != round(layers) or self.temporal_downsample != 1:
                raise ValueError(
                    "prep_type='conv' needs spatial_downsample a power of 4 and temporal_downsample 1; got "
                    f"{self.spatial_downsample} and {self.temporal_downsample}."
                )
        if self.prep_type == "conv1x1" and self.temporal_downsample != 1:
            raise ValueError("prep_type='conv1x1' does not downsample in time; set temporal_downsample=1.")
        if self.prep_type in ("conv", "conv1x1") and inputs.ndim != 4:
            raise ValueError(
                f"prep_type={self.prep_type!r} takes images (batch, height, width, channels); got shape "
                f"{inputs.shape}."
            )
        if inputs.ndim not in (4, 5):
            raise ValueError(
                "image inputs must be (batch, height, width, channels) or (batch, time, height, width, "
                f"channels); got shape {inputs.shape}."
            )

    def _featurize(self, inputs: jax.Array, deterministic: bool) -> jax.Array:
        """Applies `prep_type`: `(B, [T,] H, W, C)` -> `(B, *index_dims, C')`."""
        s, t = self.spatial_downsample, self.temporal_downsample
        if self.prep_type == "conv":
            stem = Conv2DDownsample(
                self.out_channels,
                self.conv2d_use_batchnorm,
                self.init_std,
                self.dtype,
                self.param_dtype,
                name="convnet",
            )
            return stem(inputs, deterministic)
        if self.prep_type == "conv1x1":
            conv = nn.Conv(
                self.out_channels,
                (1, 1),
                strides=(s, s),
                padding="VALID",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=partitioned(
                    jax.nn.initializers.normal(self.init_std), CONV_SPATIAL, CONV_SPATIAL, None, EMBED
                ),
                bias_init=partitioned(jax.nn.initializers.zeros, EMBED),
                name="convnet_1x1",
            )
            return conv(inputs)
        if self.prep_type == "pixels":
            return inputs[:, ::s, ::s] if inputs.ndim == 4 else inputs[:, ::t, ::s, ::s]
        patches = space_to_depth(inputs, t, s)
        if patches.ndim == 5 and patches.shape[1] == 1:
            patches = patches[:, 0]
        if self.conv_after_patching:
            args = (self.init_std, self.dtype, self.param_dtype, "conv_after_patches")
            patches = dense(self.out_channels, None, EMBED, *args)(patches)
        return patches

    def _position_encoding(
        self, index_dims: tuple[int, ...], batch_size: int, interpolate_pos_encoding: bool
    ) -> jax.Array:
        """`(B, prod(index_dims), C_pos)` position encodings of the featurised grid."""
        encoding = self.position_embeddings
        if isinstance(encoding, FourierPositionEncoding):
            return encoding(index_dims, batch_size)
        if not isinstance(encoding, TrainablePositionEncoding):
            raise TypeError(f"unsupported position encoding {type(encoding).__name__}.")
        table_size = int(np.prod(encoding.index_dims))
        if interpolate_pos_encoding:
            if len(index_dims) != 2:
                raise ValueError(
                    f"interpolate_pos_encoding resizes a 2-D table; the inputs have index dims {index_dims}."
                )
            return encoding(batch_size, interpolate_to=index_dims)
        if table_size != math.prod(index_dims):
            side = math.isqrt(table_size)
            grid = f" (a {side}x{side} grid)" if side * side == table_size else ""
            raise ValueError(
                f"the images give {'x'.join(map(str, index_dims))} = {math.prod(index_dims)} positions but the "
                f"learned position table has {table_size}{grid}: pass interpolate_pos_encoding=True to resize "
                "the table (torch bicubic, as HF), or resize the images to the size the table was trained for."
            )
        return encoding(batch_size)

    @nn.compact
    def __call__(
        self, inputs: jax.Array, interpolate_pos_encoding: bool = False, deterministic: bool = True
    ):
        """Preprocesses images `(B, H, W, C)` or videos `(B, T, H, W, C)`.

        Args:
          inputs: channels-last images or videos.
          interpolate_pos_encoding: resize a learned square position table to the featurised grid.
          deterministic: False: the 'conv' stem's batch norm uses and updates batch statistics (apply with `mutable=['batch_stats']`).

        Returns:
          `(tokens (B, M, C_in + C_pos) or (B, M, C_pos) when added, None, features without positions
          (B, M, C_in))`, M the number of featurised positions.
        """
        self._check_settings(inputs)
        features = self._featurize(inputs.astype(self.dtype), deterministic)
        batch_size, index_dims = features.shape[0], tuple(features.shape[1:-1])
        features = features.reshape(batch_size, math.prod(index_dims), features.shape[-1])
        pos = self._position_encoding(index_dims, batch_size, interpolate_pos_encoding)
        if self.project_pos_dim > 0:
            args = (self.init_std, self.dtype, self.param_dtype, "positions_projection")
            pos = dense(self.project_pos_dim, EMBED, EMBED, *args)(pos)
        pos = pos.astype(features.dtype)
        if self.concat_or_add_pos == "concat":
            return jnp.concatenate([features, pos], axis=-1), None, features
        return features + pos, None, features
