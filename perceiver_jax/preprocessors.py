"""Input preprocessors: raw inputs -> `(B, M, C)` arrays the encoder cross-attends to.

Every preprocessor is called as `(inputs, interpolate_pos_encoding=False, deterministic=True)` (the
last two matter only where a preprocessor has a learned table or trains batch statistics) and returns `(inputs, modality_sizes, inputs_without_pos)` like HF's: the encoder input,
the per-modality token counts (multimodal only, else None) and the features before position encodings
(used by decoders that concatenate the preprocessed input to their queries).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.sharding import EMBED, POSITIONS, VOCAB, partitioned

Dtype = Any


class TextPreprocessor(nn.Module):
    """Token ids `(B, T)` -> token embeddings + learned absolute position embeddings `(B, T, d_model)`.

    Attributes:
      vocab_size: V, rows of the token table (parameter `embeddings/embedding`, tied to the MLM output).
      d_model: C, embedding width.
      max_position_embeddings: rows of the position table; T may not exceed it.
      init_std: std of the normal initialiser.
    """

    vocab_size: int
    d_model: int
    max_position_embeddings: int
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        init = jax.nn.initializers.normal(self.init_std)
        self.embeddings = nn.Embed(
            self.vocab_size,
            self.d_model,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=partitioned(init, VOCAB, EMBED),
        )
        self.position_embeddings = nn.Embed(
            self.max_position_embeddings,
            self.d_model,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=partitioned(init, POSITIONS, EMBED),
        )

    def num_channels(self) -> int:
        """C, the width of the preprocessed inputs."""
        return self.d_model

    def __call__(self, inputs: jax.Array, interpolate_pos_encoding: bool = False, deterministic: bool = True):
        """`inputs` int `(B, T)` -> (`(B, T, C)`, None, embeddings without positions `(B, T, C)`)."""
        check_token_ids(inputs, self.vocab_size, self.max_position_embeddings)
        embeddings = self.embeddings(inputs)
        positions = self.position_embeddings(jnp.arange(inputs.shape[1]))
        return embeddings + positions[None], None, embeddings


def check_token_ids(inputs: jax.Array, vocab_size: int, max_length: int) -> None:
    """Raises ValueError/TypeError unless `inputs` is an integer `(B, T)` array with T <= `max_length`
    and (when its values are known, i.e. outside `jit`) every id in `[0, vocab_size)`."""
    if inputs.ndim != 2:
        raise ValueError(f"token ids must have shape (batch, length); got shape {inputs.shape}.")
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
        raise TypeError(f"token ids must be integers; got dtype {inputs.dtype}.")
    if inputs.shape[1] > max_length:
        raise ValueError(
            f"sequence length {inputs.shape[1]} exceeds max_position_embeddings={max_length}; "
            "truncate the inputs or use a config with more positions."
        )
    if not isinstance(inputs, jax.core.Tracer) and inputs.size:
        values = np.asarray(inputs)  # host copy: np.min of a jax array would trace under an outer jit
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must be in [0, {vocab_size}); got values in [{low}, {high}].")


class OneHotPreprocessor(nn.Module):
    """One-hot (or any per-example) vectors `(B, C)` -> a single input token `(B, 1, C)`."""

    def __call__(self, inputs: jax.Array, interpolate_pos_encoding: bool = False, deterministic: bool = True):
        """`inputs` `(B, C)` -> (`(B, 1, C)`, None, `(B, 1, C)`)."""
        if inputs.ndim != 2:
            raise ValueError(f"one-hot inputs must have shape (batch, channels); got {inputs.shape}.")
        inputs = inputs[:, None, :]
        return inputs, None, inputs
