"""`PerceiverModel`: preprocessor -> encoder -> decoder -> postprocessor, each optional but the encoder."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
from flax import struct

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.decoders import Decoder
from perceiver_jax.encoder import PerceiverEncoder
from perceiver_jax.outputs import PerceiverOutput
from perceiver_jax.postprocessors import Postprocessor
from perceiver_jax.preprocessors import Preprocessor
from perceiver_jax.settings import Settings
from perceiver_jax.sharding import ACT_EMBED, BATCH, LENGTH, constrain


@struct.dataclass
class Encoded:
    """What `PerceiverModel.encode` hands to `decode`: the encoder's output (latents and what was asked
    for), the preprocessed inputs `(B, M, C)`, their per-modality sizes and features without positions."""

    output: PerceiverOutput
    inputs: jax.Array
    inputs_without_pos: Any = None
    modality_sizes: Mapping[str, int] | None = struct.field(pytree_node=False, default=None)


class PerceiverModel(nn.Module, kw_only=True):
    """Perceiver IO: inputs are cross-attended into latents, processed, and decoded by output queries.

    Every part is called through its role's interface (`Preprocessor`, `Decoder`, `Postprocessor`), so any
    subclass of those plugs in. `__call__` is `decode(encode(...))`; the two halves can be called apart
    (e.g. to decode one encoding at several sets of output points).

    Attributes:
      config: model hyper-parameters.
      input_preprocessor: raw inputs -> `(B, M, C)` (None: inputs are already `(B, M, d_model)`).
      decoder: latents -> outputs (None: return the latents).
      output_postprocessor: decoder outputs -> task outputs (optional).
    """

    config: PerceiverConfig
    input_preprocessor: Preprocessor | None = None
    decoder: Decoder | None = None
    output_postprocessor: Postprocessor | None = None
    settings: Settings = Settings()

    def setup(self):
        self.encoder = PerceiverEncoder(config=self.config, settings=self.settings)

    def encode(
        self,
        inputs: Any,
        *,
        attention_mask: jax.Array | None = None,
        deterministic: bool = True,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Encoded:
        """Preprocesses `inputs` and encodes them into latents (see `__call__`)."""
        modality_sizes = inputs_without_pos = None
        if self.input_preprocessor is not None:
            inputs, modality_sizes, inputs_without_pos = self.input_preprocessor(
                inputs, interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
            )
        elif inputs.ndim != 3 or inputs.shape[-1] != self.config.d_model:
            raise ValueError(
                f"without a preprocessor, inputs must be (batch, length, d_model={self.config.d_model}); "
                f"got {inputs.shape}."
            )
        inputs = constrain(inputs, BATCH, LENGTH, ACT_EMBED)
        batch_size, length = inputs.shape[0], inputs.shape[1]
        if attention_mask is not None and attention_mask.shape != (batch_size, length):
            raise ValueError(
                f"attention_mask has shape {attention_mask.shape}; expected (batch, length) = "
                f"{(batch_size, length)} to match the preprocessed inputs."
            )
        output = self.encoder(
            inputs,
            inputs_mask=attention_mask,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return Encoded(output, inputs, inputs_without_pos, modality_sizes)

    def decode(
        self,
        encoded: Encoded,
        *,
        subsampled_output_points: Mapping[str, Any] | Any | None = None,
        deterministic: bool = True,
        output_attentions: bool = False,
    ) -> PerceiverOutput:
        """Decodes the latents of `encoded` (at `subsampled_output_points`, else every output point) and
        postprocesses them (see `__call__`)."""
        if self.decoder is None:
            return encoded.output
        inputs, modality_sizes = encoded.inputs, encoded.modality_sizes
        _, output_sizes = self.decoder.output_shape(inputs, subsampled_output_points)
        query = self.decoder.decoder_query(
            inputs, modality_sizes, encoded.inputs_without_pos, subsampled_points=subsampled_output_points
        )
        latents = encoded.output.last_hidden_state
        outputs, probs = self.decoder(
            query, latents, deterministic=deterministic, output_attentions=output_attentions
        )
        if self.output_postprocessor is not None:
            outputs = self.output_postprocessor(outputs, modality_sizes=output_sizes or modality_sizes)
        cross_attentions = encoded.output.cross_attentions
        if output_attentions and probs is not None:
            cross_attentions = cross_attentions + (probs,)
        return encoded.output.replace(logits=outputs, cross_attentions=cross_attentions)

    def __call__(
        self,
        inputs: Any,
        *,
        attention_mask: jax.Array | None = None,
        subsampled_output_points: Mapping[str, Any] | Any | None = None,
        deterministic: bool = True,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> PerceiverOutput:
        """Runs the model.

        Args:
          inputs: what the preprocessor takes (token ids `(B, T)`, images `(B, H, W, C)`, ...), or
            `(B, M, d_model)` features without a preprocessor.
          attention_mask: `(B, M)`, 1 for real tokens and 0 for padding (encoder cross-attention only).
          subsampled_output_points: decode only these output points (see the decoder).
          deterministic: no dropout (and running batch statistics) when True; else a 'dropout' RNG is needed.
          interpolate_pos_encoding: resize learned position tables to the input size.
          output_hidden_states, output_attentions: also return HF's per-layer latents / attention maps.

        Returns:
          A `PerceiverOutput`: `logits` the decoder (and postprocessor) outputs (None without a decoder),
          `last_hidden_state` the final latents `(B, N, D)`, and what was asked for.
        """
        flags = dict(deterministic=deterministic, output_attentions=output_attentions)
        encoded = self.encode(
            inputs,
            attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            **flags,
        )
        return self.decode(encoded, subsampled_output_points=subsampled_output_points, **flags)
