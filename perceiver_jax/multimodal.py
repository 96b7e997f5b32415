"""Multimodal autoencoding (HF's `PerceiverForMultimodalAutoencoding`): video, audio and label in and out.

The pieces of HF's multimodal design, channels-last:

- `AudioPreprocessor`: raw audio `(B, N, 1)` -> tokens of `samples_per_patch` samples + Fourier positions.
- `MultimodalPreprocessor`: one preprocessor per modality; every modality's tokens are padded with its
  learned `padding` vector to a common width (the widest modality's + `min_padding_size`), optionally
  replaced by its learned `mask` token, and the modalities are concatenated in sorted-name order
  (audio, image, label).
- `BasicVideoAutoencodingDecoder`: a `BasicDecoder` over a video's (T, H, W) output grid.
- `MultimodalDecoder`: per-modality query builders whose queries are padded like the inputs (with their
  own vectors) and concatenated in sorted order, then decoded by one shared cross-attention.
- `AudioPostprocessor`, `MultimodalPostprocessor`: decoder outputs -> one output per modality.
- `Modalities`, `ModalityVectors`: HF's `nn.ModuleDict` / `nn.ParameterDict`, so parameter paths read
  `.../modalities/<name>/...`, `.../padding/<name>` and `.../mask/<name>` like HF's state-dict keys.

Output points. A modality's output grid has `output_index_dims` (video: (T, H, W); audio: the number of
audio tokens); `subsampled_points` are flat indices into it and a Fourier query sits at coordinates
`-1 + 2 * index / dim` per dimension (HF, and DeepMind's code, which never reach +1; the encoder grid is
`linspace(-1, 1, n)` instead). A modality without subsampled points decodes every index with the same
convention: decoding all points equals concatenating the subsampled decodes of any partition of the
indices, which is how DeepMind's colab reconstructs a whole video chunk by chunk. (HF builds a
`linspace` grid from the wrong shape there and crashes.) A modality whose queries come from a learned
table (the label) ignores subsampling and decodes one output per table row (HF: label size 1).

Masking. HF replaces each token of a modality by the mask token with probability `mask_probs[name]`, at
inference too. Probabilities 0 and 1 are applied without randomness (the default {audio 0, image 0,
label 1}: the label input never reaches the model); a probability strictly between needs a 'masking'
RNG (`apply(..., rngs={'masking': key})`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.attention import dense
from perceiver_jax.config import PerceiverConfig
from perceiver_jax.decoders import BasicDecoder
from perceiver_jax.position_encoding import FourierPositionEncoding, TrainablePositionEncoding
from perceiver_jax.sharding import CLASSES, EMBED, partitioned

Dtype = Any


def restructure(modality_sizes: Mapping[str, int], inputs: jax.Array) -> dict[str, jax.Array]:
    """Splits `(B, M, C)` into `{name: (B, modality_sizes[name], C)}`, modalities in sorted-name order."""
    total = sum(modality_sizes.values())
    if total != inputs.shape[1]:
        raise ValueError(
            f"modality sizes {dict(modality_sizes)} add up to {total}, but the array has {inputs.shape[1]} "
            f"positions (shape {inputs.shape})."
        )
    outputs, start = {}, 0
    for name in sorted(modality_sizes):
        outputs[name] = inputs[:, start : start + modality_sizes[name]]
        start += modality_sizes[name]
    return outputs


class Modalities(nn.Module):
    """HF's `nn.ModuleDict` of per-modality modules: `members[name]` becomes the child `name`.

    Attributes:
      members: modality name -> module (each is adopted under its modality name).
    """

    members: Mapping[str, nn.Module]

    # Keep the names given in `__post_init__` when the members are adopted (not `members_<name>`).
    preserve_adopted_names = True

    def __post_init__(self):
        named = {name: module.clone(parent=None, name=name) for name, module in self.members.items()}
        object.__setattr__(self, "members", named)
        super().__post_init__()

    def names(self) -> list[str]:
        """The modality names in sorted order (HF's order for concatenating modalities)."""
        return sorted(self.members)

    def __getitem__(self, name: str) -> nn.Module:
        """The module of modality `name`."""
        return self.members[name]


class ModalityVectors(nn.Module):
    """HF's `nn.ParameterDict` of per-modality vectors: parameter `<name>` of shape `(1, width)`.

    Attributes:
      init_std: std of the normal initialiser (HF re-initialises these with `initializer_range`).
    """

    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, widths: Mapping[str, int]) -> dict[str, jax.Array]:
        """`widths` {name: W} -> {name: the `(1, W)` parameter `name`}."""
        init = partitioned(jax.nn.initializers.normal(self.init_std), None, EMBED)
        return {
            name: self.param(name, init, (1, width), self.param_dtype).astype(self.dtype)
            for name, width in widths.items()
        }


def _broadcast_rows(vector: jax.Array, batch_size: int, length: int) -> jax.Array:
    """`(1, W)` -> `(batch_size, length, W)`."""
    return jnp.broadcast_to(vector[None], (batch_size, length, vector.shape[-1]))


class AudioPreprocessor(nn.Module):
    """HF's `PerceiverAudioPreprocessor` ('patches', Fourier positions concatenated).

    Audio `(B, N, 1)` is cut into N / S tokens of S = `samples_per_patch` consecutive samples; each token
    gets the Fourier features of its index on a `linspace(-1, 1, N / S)` grid appended.

    Attributes:
      samples_per_patch: S.
      position_embeddings: the Fourier encoding of the token grid (HF: 192 bands at max resolution
        num_frames * audio_samples_per_frame).
    """

    samples_per_patch: int
    position_embeddings: FourierPositionEncoding
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array):
        """`inputs` `(B, N, 1)`, N a multiple of S -> (`(B, N/S, S + C_pos)`, None, samples `(B, N/S, S)`)."""
        if inputs.ndim != 3 or inputs.shape[-1] != 1:
            raise ValueError(f"audio must have shape (batch, samples, 1); got {inputs.shape}.")
        batch_size, num_samples = inputs.shape[:2]
        if num_samples % self.samples_per_patch:
            raise ValueError(
                f"audio length {num_samples} is not a multiple of samples_per_patch={self.samples_per_patch}."
            )
        num_tokens = num_samples // self.samples_per_patch
        patches = inputs.reshape(batch_size, num_tokens, self.samples_per_patch).astype(self.dtype)
        pos = self.position_embeddings((num_tokens,), batch_size).astype(self.dtype)
        return jnp.concatenate([patches, pos], axis=-1), None, patches


class MultimodalPreprocessor(nn.Module):
    """HF's `PerceiverMultimodalPreprocessor`: a dict of modality inputs -> one `(B, M, C)` token array.

    Each modality's preprocessor returns `(B, M_m, C_m)` tokens; they are padded with the modality's
    learned `padding` vector to C = max_m C_m + `min_padding_size`, tokens of the modalities in
    `mask_probs` are replaced by the modality's learned `mask` token with that probability (see the module
    docstring), and the modalities are concatenated in sorted-name order.

    Attributes:
      modalities: the per-modality preprocessors (each returns `(tokens, _, tokens_without_pos)`).
      mask_probs: modality name -> masking probability in [0, 1] (HF creates a mask token for each).
      min_padding_size: padding added beyond the widest modality.
      init_std: std of the padding and mask vectors' initialiser.
    """

    modalities: Modalities
    mask_probs: Mapping[str, float] | None = None
    min_padding_size: int = 2
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _mask(self, tokens: jax.Array, token: jax.Array, prob: float) -> jax.Array:
        """Replaces each of `tokens` `(B, M, C)` by `token` `(1, C)` with probability `prob`."""
        if prob == 0.0:
            return tokens
        if prob == 1.0:
            return _broadcast_rows(token, *tokens.shape[:2]).astype(tokens.dtype)
        if not self.has_rng("masking"):
            raise ValueError(
                f"a mask probability of {prob} (strictly between 0 and 1) draws random masks: pass "
                "rngs={'masking': key} to apply."
            )
        mask = jax.random.bernoulli(self.make_rng("masking"), prob, tokens.shape[:2])[..., None]
        mask = mask.astype(tokens.dtype)
        return (1 - mask) * tokens + mask * token[None]

    @nn.compact
    def __call__(
        self, inputs: Mapping[str, jax.Array], interpolate_pos_encoding: bool = False, deterministic: bool = True
    ):
        """Preprocesses `inputs` {modality: raw input}.

        Returns `(tokens (B, M, C), {modality: M_m}, {modality: tokens without positions})`.
        """
        names = self.modalities.names()
        mask_probs = dict(self.mask_probs or {})
        if interpolate_pos_encoding:
            raise ValueError("the multimodal preprocessor has no learned position table to interpolate.")
        if not isinstance(inputs, Mapping):
            raise TypeError(f"multimodal inputs must be a dict {{modality: array}} with keys {names}.")
        for name in names:
            if name not in inputs:
                raise ValueError(f"multimodal inputs lack modality {name!r}; expected keys {names}.")
        unknown = sorted(set(inputs) - set(names)) + sorted(set(mask_probs) - set(names))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this model has {names}.")
        for name, prob in mask_probs.items():
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"mask probability of {name!r} must be in [0, 1], got {prob}.")

        tokens, without_pos = {}, {}
        for name in names:
            tokens[name], _, without_pos[name] = self.modalities[name](inputs[name])
        batch_sizes = {name: t.shape[0] for name, t in tokens.items()}
        if len(set(batch_sizes.values())) != 1:
            raise ValueError(f"modalities have different batch sizes: {batch_sizes}.")

        width = max(t.shape[-1] for t in tokens.values()) + self.min_padding_size
        args = (self.init_std, self.dtype, self.param_dtype)
        padding = ModalityVectors(*args, name="padding")(
            {name: width - t.shape[-1] for name, t in tokens.items()}
        )
        masks = ModalityVectors(*args, name="mask")({name: width for name in mask_probs})
        padded = {}
        for name in names:
            batch_size, length = tokens[name].shape[:2]
            pad = _broadcast_rows(padding[name], batch_size, length)
            padded[name] = jnp.concatenate([tokens[name].astype(self.dtype), pad], axis=-1)
            if name in mask_probs:
                padded[name] = self._mask(padded[name], masks[name], mask_probs[name])
        sizes = {name: padded[name].shape[1] for name in names}
        return jnp.concatenate([padded[name] for name in names], axis=1), sizes, without_pos


class BasicVideoAutoencodingDecoder(nn.Module):
    """HF's `PerceiverBasicVideoAutoencodingDecoder`: a `BasicDecoder` (submodule `decoder`) over the
    video grid `output_shape[1:]` = (T, H, W), whose outputs are reshaped to the video.

    Attributes:
      decoder: the decoder; its `output_index_dims` must be `output_shape[1:]`.
      output_shape: `(B, T, H, W)` as in HF's config; the outputs take the batch size of the latents.
    """

    decoder: BasicDecoder
    output_shape: tuple[int, ...]

    def __post_init__(self):
        super().__post_init__()
        if len(self.output_shape) != 4:
            raise ValueError(f"output_shape must be (batch, time, height, width); got {self.output_shape}.")
        if tuple(self.decoder.output_index_dims or ()) != tuple(self.output_shape[1:]):
            raise ValueError(
                f"the video decoder's output_index_dims {self.decoder.output_index_dims} must be "
                f"output_shape[1:] = {tuple(self.output_shape[1:])}."
            )

    def num_query_channels(self) -> int:
        """Width of the queries."""
        return self.decoder.num_query_channels()

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """The queries `(B, O, Cq)` of the (subsampled) video grid (see `BasicDecoder.decoder_query`)."""
        return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_points)

    def __call__(self, query: jax.Array, z: jax.Array, deterministic: bool = True) -> jax.Array:
        """`query` `(B, T*H*W, Cq)` for the whole grid, `z` `(B, N, D)` -> video `(B, T, H, W, C_out)`."""
        out = self.decoder(query, z, deterministic)
        return out.reshape((out.shape[0], *self.output_shape[1:], out.shape[-1]))


def _query_builder(module: nn.Module) -> BasicDecoder:
    """The `BasicDecoder` that builds a modality's queries: the module or the `decoder` it wraps."""
    inner = module if isinstance(module, BasicDecoder) else getattr(module, "decoder", None)
    if not isinstance(inner, BasicDecoder) or inner.output_position_encodings is None:
        raise TypeError(
            f"a multimodal decoder's modality must be a BasicDecoder with position encodings, or wrap one "
            f"as `decoder`; got {type(module).__name__}."
        )
    return inner


class MultimodalDecoder(nn.Module):
    """HF's `PerceiverMultimodalDecoder`: per-modality queries, padded and concatenated, one cross-attention.

    Each modality's query builder (`position_encoding_only` decoders) makes `(B, O_m, C_m)` queries; they
    are padded with the modality's learned `padding` vector to Cq = max_m C_m + `min_padding_size` and
    concatenated in sorted-name order. The shared `decoder` (a `BasicDecoder`) decodes them all; as in HF
    its qk width is d_latents or Cq (`config.cross_attention_shape_for_attention` 'kv' or 'q').

    Attributes:
      config: dropout, norm eps, init std and latent width.
      modalities: the query builders (see `_query_builder`).
      output_num_channels: width of the shared decoder's `final_layer`.
      min_padding_size: query padding beyond the widest modality.
      num_heads, widening_factor, use_query_residual: the shared cross-attention.
      chunk_size: decode at most this many queries at a time (`BasicDecoder.chunk_size`): attention and MLP
        memory is then O(chunk_size x num_latents) whatever the number of output points; the queries and
        outputs of all points are still materialised, O(points x Cq).
    """

    config: PerceiverConfig
    modalities: Modalities
    output_num_channels: int
    min_padding_size: int = 2
    num_heads: int = 1
    widening_factor: int = 1
    use_query_residual: bool = False
    chunk_size: int | None = None
    attention_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.decoder = BasicDecoder(
            cfg,
            output_num_channels=self.output_num_channels,
            num_channels=self.num_query_channels(),
            num_heads=self.num_heads,
            widening_factor=self.widening_factor,
            use_query_residual=self.use_query_residual,
            chunk_size=self.chunk_size,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.padding = ModalityVectors(cfg.initializer_range, self.dtype, self.param_dtype)

    def _builders(self) -> dict[str, BasicDecoder]:
        return {name: _query_builder(self.modalities.members[name]) for name in self.modalities.names()}

    def num_query_channels(self) -> int:
        """Cq, the width of the padded queries."""
        return max(b.num_query_channels() for b in self._builders().values()) + self.min_padding_size

    def output_modality_sizes(self, subsampled_points: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Output points per modality: the subsampled count, else the whole grid; a learned query table
        gives one output per row whatever the points (HF: label size 1)."""
        subsampled_points = subsampled_points or {}
        sizes = {}
        for name, builder in self._builders().items():
            points = subsampled_points.get(name)
            if isinstance(builder.output_position_encodings, TrainablePositionEncoding):
                sizes[name] = int(np.prod(builder.output_position_encodings.index_dims))
            elif points is not None:
                sizes[name] = int(np.shape(points)[0])
            else:
                sizes[name] = math.prod(builder.output_index_dims)
        return sizes

    def _points(self, name: str, builder: BasicDecoder, points: Any) -> jax.Array | None:
        """Checked flat indices of modality `name` (every index when `points` is None)."""
        if isinstance(builder.output_position_encodings, TrainablePositionEncoding):
            return None
        num_points = math.prod(builder.output_index_dims)
        if points is None:
            return jnp.arange(num_points)
        values = None if isinstance(points, jax.core.Tracer) else np.asarray(points)
        shape, dtype = np.shape(points), (points if values is None else values).dtype
        if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
            raise ValueError(
                f"subsampled points of {name!r} must be a 1-D integer array of flat indices; got shape "
                f"{shape}, dtype {dtype}."
            )
        if values is not None and values.size and (values.min() < 0 or values.max() >= num_points):
            raise ValueError(
                f"subsampled points of {name!r} must be in [0, {num_points}) (output grid "
                f"{tuple(builder.output_index_dims)}); got values in [{values.min()}, {values.max()}]."
            )
        return jnp.asarray(points)

    def decoder_query(
        self,
        inputs: jax.Array,
        modality_sizes: Mapping[str, int],
        inputs_without_pos: Mapping[str, jax.Array] | None = None,
        subsampled_points: Mapping[str, Any] | None = None,
    ) -> jax.Array:
        """The padded queries `(B, sum_m O_m, Cq)` of every modality, in sorted-name order.

        Args:
          inputs: the encoder inputs `(B, M, C)`; `modality_sizes` {name: M_m} splits them per modality.
          inputs_without_pos: {name: features} for query builders that concatenate them.
          subsampled_points: {name: `(O_m,)` flat indices into the modality's output grid}; a modality
            that is absent or None decodes every point (see the module docstring).
        """
        builders = self._builders()
        subsampled_points = dict(subsampled_points or {})
        unknown = sorted(set(subsampled_points) - set(builders))
        if unknown:
            raise ValueError(
                f"subsampled points for unknown modalities {unknown}; this model has {sorted(builders)}."
            )
        parts = restructure(modality_sizes, inputs)
        inputs_without_pos = inputs_without_pos or {}
        width = self.num_query_channels()
        padding = self.padding({name: width - b.num_query_channels() for name, b in builders.items()})
        queries = []
        for name, builder in builders.items():
            points = self._points(name, builder, subsampled_points.get(name))
            query = self.modalities[name].decoder_query(
                parts[name], None, inputs_without_pos.get(name), points
            )
            query = query.reshape(query.shape[0], -1, query.shape[-1]).astype(self.dtype)
            pad = _broadcast_rows(padding[name], query.shape[0], query.shape[1])
            queries.append(jnp.concatenate([query, pad], axis=-1))
        return jnp.concatenate(queries, axis=1)

    def __call__(self, query: jax.Array, z: jax.Array, deterministic: bool = True) -> jax.Array:
        """`query` `(B, O, Cq)`, latents `z` `(B, N, D)` -> `(B, O, output_num_channels)`."""
        return self.decoder(query, z, deterministic)


class AudioPostprocessor(nn.Module):
    """HF's `PerceiverAudioPostprocessor`: Dense `classifier` to S samples per token, flattened.

    Attributes:
      samples_per_patch: S.
      init_std: std of the kernel initialiser.
    """

    samples_per_patch: int
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, modality_sizes=None) -> jax.Array:
        """`inputs` `(B, O, C)` -> audio samples `(B, O * S)`."""
        args = (self.init_std, self.dtype, self.param_dtype, "classifier")
        samples = dense(self.samples_per_patch, EMBED, CLASSES, *args)(inputs)
        return samples.reshape(inputs.shape[0], -1)


class MultimodalPostprocessor(nn.Module):
    """HF's `PerceiverMultimodalPostprocessor`: splits the decoder output per modality and postprocesses
    each with its own module.

    Attributes:
      modalities: the per-modality postprocessors.
    """

    modalities: Modalities

    @nn.compact
    def __call__(
        self, inputs: jax.Array, modality_sizes: Mapping[str, int] | None = None
    ) -> dict[str, jax.Array]:
        """`inputs` `(B, O, C)` holding {name: O_m} outputs in sorted-name order -> {name: output}."""
        if modality_sizes is None:
            raise ValueError("the multimodal postprocessor needs modality_sizes to split its inputs.")
        parts = restructure(modality_sizes, inputs)
        return {name: self.modalities[name](parts[name]) for name in self.modalities.names()}
