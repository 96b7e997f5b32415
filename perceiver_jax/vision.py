"""Image modules, channels-last: space-to-depth, the conv stem and HF's `PerceiverImagePreprocessor`.

HF works on `(B, C, H, W)` images and `(B, T, C, H, W)` videos; these modules take `(B, H, W, C)` and
`(B, T, H, W, C)` and produce the same tokens in the same order (row-major over (T,) H, W, with the channels
of a space-to-depth block ordered as HF's), so HF weights convert without permutation.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.attention import dense
from perceiver_jax.position_encoding import PositionEncoding
from perceiver_jax.preprocessors import Preprocessor
from perceiver_jax.settings import Settings
from perceiver_jax.sharding import (
    ACT_EMBED,
    BATCH,
    CONV_HEIGHT,
    CONV_WIDTH,
    EMBED,
    LENGTH,
    constrain,
    partitioned,
)

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


class BatchNorm(nn.Module, kw_only=True):
    """torch's `BatchNorm2d` on the last axis: parameters `scale`, `bias`; `batch_stats` `mean`, `var`
    and `num_batches_tracked` (int32, the training steps seen, as torch counts them).

    Inference normalises with the running statistics. Training normalises with the batch's (biased)
    statistics and updates the running ones as torch does, including the unbiased variance
    `var * n / (n - 1)` (which `flax.linen.BatchNorm` does not use): `new = momentum * old +
    (1 - momentum) * batch` (flax momentum 0.9 = torch momentum 0.1). Under a mesh the statistics are
    those of the global batch (the mean over a batch-sharded array is a cross-device mean).

    Attributes:
      momentum: weight of the old running statistics.
      epsilon: added to the variance.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool = True) -> jax.Array:
        """`x` `(..., C)` -> `(..., C)`; statistics over every axis but the last."""
        features = x.shape[-1]
        param_dtype = self.settings.param_dtype
        scale = self.param("scale", partitioned(jax.nn.initializers.ones, EMBED), (features,), param_dtype)
        bias = self.param("bias", partitioned(jax.nn.initializers.zeros, EMBED), (features,), param_dtype)
        zeros = partitioned(lambda shape: jnp.zeros(shape, jnp.float32), EMBED)
        ones = partitioned(lambda shape: jnp.ones(shape, jnp.float32), EMBED)
        running_mean = self.variable("batch_stats", "mean", zeros, (features,))
        running_var = self.variable("batch_stats", "var", ones, (features,))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
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
                count.value = count.value + 1
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        return (y + bias.astype(jnp.float32)).astype(self.settings.dtype)


class Conv2DDownsample(nn.Module, kw_only=True):
    """HF's conv stem: `(B, H, W, C)` -> `(B, H', W', out_channels)` (4x downsampling with HF's values).

    A `kernel_size` convolution `conv` of `stride`, zero-padded by `padding` on every side, without bias;
    `batchnorm` (see `BatchNorm`); ReLU; a `pool_size` max-pool of `pool_stride` without padding. HF's
    values: 7x7 stride 2 padding 3, 3x3 stride-2 pool (224 px -> 112 -> 55). HF's `num_layers` argument
    is ignored by HF (always one conv and one pool), so there is none here.

    Attributes:
      out_channels: channels of the convolution.
      kernel_size, stride, padding: the convolution.
      pool_size, pool_stride: the max-pool.
      use_batchnorm: apply `batchnorm` after the convolution.
      batchnorm_momentum, batchnorm_eps: the `BatchNorm`.
      init_std: std of the convolution kernel's normal initialiser.
    """

    out_channels: int = 64
    kernel_size: int = 7
    stride: int = 2
    padding: int = 3
    pool_size: int = 3
    pool_stride: int = 2
    use_batchnorm: bool = True
    batchnorm_momentum: float = 0.9
    batchnorm_eps: float = 1e-5
    init_std: float = 0.02
    settings: Settings = Settings()

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the features of a `height` x `width` image (at least `min_input_size()` a side)."""

        def side(n):
            conv = (n + 2 * self.padding - self.kernel_size) // self.stride + 1
            return (conv - self.pool_size) // self.pool_stride + 1

        return side(height), side(width)

    def min_input_size(self) -> int:
        """The smallest image side that leaves a pixel after the convolution and the pool."""
        return max((self.pool_size - 1) * self.stride + self.kernel_size - 2 * self.padding, 1)

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """`x` `(B, H, W, C)` -> `(B, H', W', out_channels)`.

        With `deterministic=False` the batch norm uses batch statistics and updates `batch_stats`
        (apply with `mutable=['batch_stats']`).
        """
        k, p = self.kernel_size, self.padding
        x = nn.Conv(
            self.out_channels,
            (k, k),
            strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            use_bias=False,
            dtype=self.settings.dtype,
            param_dtype=self.settings.param_dtype,
            kernel_init=partitioned(
                jax.nn.initializers.normal(self.init_std), CONV_HEIGHT, CONV_WIDTH, None, EMBED
            ),
            name="conv",
        )(x)
        x = constrain(x, BATCH, None, None, ACT_EMBED)
        if self.use_batchnorm:
            norm = BatchNorm(
                momentum=self.batchnorm_momentum,
                epsilon=self.batchnorm_eps,
                settings=self.settings,
                name="batchnorm",
            )
            x = norm(x, use_running_average=deterministic)
        x = nn.relu(x)
        window, stride = (self.pool_size,) * 2, (self.pool_stride,) * 2
        return nn.max_pool(x, window, strides=stride, padding="VALID")


class ImagePreprocessor(Preprocessor, kw_only=True):
    """HF's `PerceiverImagePreprocessor`: images or videos -> tokens with position encodings.

    Featurisation (`prep_type`):
      'conv': the `Conv2DDownsample` stem `convnet` (`spatial_downsample` must be a power of 4, as HF
        checks, and is otherwise unused, as in HF); images only.
      'conv1x1': a 1x1 convolution `convnet_1x1` (with bias) of stride `spatial_downsample`; images only.
      'pixels': the raw values, subsampled every `spatial_downsample` pixels (and `temporal_downsample`
        frames). HF slices the batch and channel axes of 4-D inputs instead (a bug, harmless at 1, the
        only value its heads use); here the spatial axes are subsampled.
      'patches': `space_to_depth` by `temporal_downsample` x `spatial_downsample`^2 (a single remaining
        frame is squeezed, as for optical flow), then optionally the Dense `conv_after_patches`.
    The features are flattened to `(B, M, C)` (row-major over the featurised grid) and the position
    encoding `position_embeddings` is concatenated to or added to them. A grid other than the encoding's
    `index_dims` is encoded at its own positions (`linspace(-1, 1)` per dimension: any size works with
    Fourier features); a learned table must match it, or be resized with `interpolate_pos_encoding`
    (torch bicubic, HF's behaviour).

    Attributes:
      position_embeddings: the position encoding (e.g. Fourier, or a learned table, possibly wrapped in a
        `PositionEncodingProjector`, HF's `project_pos_dim`).
      prep_type: one of `PREP_TYPES`.
      spatial_downsample, temporal_downsample: see above.
      out_channels: channels of the convolutions and of `conv_after_patches`.
      conv_after_patching: apply `conv_after_patches` after space-to-depth.
      convnet: the stem for 'conv' (default: HF's `Conv2DDownsample` of `out_channels`).
      in_channels: channels of the raw inputs (3 for RGB; 27 for the flow head's patches).
      concat_or_add_pos: 'concat' or 'add' the position encoding.
      init_std: std of the normal initialiser of kernels.
    """

    position_embeddings: PositionEncoding
    prep_type: str = "conv"
    spatial_downsample: int = 4
    temporal_downsample: int = 1
    out_channels: int = 64
    conv_after_patching: bool = False
    convnet: Conv2DDownsample | None = None
    in_channels: int = 3
    concat_or_add_pos: str = "concat"
    init_std: float = 0.02
    settings: Settings = Settings()

    def __post_init__(self):
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
        super().__post_init__()

    def num_channels(self) -> int:
        """C: the feature channels plus the position channels (concat), or the position channels (add)."""
        pos = self.position_embeddings.output_size()
        if self.concat_or_add_pos == "add":
            return pos
        s, t = self.spatial_downsample, self.temporal_downsample
        features = {
            "conv": self.out_channels,
            "conv1x1": self.out_channels,
            "pixels": self.in_channels,
            "patches": self.out_channels if self.conv_after_patching else t * s * s * self.in_channels,
        }[self.prep_type]
        return features + pos

    def _featurize(self, inputs: jax.Array, deterministic: bool) -> jax.Array:
        """Applies `prep_type`: `(B, [T,] H, W, C)` -> `(B, *grid, C')`."""
        s, t = self.spatial_downsample, self.temporal_downsample
        common = dict(init_std=self.init_std, settings=self.settings)
        if self.prep_type == "conv":
            stem = self.convnet or Conv2DDownsample(out_channels=self.out_channels, name="convnet", **common)
            return stem(inputs, deterministic=deterministic)
        if self.prep_type == "conv1x1":
            conv = nn.Conv(
                self.out_channels,
                (1, 1),
                strides=(s, s),
                padding="VALID",
                dtype=self.settings.dtype,
                param_dtype=self.settings.param_dtype,
                kernel_init=partitioned(
                    jax.nn.initializers.normal(self.init_std), CONV_HEIGHT, CONV_WIDTH, None, EMBED
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
            patches = dense(
                self.out_channels, in_axis=None, out_axis=EMBED, name="conv_after_patches", **common
            )(patches)
        return patches

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, interpolate_pos_encoding: bool = False, deterministic: bool = True
    ):
        """Preprocesses images `(B, H, W, C)` or videos `(B, T, H, W, C)`, channels last.

        Args:
          inputs: the images or videos ('conv' and 'conv1x1' take images only).
          interpolate_pos_encoding: resize a learned square position table to the featurised grid (Fourier
            features exist for any grid: it changes nothing for them, as in HF).
          deterministic: False: the 'conv' stem's batch norm uses and updates batch statistics (apply with
            `mutable=['batch_stats']`).

        Returns:
          `(tokens (B, M, C_in + C_pos) or (B, M, C_pos) when added, None, features without positions
          (B, M, C_in))`, M the number of featurised positions.
        """
        features = self._featurize(inputs.astype(self.settings.dtype), deterministic)
        batch_size, grid = features.shape[0], tuple(features.shape[1:-1])
        features = constrain(
            features.reshape(batch_size, math.prod(grid), features.shape[-1]), BATCH, LENGTH, ACT_EMBED
        )
        pos = self.position_embeddings.for_grid(batch_size, grid, interpolate=interpolate_pos_encoding)
        pos = pos.astype(features.dtype)
        if self.concat_or_add_pos == "concat":
            return jnp.concatenate([features, pos], axis=-1), None, features
        return features + pos, None, features
