"""Output postprocessors: decoder outputs -> task outputs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.attention import dense
from perceiver_jax.sharding import CLASSES, EMBED

Dtype = Any


class ClassificationPostprocessor(nn.Module):
    """Decoder output `(B, M, C)` -> class logits of the first query `(B, num_labels)` (Dense `classifier`)."""

    num_labels: int
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, modality_sizes=None) -> jax.Array:
        """`inputs` `(B, M, C)` -> `(B, num_labels)`."""
        logits = dense(
            self.num_labels, EMBED, CLASSES, self.init_std, self.dtype, self.param_dtype, "classifier"
        )
        return logits(inputs)[:, 0, :]


class ProjectionPostprocessor(nn.Module):
    """Projects the channels of the decoder output: `(B, M, C)` -> `(B, M, out_channels)`."""

    out_channels: int
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, modality_sizes=None) -> jax.Array:
        """`inputs` `(B, M, C)` -> `(B, M, out_channels)`."""
        proj = dense(
            self.out_channels, EMBED, CLASSES, self.init_std, self.dtype, self.param_dtype, "classifier"
        )
        return proj(inputs)
