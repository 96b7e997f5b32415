"""Input preprocessors: raw inputs -> `(B, M, C)` arrays the encoder cross-attends to.

`Preprocessor` is the interface (HF's `AbstractPreprocessor`): `num_channels()` gives C, and
`__call__(inputs, *, interpolate_pos_encoding=False, deterministic=True)` returns `(inputs,
modality_sizes, inputs_without_pos)`: the encoder input, the per-modality token counts (multimodal only,
else None) and the features before position encodings (for decoders that concatenate the preprocessed
input to their queries). `interpolate_pos_encoding` matters only where a learned position table can be
resized, `deterministic` only where a preprocessor trains batch statistics. Image and multimodal
preprocessors are in `perceiver_jax.vision` and `perceiver_jax.multimodal`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.settings import Settings
from perceiver_jax.sharding import ACT_EMBED, BATCH, EMBED, LENGTH, POSITIONS, VOCAB, constrain, partitioned


class Preprocessor(nn.Module):
    """Interface of input preprocessors (abstract); see the module docstring."""

    def num_channels(self) -> int:
        """C, the width of the preprocessed inputs."""
        raise NotImplementedError

    def __call__(
        self, inputs: Any, *, interpolate_pos_encoding: bool = False, deterministic: bool = True
    ) -> tuple[jax.Array, dict[str, int] | None, Any]:
        """Raw `inputs` -> `(tokens (B, M, C), modality_sizes, features without positions)`."""
        raise NotImplementedError


def no_interpolation(module: nn.Module, interpolate_pos_encoding: bool) -> None:
    """Raises ValueError when `interpolate_pos_encoding` is asked of `module`, which has no table to
    resize."""
    if interpolate_pos_encoding:
        raise ValueError(f"{type(module).__name__} has no learned position table to interpolate.")


class TextPreprocessor(Preprocessor, kw_only=True):
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
    settings: Settings = Settings()

    def setup(self):
        init = jax.nn.initializers.normal(self.init_std)

        def table(rows, row_axis):
            return nn.Embed(
                rows,
                self.d_model,
                dtype=self.settings.dtype,
                param_dtype=self.settings.param_dtype,
                embedding_init=partitioned(init, row_axis, EMBED),
            )

        self.embeddings = table(self.vocab_size, VOCAB)
        self.position_embeddings = table(self.max_position_embeddings, POSITIONS)

    def num_channels(self) -> int:
        """C = d_model."""
        return self.d_model

    def __call__(
        self, inputs: jax.Array, *, interpolate_pos_encoding: bool = False, deterministic: bool = True
    ):
        """`inputs` int `(B, T)` -> (`(B, T, C)`, None, embeddings without positions `(B, T, C)`)."""
        no_interpolation(self, interpolate_pos_encoding)

        def lookup(table, ids):
            # The tables are small (262 bytes x d_model): gathered whole under a mesh (not split over the
            # vocabulary / fsdp as stored), so the lookup is local and its output split with the batch.
            return jnp.take(constrain(table, None, None), ids, axis=0).astype(self.settings.dtype)

        embeddings = constrain(lookup(self.embeddings.embedding, inputs), BATCH, LENGTH, ACT_EMBED)
        positions = lookup(self.position_embeddings.embedding, jnp.arange(inputs.shape[1]))
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
    concrete = isinstance(inputs, (np.ndarray, jax.Array)) and not isinstance(inputs, jax.core.Tracer)
    if concrete and inputs.size:
        values = np.asarray(inputs)  # host copy: np.min of a jax array would trace under an outer jit
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must be in [0, {vocab_size}); got values in [{low}, {high}].")


class OneHotPreprocessor(Preprocessor, kw_only=True):
    """One-hot (or any per-example) vectors `(B, C)` -> a single input token `(B, 1, C)`.

    Attributes:
      channels: C.
    """

    channels: int

    def num_channels(self) -> int:
        """C."""
        return self.channels

    def __call__(
        self, inputs: jax.Array, *, interpolate_pos_encoding: bool = False, deterministic: bool = True
    ):
        """`inputs` `(B, C)` -> (`(B, 1, C)`, None, `(B, 1, C)`)."""
        no_interpolation(self, interpolate_pos_encoding)
        inputs = inputs[:, None, :]
        return inputs, None, inputs
