"""Decoders: decoder queries cross-attend to the latents and produce the outputs.

`Decoder` is the interface (HF's `PerceiverAbstractDecoder`, DeepMind's `AbstractPerceiverDecoder`):
`decoder_query(...)` builds the `(B, O, Cq)` queries (from position encodings, and optionally the
preprocessed inputs), `num_queries` / `num_query_channels` give O and Cq, `output_shape` the outputs'
shape (and per-modality output counts, for multimodal decoders), and `__call__(query, z)` decodes the
latents `z` `(B, N, D)`. `PerceiverModel` drives every decoder the same way.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.attention import CrossAttention, dense, einsum_f32_accumulation
from perceiver_jax.config import PerceiverConfig
from perceiver_jax.position_encoding import PositionEncoding
from perceiver_jax.settings import Settings
from perceiver_jax.sharding import (
    ACT_EMBED,
    ACT_VOCAB,
    BATCH,
    CLASSES,
    EMBED,
    LENGTH,
    VOCAB,
    constrain,
    partitioned,
)

Outputs = tuple[Any, jax.Array | None]  # (decoded outputs, cross-attention probabilities or None)


class Decoder(nn.Module):
    """Interface of decoders (abstract); see the module docstring."""

    def num_query_channels(self) -> int:
        """Cq, the width of the queries `decoder_query` builds."""
        raise NotImplementedError

    def num_queries(self, subsampled_points: Any = None) -> int:
        """O, the number of queries `decoder_query` builds for these `subsampled_points`."""
        raise NotImplementedError

    def decoder_query(
        self,
        inputs: jax.Array,
        modality_sizes: Mapping[str, int] | None = None,
        inputs_without_pos: Any = None,
        subsampled_points: Any = None,
    ) -> jax.Array | None:
        """Queries `(B, O, Cq)` for the preprocessed encoder inputs `(B, M, C)`."""
        raise NotImplementedError

    def output_shape(
        self, inputs: jax.Array, subsampled_points: Any = None
    ) -> tuple[tuple[int, ...], dict[str, int] | None]:
        """The shape `__call__` returns for these inputs and points, and the number of outputs per modality
        (None but for multimodal decoders)."""
        raise NotImplementedError

    def __call__(
        self,
        query: jax.Array | None,
        z: jax.Array,
        *,
        deterministic: bool = True,
        output_attentions: bool = False,
    ) -> Outputs:
        """Decodes latents `z` `(B, N, D)` with `query`; returns (outputs, cross-attention probabilities
        `(B, H, O, N)` when `output_attentions`, else None)."""
        raise NotImplementedError


def check_points(points: Any, num_points: int, where: str) -> jax.Array:
    """`points` as a jax array after checking it is a 1-D integer array of flat indices in [0,
    `num_points`) (values are checked when known, i.e. outside `jit`); `where` names the output grid."""
    values = None if isinstance(points, jax.core.Tracer) else np.asarray(points)
    shape, dtype = np.shape(points), (points if values is None else values).dtype
    if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"subsampled points of {where} must be a 1-D integer array of flat indices; got shape {shape}, "
            f"dtype {dtype}."
        )
    if values is not None and values.size and (values.min() < 0 or values.max() >= num_points):
        raise ValueError(
            f"subsampled points of {where} must be in [0, {num_points}); got values in "
            f"[{values.min()}, {values.max()}]."
        )
    return jnp.asarray(points)


class BasicDecoder(Decoder, kw_only=True):
    """Cross-attention decoder: queries built from a position encoding attend to the latents.

    Attributes:
      config: supplies the cross-attention's dropout, norm eps, init std and
        `cross_attention_shape_for_attention`.
      output_num_channels: width of the final projection (when `final_project`).
      output_position_encodings: the queries' position encoding, over the output grid `index_dims` (None:
        queries come from elsewhere, e.g. the preprocessed inputs).
      num_channels: width of queries that come from elsewhere (what `num_query_channels` reports then).
      num_heads, qk_channels, v_channels, widening_factor, use_query_residual: the cross-attention.
      concat_preprocessed_input: prepend the preprocessed inputs (without positions) to the queries.
      final_project: apply the Dense `final_layer` Cq -> output_num_channels.
      position_encoding_only: only build queries (no cross-attention); used by the multimodal decoder.
      chunk_size: at inference, decode at most this many queries at a time (bounded memory; None: all).
    """

    config: PerceiverConfig
    output_num_channels: int
    output_position_encodings: PositionEncoding | None = None
    num_channels: int | None = None
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    concat_preprocessed_input: bool = False
    final_project: bool = True
    position_encoding_only: bool = False
    chunk_size: int | None = None
    settings: Settings = Settings()

    def __post_init__(self):
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size <= 0):
            raise ValueError(f"chunk_size must be None or a positive integer, got {self.chunk_size!r}.")
        super().__post_init__()

    def setup(self):
        cfg = self.config
        if self.position_encoding_only:
            return
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
            settings=self.settings,
        )
        if self.final_project:
            common = dict(init_std=cfg.initializer_range, settings=self.settings, name="final_layer")
            self.final_layer = dense(self.output_num_channels, in_axis=EMBED, out_axis=CLASSES, **common)

    def num_query_channels(self) -> int:
        """The position encoding's width (queries from elsewhere: `num_channels`)."""
        if self.output_position_encodings is not None:
            return self.output_position_encodings.output_size()
        if self.num_channels is None:
            raise ValueError("a decoder whose queries come from elsewhere needs num_channels.")
        return self.num_channels

    def num_queries(self, subsampled_points: Any = None) -> int:
        """The number of subsampled points, else the size of the output grid."""
        if subsampled_points is not None:
            return int(np.shape(subsampled_points)[0])
        return int(np.prod(self._encodings().index_dims))

    def _encodings(self) -> PositionEncoding:
        if self.output_position_encodings is None:
            raise ValueError(
                "this decoder has no output position encodings: its queries come from elsewhere."
            )
        return self.output_position_encodings

    def decoder_query(
        self,
        inputs: jax.Array,
        modality_sizes: Mapping[str, int] | None = None,
        inputs_without_pos: jax.Array | None = None,
        subsampled_points: Any = None,
    ) -> jax.Array:
        """Queries `(B, O, Cq)` for encoder inputs `(B, ...)`: the position encoding of the whole output grid,
        or of `subsampled_points` `(O,)`, flat indices into it (Fourier features at coordinates
        `-1 + 2 * index / dim`, as HF; a learned table cannot be subsampled)."""
        encoding, batch_size = self._encodings(), inputs.shape[0]
        if subsampled_points is None:
            query = encoding(batch_size)
        else:
            dims = tuple(encoding.index_dims)
            points = check_points(subsampled_points, int(np.prod(dims)), f"an output grid {dims}")
            # Per-dimension tables of -1 + 2 * i / dim built on the host in float32, as torch computes them:
            # XLA turns a division by a constant into a multiplication by its reciprocal, 1 ulp off, which
            # the top Fourier frequencies amplify (audio: 1e-3 relative on the outputs).
            tables = [np.float32(-1) + np.arange(0, 2 * d, 2, dtype=np.float32) / np.float32(d) for d in dims]
            coords = jnp.unravel_index(points, dims)
            pos = jnp.stack([jnp.asarray(t)[c] for t, c in zip(tables, coords)], axis=1)
            query = encoding(batch_size, pos=jnp.broadcast_to(pos[None], (batch_size,) + pos.shape))
            if query.shape[1] != points.shape[0]:
                raise ValueError(
                    f"{type(encoding).__name__} gives the same {query.shape[1]} queries whatever the "
                    "positions: its outputs cannot be subsampled."
                )
        if self.concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError("concat_preprocessed_input=True needs inputs_without_pos.")
            query = jnp.concatenate([inputs_without_pos.astype(query.dtype), query], axis=-1)
        return constrain(query, BATCH, LENGTH, ACT_EMBED)

    def output_shape(self, inputs: jax.Array, subsampled_points: Any = None) -> tuple[tuple[int, ...], None]:
        """`(B, O, output_num_channels)` (or the cross-attention's width without `final_project`)."""
        width = self.output_num_channels if self.final_project else self.num_query_channels()
        return (inputs.shape[0], self.num_queries(subsampled_points), width), None

    def __call__(
        self, query: jax.Array, z: jax.Array, *, deterministic: bool = True, output_attentions: bool = False
    ) -> Outputs:
        """`query` `(B, O, Cq)` attends to latents `z` `(B, N, D)` -> `(B, O, C_out)` and probabilities.

        With `chunk_size`, queries are decoded `chunk_size` at a time in a `lax.map` (each query's output
        depends only on itself and `z`), which bounds the attention and MLP memory.
        """
        if self.position_encoding_only:
            raise ValueError("this decoder only builds queries (position_encoding_only=True).")

        def decode(q):
            out, probs = self.decoding_cross_attention(q, z, deterministic=deterministic)
            out = self.final_layer(out) if self.final_project else out
            return constrain(out, BATCH, LENGTH, ACT_EMBED), probs if output_attentions else None

        batch_size, num_queries = query.shape[:2]
        if self.chunk_size is None or num_queries <= self.chunk_size or not deterministic:
            return decode(query)
        if self.is_initializing():  # create the parameters outside `lax.map` (no variables in its trace)
            decode(query[:, : self.chunk_size])
        num_chunks = -(-num_queries // self.chunk_size)
        padded = jnp.pad(query, ((0, 0), (0, num_chunks * self.chunk_size - num_queries), (0, 0)))
        chunks = padded.reshape(batch_size, num_chunks, self.chunk_size, -1).swapaxes(0, 1)
        out, probs = jax.lax.map(
            decode, chunks
        )  # (num_chunks, B, chunk, C_out), (num_chunks, B, H, chunk, N)
        out = out.swapaxes(0, 1).reshape(batch_size, num_chunks * self.chunk_size, -1)[:, :num_queries]
        if probs is not None:
            probs = probs.transpose(1, 2, 0, 3, 4).reshape(*probs.shape[1:3], -1, probs.shape[-1])
            probs = probs[:, :, :num_queries]
        return out, probs


class ClassificationDecoder(Decoder, kw_only=True):
    """A `BasicDecoder` (submodule `decoder`) with one learned query: latents -> logits `(B, num_labels)`.
    Subsampled points are ignored (HF: one output whatever the points)."""

    decoder: BasicDecoder

    def num_query_channels(self) -> int:
        """Width of the single query."""
        return self.decoder.num_query_channels()

    def num_queries(self, subsampled_points: Any = None) -> int:
        """1."""
        return self.decoder.num_queries()

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """The learned query `(B, 1, Cq)`."""
        return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos)

    def output_shape(self, inputs: jax.Array, subsampled_points: Any = None) -> tuple[tuple[int, ...], None]:
        """`(B, num_labels)`."""
        return (inputs.shape[0], self.decoder.output_num_channels), None

    def __call__(
        self, query: jax.Array, z: jax.Array, *, deterministic: bool = True, output_attentions: bool = False
    ) -> Outputs:
        """`query` `(B, 1, Cq)`, `z` `(B, N, D)` -> `(B, num_labels)`."""
        logits, probs = self.decoder(
            query, z, deterministic=deterministic, output_attentions=output_attentions
        )
        return logits[:, 0, :], probs


class OpticalFlowDecoder(Decoder, kw_only=True):
    """HF's `PerceiverOpticalFlowDecoder`: every pixel's preprocessed input (with its position encoding)
    is its own query; the `BasicDecoder` (submodule `decoder`) maps it to a flow vector, which is divided
    by `rescale_factor` and laid out as an image.

    Attributes:
      decoder: the cross-attention decoder (`output_num_channels` = 2 for (dx, dy); `num_channels` the
        preprocessed inputs' width; its `chunk_size` bounds the memory of decoding the H*W queries).
      output_image_shape: (H, W) of the flow field; the queries must number H * W.
      rescale_factor: the decoder's output is divided by it.
    """

    decoder: BasicDecoder
    output_image_shape: tuple[int, int]
    rescale_factor: float = 100.0

    def num_query_channels(self) -> int:
        """Width of the queries (the preprocessed inputs)."""
        return self.decoder.num_query_channels()

    def num_queries(self, subsampled_points: Any = None) -> int:
        """H * W."""
        return int(np.prod(self.output_image_shape))

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """The preprocessed inputs `(B, H * W, C)` themselves."""
        if subsampled_points is not None:
            raise ValueError(
                "the optical-flow decoder decodes every pixel; subsampled_points is not supported."
            )
        return inputs

    def output_shape(self, inputs: jax.Array, subsampled_points: Any = None) -> tuple[tuple[int, ...], None]:
        """`(B, H, W, output_num_channels)`."""
        return (inputs.shape[0], *self.output_image_shape, self.decoder.output_num_channels), None

    def __call__(
        self, query: jax.Array, z: jax.Array, *, deterministic: bool = True, output_attentions: bool = False
    ) -> Outputs:
        """`query` `(B, H * W, C)`, `z` `(B, N, D)` -> flow `(B, H, W, output_num_channels)`."""
        flow, probs = self.decoder(query, z, deterministic=deterministic, output_attentions=output_attentions)
        flow = flow / self.rescale_factor
        return flow.reshape((flow.shape[0], *self.output_image_shape, flow.shape[-1])), probs


class ProjectionDecoder(Decoder, kw_only=True):
    """Baseline decoder without attention: mean over latents, then Dense `classifier` -> `(B, num_labels)`.

    Attributes:
      num_labels: output width.
      init_std: std of the classifier's kernel initialiser.
    """

    num_labels: int
    init_std: float = 0.02
    settings: Settings = Settings()

    def num_query_channels(self) -> int:
        """0: no queries."""
        return 0

    def num_queries(self, subsampled_points: Any = None) -> int:
        """0: no queries."""
        return 0

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """No queries: None."""
        return None

    def output_shape(self, inputs: jax.Array, subsampled_points: Any = None) -> tuple[tuple[int, ...], None]:
        """`(B, num_labels)`."""
        return (inputs.shape[0], self.num_labels), None

    @nn.compact
    def __call__(
        self, query: None, z: jax.Array, *, deterministic: bool = True, output_attentions: bool = False
    ) -> Outputs:
        """`z` `(B, N, D)` -> `(B, num_labels)` (no attention: probabilities None)."""
        common = dict(init_std=self.init_std, settings=self.settings, name="classifier")
        classifier = dense(self.num_labels, in_axis=EMBED, out_axis=CLASSES, **common)
        return classifier(jnp.mean(z, axis=1)), None


class EmbeddingDecoder(nn.Module, kw_only=True):
    """Tied output projection of the masked-LM head (HF's `PerceiverEmbeddingDecoder`, not a `Decoder`: it
    maps decoded hidden states to vocabulary logits): `h @ embeddings^T + bias`.

    Attributes:
      vocab_size: V; the learned `bias` has shape `(V,)`.
    """

    vocab_size: int
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, hidden: jax.Array, embeddings: jax.Array) -> jax.Array:
        """`hidden` `(B, O, C)`, `embeddings` `(V, C)` (the input token table) -> logits `(B, O, V)`."""
        dtype = self.settings.dtype
        bias = self.param(
            "bias",
            partitioned(jax.nn.initializers.zeros, VOCAB),
            (self.vocab_size,),
            self.settings.param_dtype,
        )
        logits = einsum_f32_accumulation("boc,vc->bov", hidden.astype(dtype), embeddings.astype(dtype), dtype)
        return constrain(logits + bias.astype(dtype), BATCH, LENGTH, ACT_VOCAB)
