"""`PerceiverOutput`: what a model returns when asked for more than its logits (HF's
`PerceiverModelOutput`)."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class PerceiverOutput:
    """Outputs of a Perceiver (a pytree, so it passes through `jit`).

    Attributes:
      logits: the decoder (and postprocessor) outputs: a head's logits, or None without a decoder.
      last_hidden_state: the final latents `(B, N, D)`.
      hidden_states: with `output_hidden_states`, HF's tuple of latents `(B, N, D)`: the input of every
        self-attention layer and the output of every block, in order.
      attentions: with `output_attentions`, the self-attention probabilities `(B, H, N, N)` per layer.
      cross_attentions: with `output_attentions`, the encoder cross-attention's `(B, H, N, M)` and the
        decoder's `(B, H, O, N)` (when the decoder attends).
    """

    logits: Any = None
    last_hidden_state: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None
    cross_attentions: tuple[jax.Array, ...] | None = None
