"""Task heads: a `PerceiverModel` (submodule `perceiver`) wired with the preprocessor and decoder of each
HF head class, so parameter names mirror HF's state dict.

Every head takes `(config, dtype, param_dtype, remat, attention_implementation)` and its `__call__`
returns the logits (float32), inference by default (`deterministic=True`, no RNG needed).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.decoders import BasicDecoder, ClassificationDecoder, EmbeddingDecoder
from perceiver_jax.model import PerceiverModel
from perceiver_jax.position_encoding import TrainablePositionEncoding
from perceiver_jax.preprocessors import TextPreprocessor

Dtype = Any


class PerceiverHead(nn.Module):
    """Fields shared by all heads; subclasses define `setup` and `__call__`."""

    config: PerceiverConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"
    attention_implementation: str = "xla"

    def _perceiver(self, **modules) -> PerceiverModel:
        """A `PerceiverModel` named `perceiver` with this head's settings and the given modules."""
        return PerceiverModel(
            self.config,
            remat=self.remat,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="perceiver",
            **modules,
        )

    def example_inputs(self, batch_size: int = 1) -> tuple[Any, ...]:
        """Positional inputs of the right shapes and dtypes for `init` (and shape inference)."""
        raise NotImplementedError

    def _text_preprocessor(self) -> TextPreprocessor:
        cfg = self.config
        return TextPreprocessor(
            cfg.vocab_size,
            cfg.d_model,
            cfg.max_position_embeddings,
            cfg.initializer_range,
            self.dtype,
            self.param_dtype,
        )

    def _classification_decoder(self) -> ClassificationDecoder:
        """HF's `PerceiverClassificationDecoder`: one learned query of width d_latents."""
        cfg = self.config
        return ClassificationDecoder(
            BasicDecoder(
                cfg,
                output_num_channels=cfg.num_labels,
                output_position_encodings=TrainablePositionEncoding(
                    1, cfg.d_latents, cfg.initializer_range, self.dtype, self.param_dtype
                ),
                output_index_dims=(1,),
                num_channels=cfg.d_latents,
                num_heads=cfg.classification_decoder_num_heads,
                widening_factor=cfg.classification_decoder_widening_factor,
                use_query_residual=cfg.classification_decoder_use_query_residual,
                attention_implementation=self.attention_implementation,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        )


class _TextHead(PerceiverHead):
    """A head whose inputs are token ids `(B, T)`."""

    def example_inputs(self, batch_size: int = 1) -> tuple[Any, ...]:
        """Token ids `(batch_size, min(8, max_position_embeddings))` of zeros."""
        return (jnp.zeros((batch_size, min(8, self.config.max_position_embeddings)), jnp.int32),)


class PerceiverForMaskedLM(_TextHead):
    """Byte-level masked language model (HF `PerceiverForMaskedLM`, `deepmind/language-perceiver`).

    `mlm_num_queries` learned decoder queries (default max_position_embeddings, whatever the input
    length) attend to the latents; logits use the input embedding table (tied) plus a bias.
    """

    def setup(self):
        cfg = self.config
        v_channels = cfg.mlm_decoder_v_channels or cfg.d_model
        for name, width in (
            ("mlm_decoder_qk_channels", cfg.mlm_decoder_qk_channels),
            ("mlm_decoder_v_channels (d_model when None)", v_channels),
        ):
            if width % cfg.mlm_decoder_num_heads:
                raise ValueError(
                    f"PerceiverConfig.{name}={width} must be divisible by "
                    f"mlm_decoder_num_heads={cfg.mlm_decoder_num_heads}."
                )
        decoder = BasicDecoder(
            cfg,
            output_num_channels=cfg.d_latents,
            output_position_encodings=TrainablePositionEncoding(
                cfg.mlm_num_queries, cfg.d_model, cfg.initializer_range, self.dtype, self.param_dtype
            ),
            output_index_dims=(cfg.mlm_num_queries,),
            num_channels=cfg.d_model,
            qk_channels=cfg.mlm_decoder_qk_channels,
            v_channels=v_channels,
            num_heads=cfg.mlm_decoder_num_heads,
            widening_factor=cfg.mlm_decoder_widening_factor,
            use_query_residual=cfg.mlm_decoder_use_query_residual,
            final_project=False,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.perceiver = self._perceiver(input_preprocessor=self._text_preprocessor(), decoder=decoder)
        self.embedding_decoder = EmbeddingDecoder(cfg.vocab_size, self.dtype, self.param_dtype)

    def __call__(
        self, inputs: jax.Array, attention_mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        """Token ids `(B, T)`, `attention_mask` `(B, T)` -> logits `(B, mlm_num_queries, vocab_size)`."""
        hidden, _ = self.perceiver(inputs, attention_mask, deterministic=deterministic)
        table = self.perceiver.input_preprocessor.embeddings.embedding
        return self.embedding_decoder(hidden, table).astype(jnp.float32)


class PerceiverForSequenceClassification(_TextHead):
    """Text classifier (HF `PerceiverForSequenceClassification`): one learned query decodes the logits."""

    def setup(self):
        self.perceiver = self._perceiver(
            input_preprocessor=self._text_preprocessor(), decoder=self._classification_decoder()
        )

    def __call__(
        self, inputs: jax.Array, attention_mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        """Token ids `(B, T)`, `attention_mask` `(B, T)` -> logits `(B, num_labels)`."""
        logits, _ = self.perceiver(inputs, attention_mask, deterministic=deterministic)
        return logits.astype(jnp.float32)


# HF architecture name -> head class; the vision, flow and multimodal heads register here too.
HEADS: dict[str, type[PerceiverHead]] = {
    "PerceiverForMaskedLM": PerceiverForMaskedLM,
    "PerceiverForSequenceClassification": PerceiverForSequenceClassification,
}
