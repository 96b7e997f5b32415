"""Decoders: decoder queries cross-attend to the latents and produce the outputs.

A decoder has two methods, as in HF and DeepMind's code: `decoder_query(...)` builds the `(B, O, Cq)`
queries (from position encodings, and optionally the preprocessed inputs), and `__call__(query, z)`
decodes the latents `z` `(B, N, D)` into `(B, O, C_out)`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.attention import CrossAttention, dense
from perceiver_jax.config import PerceiverConfig
from perceiver_jax.position_encoding import PositionEncoding, TrainablePositionEncoding
from perceiver_jax.sharding import CLASSES, EMBED, VOCAB, partitioned

Dtype = Any


class BasicDecoder(nn.Module):
    """Cross-attention decoder: queries built from a position encoding attend to the latents.

    Attributes:
      config: supplies dropout, norm eps and init std of the cross-attention.
      output_num_channels: width of the final projection (when `final_project`).
      output_position_encodings: the queries' position encoding (None: queries come from elsewhere).
      output_index_dims: index shape of the full query grid (for subsampled queries and Fourier grids).
      num_channels: query width Cq.
      project_pos_dim: if > 0, a Dense `positions_projection` maps the position encoding to this width.
      qk_channels, v_channels, num_heads, widening_factor, use_query_residual: the cross-attention.
      concat_preprocessed_input: prepend the preprocessed inputs (without positions) to the queries.
      final_project: apply the Dense `final_layer` Cq -> output_num_channels.
      position_encoding_only: only build queries (no cross-attention); used by the multimodal decoder.
      chunk_size: decode at most this many queries at a time (bounded memory; None: all at once).
    """

    config: PerceiverConfig
    output_num_channels: int
    output_position_encodings: PositionEncoding | None = None
    output_index_dims: tuple[int, ...] | None = None
    num_channels: int = 128
    project_pos_dim: int = -1
    qk_channels: int | None = None
    v_channels: int | None = None
    num_heads: int = 1
    widening_factor: int = 1
    use_query_residual: bool = False
    concat_preprocessed_input: bool = False
    final_project: bool = True
    position_encoding_only: bool = False
    chunk_size: int | None = None
    attention_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        if self.project_pos_dim > 0:
            self.positions_projection = dense(
                self.project_pos_dim,
                EMBED,
                EMBED,
                cfg.initializer_range,
                self.dtype,
                self.param_dtype,
                "positions_projection",
            )
        if not self.position_encoding_only:
            self.decoding_cross_attention = CrossAttention(
                num_heads=self.num_heads,
                qk_channels=self.qk_channels,
                v_channels=self.v_channels,
                widening_factor=self.widening_factor,
                use_query_residual=self.use_query_residual,
                # HF's decoder cross-attention defaults qk_channels like the encoder's (kv: d_latents).
                shape_for_attention=cfg.cross_attention_shape_for_attention,
                dropout_rate=cfg.attention_probs_dropout_prob,
                norm_eps=cfg.norm_eps,
                init_std=cfg.initializer_range,
                implementation=self.attention_implementation,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            if self.final_project:
                self.final_layer = dense(
                    self.output_num_channels,
                    EMBED,
                    CLASSES,
                    cfg.initializer_range,
                    self.dtype,
                    self.param_dtype,
                    "final_layer",
                )

    def num_query_channels(self) -> int:
        """Width of the queries this decoder builds."""
        if self.output_position_encodings is None:
            raise ValueError("a decoder without position encodings takes its queries from elsewhere.")
        if self.position_encoding_only:
            if self.project_pos_dim > 0:
                return self.project_pos_dim
            return self.output_position_encodings.output_size()
        return self.output_num_channels if self.final_project else self.num_channels

    def decoder_query(
        self,
        inputs: jax.Array,
        modality_sizes: Mapping[str, int] | None = None,
        inputs_without_pos: jax.Array | None = None,
        subsampled_points: jax.Array | None = None,
    ) -> jax.Array:
        """Queries `(B, O, Cq)` for encoder inputs `(B, ...)`.

        `subsampled_points` `(O,)` are flat indices into the `output_index_dims` grid: only those queries
        are built (Fourier encodings at coordinates `-1 + 2 * index / dim`, as HF).
        """
        if self.output_position_encodings is None:
            raise ValueError("cannot build decoder queries without output position encodings.")
        batch_size = inputs.shape[0]
        encoding = self.output_position_encodings
        if isinstance(encoding, TrainablePositionEncoding):
            pos_emb = encoding(batch_size)
        elif subsampled_points is not None:
            # Per-dimension tables of -1 + 2 * i / dim built on the host in float32, as torch computes them:
            # XLA turns a division by a constant into a multiplication by its reciprocal, 1 ulp off, which
            # the top Fourier frequencies amplify (audio: 1e-3 relative on the outputs).
            coords = jnp.unravel_index(subsampled_points, self.output_index_dims)
            tables = [
                np.float32(-1) + np.arange(0, 2 * d, 2, dtype=np.float32) / np.float32(d)
                for d in self.output_index_dims
            ]
            pos = jnp.stack([jnp.asarray(t)[c] for t, c in zip(tables, coords)], axis=1)
            pos = jnp.broadcast_to(pos[None], (batch_size,) + pos.shape)
            pos_emb = encoding(self.output_index_dims, batch_size, pos=pos)
        else:  # the full output grid (HF uses inputs.shape[2:], only reached by its crashing path)
            pos_emb = encoding(self.output_index_dims or inputs.shape[2:], batch_size)
        if self.project_pos_dim > 0:
            pos_emb = self.positions_projection(pos_emb)
        pos_emb = pos_emb.reshape(pos_emb.shape[0], -1, pos_emb.shape[-1])
        if self.concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError("concat_preprocessed_input=True needs inputs_without_pos.")
            pos_emb = jnp.concatenate([inputs_without_pos.astype(pos_emb.dtype), pos_emb], axis=-1)
        return pos_emb

    def __call__(self, query: jax.Array, z: jax.Array, deterministic: bool = True) -> jax.Array:
        """`query` `(B, O, Cq)` attends to latents `z` `(B, N, D)` -> `(B, O, C_out)`.

        With `chunk_size`, queries are decoded `chunk_size` at a time in a `lax.map` (each query's output
        depends only on itself and `z`), which bounds the attention and MLP memory.
        """
        if self.position_encoding_only:
            raise ValueError("this decoder only builds queries (position_encoding_only=True).")

        def decode(q):
            out = self.decoding_cross_attention(q, z, None, deterministic)
            return self.final_layer(out) if self.final_project else out

        num_queries = query.shape[1]
        if self.chunk_size is None or num_queries <= self.chunk_size or not deterministic:
            return decode(query)
        if self.is_initializing():  # create the parameters outside `lax.map` (no variables in its trace)
            decode(query[:, : self.chunk_size])
        num_chunks = -(-num_queries // self.chunk_size)
        pad = num_chunks * self.chunk_size - num_queries
        padded = jnp.pad(query, ((0, 0), (0, pad), (0, 0)))
        chunks = padded.reshape(query.shape[0], num_chunks, self.chunk_size, -1).swapaxes(0, 1)
        out = jax.lax.map(decode, chunks)  # (num_chunks, B, chunk, C_out)
        out = out.swapaxes(0, 1).reshape(query.shape[0], num_chunks * self.chunk_size, -1)
        return out[:, :num_queries]


class ClassificationDecoder(nn.Module):
    """A `BasicDecoder` (submodule `decoder`) with one learned query: latents -> logits `(B, num_labels)`."""

    decoder: BasicDecoder

    def num_query_channels(self) -> int:
        """Width of the single query."""
        return self.decoder.num_query_channels()

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """The learned query `(B, 1, Cq)`."""
        return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_points)

    def __call__(self, query: jax.Array, z: jax.Array, deterministic: bool = True) -> jax.Array:
        """`query` `(B, 1, Cq)`, `z` `(B, N, D)` -> `(B, num_labels)`."""
        return self.decoder(query, z, deterministic)[:, 0, :]


class OpticalFlowDecoder(nn.Module):
    """HF's `PerceiverOpticalFlowDecoder`: every pixel's preprocessed input (with its position encoding)
    is its own query; the `BasicDecoder` (submodule `decoder`) maps it to a flow vector, which is divided
    by `rescale_factor` and laid out as an image.

    Attributes:
      decoder: the cross-attention decoder (`output_num_channels` = 2 for (dx, dy); its `chunk_size`
        bounds the memory of decoding the H*W queries).
      output_image_shape: (H, W) of the flow field; the queries must number H * W.
      rescale_factor: the decoder's output is divided by it.
    """

    decoder: BasicDecoder
    output_image_shape: tuple[int, int]
    rescale_factor: float = 100.0

    def num_query_channels(self) -> int:
        """Width of the queries (the preprocessed inputs)."""
        return self.decoder.num_channels

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """The preprocessed inputs `(B, H * W, C)` themselves."""
        if subsampled_points is not None:
            raise ValueError(
                "the optical-flow decoder decodes every pixel; subsampled_points is not supported."
            )
        return inputs

    def __call__(self, query: jax.Array, z: jax.Array, deterministic: bool = True) -> jax.Array:
        """`query` `(B, H * W, C)`, `z` `(B, N, D)` -> flow `(B, H, W, output_num_channels)`."""
        flow = self.decoder(query, z, deterministic) / self.rescale_factor
        return flow.reshape((flow.shape[0], *self.output_image_shape, flow.shape[-1]))


class ProjectionDecoder(nn.Module):
    """Baseline decoder without attention: mean over latents, then Dense `classifier` -> `(B, num_labels)`."""

    num_labels: int
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """No queries: returns None."""
        return None

    @nn.compact
    def __call__(self, query: None, z: jax.Array, deterministic: bool = True) -> jax.Array:
        """`z` `(B, N, D)` -> `(B, num_labels)`."""
        classifier = dense(
            self.num_labels, EMBED, CLASSES, self.init_std, self.dtype, self.param_dtype, "classifier"
        )
        return classifier(jnp.mean(z, axis=1))


class EmbeddingDecoder(nn.Module):
    """Tied output projection of the masked-LM head: `h @ embeddings^T + bias` -> vocabulary logits.

    Attributes:
      vocab_size: V; the learned `bias` has shape `(V,)`.
    """

    vocab_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, embeddings: jax.Array) -> jax.Array:
        """`hidden` `(B, O, C)`, `embeddings` `(V, C)` (the input token table) -> logits `(B, O, V)`."""
        bias = self.param(
            "bias", partitioned(jax.nn.initializers.zeros, VOCAB), (self.vocab_size,), self.param_dtype
        )
        hidden, embeddings = hidden.astype(self.dtype), embeddings.astype(self.dtype)
        logits = jnp.einsum("boc,vc->bov", hidden, embeddings, preferred_element_type=jnp.float32)
        return logits.astype(self.dtype) + bias.astype(self.dtype)
