"""`PerceiverModel`: preprocessor -> encoder -> decoder -> postprocessor, each optional but the encoder."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.encoder import PerceiverEncoder

Dtype = Any


class PerceiverModel(nn.Module):
    """Perceiver IO: inputs are cross-attended into latents, processed, and decoded by output queries.

    Attributes:
      config: model hyper-parameters.
      input_preprocessor: raw inputs -> `(B, M, C)` (None: inputs are already `(B, M, d_model)`).
      decoder: latents -> outputs (None: return the latents).
      output_postprocessor: decoder outputs -> task outputs (optional).
      remat: rematerialisation policy of the encoder's self-attention layers (see `REMAT_POLICIES`).
      attention_implementation: 'xla' or 'cudnn' (see `perceiver_jax.attention`).
    """

    config: PerceiverConfig
    input_preprocessor: nn.Module | None = None
    decoder: nn.Module | None = None
    output_postprocessor: nn.Module | None = None
    remat: str = "none"
    attention_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs: Any,
        attention_mask: jax.Array | None = None,
        subsampled_output_points: Mapping[str, jax.Array] | None = None,
        deterministic: bool = True,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[Any, jax.Array]:
        """Runs the model.

        Args:
          inputs: what the preprocessor takes (token ids `(B, T)`, images `(B, H, W, C)`, ...), or
            `(B, M, d_model)` features without a preprocessor.
          attention_mask: `(B, M)`, 1 for real tokens and 0 for padding (encoder cross-attention only).
          subsampled_output_points: decode only these output points (multimodal decoding).
          deterministic: no dropout when True; else a 'dropout' RNG is needed.
          interpolate_pos_encoding: resize learned image position tables to the input size.

        Returns:
          `(outputs, latents)`: the decoder (and postprocessor) outputs, None without a decoder, and the
          final latents `(B, N, D)`.
        """
        modality_sizes, inputs_without_pos = None, None
        if self.input_preprocessor is not None:
            inputs, modality_sizes, inputs_without_pos = self.input_preprocessor(
                inputs, interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
            )
        elif inputs.ndim != 3 or inputs.shape[-1] != self.config.d_model:
            raise ValueError(
                f"without a preprocessor, inputs must be (batch, length, d_model={self.config.d_model}); "
                f"got {inputs.shape}."
            )
        batch_size, length = inputs.shape[0], inputs.shape[1]
        if attention_mask is not None and attention_mask.shape != (batch_size, length):
            raise ValueError(
                f"attention_mask has shape {attention_mask.shape}; expected (batch, length) = "
                f"{(batch_size, length)} to match the preprocessed inputs."
            )
        latents = PerceiverEncoder(
            self.config,
            self.remat,
            self.attention_implementation,
            self.dtype,
            self.param_dtype,
            name="encoder",
        )(inputs, attention_mask, deterministic)
        if self.decoder is None:
            return None, latents
        query = self.decoder.decoder_query(
            inputs, modality_sizes, inputs_without_pos, subsampled_points=subsampled_output_points
        )
        outputs = self.decoder(query, latents, deterministic)
        if self.output_postprocessor is not None:
            # A multimodal decoder counts its output points per modality (HF: the subsampled counts and
            # label 1); other postprocessors take the preprocessor's modality sizes.
            output_sizes = getattr(self.decoder, "output_modality_sizes", None)
            if output_sizes is not None:
                modality_sizes = output_sizes(subsampled_output_points)
            outputs = self.output_postprocessor(outputs, modality_sizes=modality_sizes)
        return outputs, latents
