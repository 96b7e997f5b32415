"""Multimodal autoencoding (HF's `PerceiverForMultimodalAutoencoding`): video, audio and label in and out.

The pieces of HF's multimodal design, channels-last:

- `AudioPreprocessor`: raw audio `(B, N, 1)` -> tokens of `samples_per_patch` samples + Fourier positions.
- `MultimodalPreprocessor`: one preprocessor per modality; every modality's tokens are padded with its
  learned `padding` vector to a common width (the widest modality's + `min_padding_size`), optionally
  replaced by its learned `mask` token, and the modalities are concatenated in sorted-name order
  (audio, image, label).
- `BasicVideoAutoencodingDecoder`: a `BasicDecoder` over a video's (T, H, W) output grid.
- `MultimodalDecoder`: one query-building `Decoder` per modality whose queries are padded like the inputs
  (with their own vectors) and concatenated in sorted order, then decoded by one shared cross-attention.
- `AudioPostprocessor`, `MultimodalPostprocessor`: decoder outputs -> one output per modality.
- `Modalities`, `ModalityVectors`: HF's `nn.ModuleDict` / `nn.ParameterDict`, so parameter paths read
  `.../modalities/<name>/...`, `.../padding/<name>` and `.../mask/<name>` like HF's state-dict keys.

Output points. A modality's output grid is its query encoding's `index_dims` (video: (T, H, W); audio:
the number of audio tokens); `subsampled_points` are flat indices into it and a Fourier query sits at
coordinates `-1 + 2 * index / dim` per dimension (HF, and DeepMind's code, which never reach +1; the
encoder grid is `linspace(-1, 1, n)` instead). A modality without subsampled points decodes every index
with the same convention: decoding all points equals concatenating the subsampled decodes of any
partition of the indices, which is how DeepMind's colab reconstructs a whole video chunk by chunk. (HF
builds a `linspace` grid from the wrong shape there and crashes.) The label's `ClassificationDecoder`
ignores subsampling and decodes its one learned query (HF: label size 1).

Masking. HF replaces each token of a modality by the mask token with probability `mask_probs[name]`, at
inference too. Probabilities 0 and 1 are applied without randomness (the default {audio 0, image 0,
label 1}: the label input never reaches the model); a probability strictly between needs a 'masking'
RNG (`apply(..., rngs={'masking': key})`).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.decoders import BasicDecoder, Decoder, Outputs
from perceiver_jax.position_encoding import PositionEncoding
from perceiver_jax.postprocessors import Postprocessor, ProjectionPostprocessor
from perceiver_jax.preprocessors import Preprocessor, no_interpolation
from perceiver_jax.settings import Settings
from perceiver_jax.sharding import ACT_EMBED, BATCH, EMBED, LENGTH, constrain, partitioned


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


class Modalities(nn.Module, kw_only=True):
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


class ModalityVectors(nn.Module, kw_only=True):
    """HF's `nn.ParameterDict` of per-modality vectors: parameter `<name>` of shape `(1, width)`.

    Attributes:
      init_std: std of the normal initialiser (HF re-initialises these with `initializer_range`).
    """

    init_std: float = 0.02
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, widths: Mapping[str, int]) -> dict[str, jax.Array]:
        """`widths` {name: W} -> {name: the `(1, W)` parameter `name`}."""
        init = partitioned(jax.nn.initializers.normal(self.init_std), None, EMBED)
        return {
            name: self.param(name, init, (1, width), self.settings.param_dtype).astype(self.settings.dtype)
            for name, width in widths.items()
        }


def _broadcast_rows(vector: jax.Array, batch_size: int, length: int) -> jax.Array:
    """`(1, W)` -> `(batch_size, length, W)`, split along the batch under a mesh."""
    rows = jnp.broadcast_to(vector[None], (batch_size, length, vector.shape[-1]))
    return constrain(rows, BATCH, LENGTH, ACT_EMBED)


class AudioPreprocessor(Preprocessor, kw_only=True):
    """HF's `PerceiverAudioPreprocessor` ('patches'): raw audio -> tokens of S samples with positions.

    Audio `(B, N, 1)` is cut into N / S tokens of S = `samples_per_patch` consecutive samples; each token's
    position encoding (on the token grid, `linspace(-1, 1, N / S)`) is concatenated or added.

    Attributes:
      samples_per_patch: S.
      position_embeddings: the encoding of the token grid (HF: Fourier, 192 bands at max resolution
        num_frames * audio_samples_per_frame; a learned table or a `PositionEncodingProjector` are HF's
        other options).
      concat_or_add_pos: 'concat' or 'add' the position encoding.
    """

    samples_per_patch: int
    position_embeddings: PositionEncoding
    concat_or_add_pos: str = "concat"
    settings: Settings = Settings()

    def __post_init__(self):
        if self.concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"concat_or_add_pos must be 'concat' or 'add', got {self.concat_or_add_pos!r}.")
        super().__post_init__()

    def num_channels(self) -> int:
        """S + C_pos (concat) or C_pos (add)."""
        pos = self.position_embeddings.output_size()
        return pos if self.concat_or_add_pos == "add" else self.samples_per_patch + pos

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, interpolate_pos_encoding: bool = False, deterministic: bool = True
    ):
        """`inputs` `(B, N, 1)`, N a multiple of S -> (`(B, N/S, C)`, None, samples `(B, N/S, S)`)."""
        no_interpolation(self, interpolate_pos_encoding)
        batch_size, num_samples = inputs.shape[:2]
        num_tokens = num_samples // self.samples_per_patch
        patches = inputs.reshape(batch_size, num_tokens, self.samples_per_patch).astype(self.settings.dtype)
        patches = constrain(patches, BATCH, LENGTH, ACT_EMBED)
        try:
            pos = self.position_embeddings.for_grid(batch_size, (num_tokens,))
        except ValueError as e:
            raise ValueError(
                f"the audio gives {num_tokens} tokens of {self.samples_per_patch} samples: {e}"
            ) from e
        pos = pos.astype(patches.dtype)
        if self.concat_or_add_pos == "concat":
            return jnp.concatenate([patches, pos], axis=-1), None, patches
        return patches + pos, None, patches


class MultimodalPreprocessor(Preprocessor, kw_only=True):
    """HF's `PerceiverMultimodalPreprocessor`: a dict of modality inputs -> one `(B, M, C)` token array.

    Each modality's preprocessor returns `(B, M_m, C_m)` tokens; they are padded with the modality's
    learned `padding` vector to C = max_m C_m + `min_padding_size`, tokens of the modalities in
    `mask_probs` are replaced by the modality's learned `mask` token with that probability (see the module
    docstring), and the modalities are concatenated in sorted-name order.

    Attributes:
      modalities: the per-modality `Preprocessor`s.
      mask_probs: modality name -> masking probability in [0, 1] (HF creates a mask token for each).
      min_padding_size: padding added beyond the widest modality.
      init_std: std of the padding and mask vectors' initialiser.
    """

    modalities: Modalities
    mask_probs: Mapping[str, float] | None = None
    min_padding_size: int = 2
    init_std: float = 0.02
    settings: Settings = Settings()

    def __post_init__(self):
        names = self.modalities.names()
        for name, prob in (self.mask_probs or {}).items():
            if name not in names:
                raise ValueError(
                    f"mask probability for unknown modality {name!r}; the modalities are {names}."
                )
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"mask probability of {name!r} must be in [0, 1], got {prob}.")
        super().__post_init__()

    def num_channels(self) -> int:
        """C = the widest modality's channels + min_padding_size."""
        return max(m.num_channels() for m in self.modalities.members.values()) + self.min_padding_size

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
        self,
        inputs: Mapping[str, jax.Array],
        *,
        interpolate_pos_encoding: bool = False,
        deterministic: bool = True,
    ):
        """Preprocesses `inputs` {modality: raw input} (every modality of `modalities`).

        Returns `(tokens (B, M, C), {modality: M_m}, {modality: tokens without positions})`.
        """
        names, mask_probs = self.modalities.names(), dict(self.mask_probs or {})
        tokens, without_pos = {}, {}
        for name in names:
            tokens[name], _, without_pos[name] = self.modalities[name](
                inputs[name], interpolate_pos_encoding=interpolate_pos_encoding, deterministic=deterministic
            )
        width = self.num_channels()
        common = dict(init_std=self.init_std, settings=self.settings)
        padding = ModalityVectors(name="padding", **common)(
            {name: width - t.shape[-1] for name, t in tokens.items()}
        )
        masks = ModalityVectors(name="mask", **common)({name: width for name in mask_probs})
        padded = {}
        for name in names:
            batch_size, length = tokens[name].shape[:2]
            pad = _broadcast_rows(padding[name], batch_size, length)
            padded[name] = jnp.concatenate([tokens[name].astype(self.settings.dtype), pad], axis=-1)
            if name in mask_probs:
                padded[name] = self._mask(padded[name], masks[name], mask_probs[name])
        sizes = {name: padded[name].shape[1] for name in names}
        return jnp.concatenate([padded[name] for name in names], axis=1), sizes, without_pos


class BasicVideoAutoencodingDecoder(Decoder, kw_only=True):
    """HF's `PerceiverBasicVideoAutoencodingDecoder`: a `BasicDecoder` (submodule `decoder`) whose query
    encoding's grid is the video (T, H, W); decoding the whole grid gives a video `(B, T, H, W, C_out)`,
    subsampled points `(B, O, C_out)`.

    Attributes:
      decoder: the decoder; its `output_position_encodings` index the (T, H, W) grid.
    """

    decoder: BasicDecoder

    def __post_init__(self):
        encodings = self.decoder.output_position_encodings
        if encodings is None or len(encodings.index_dims) != 3:
            raise ValueError(
                "the video decoder needs output position encodings over a (time, height, width) grid."
            )
        super().__post_init__()

    def num_query_channels(self) -> int:
        """Width of the queries."""
        return self.decoder.num_query_channels()

    def num_queries(self, subsampled_points: Any = None) -> int:
        """The number of points decoded."""
        return self.decoder.num_queries(subsampled_points)

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        """The queries `(B, O, Cq)` of the (subsampled) video grid (see `BasicDecoder.decoder_query`)."""
        return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos, subsampled_points)

    def output_shape(self, inputs: jax.Array, subsampled_points: Any = None) -> tuple[tuple[int, ...], None]:
        """`(B, T, H, W, C_out)` for the whole grid, `(B, O, C_out)` for subsampled points."""
        shape, _ = self.decoder.output_shape(inputs, subsampled_points)
        if subsampled_points is None:
            shape = (shape[0], *self.decoder.output_position_encodings.index_dims, shape[-1])
        return shape, None

    def __call__(
        self, query: jax.Array, z: jax.Array, *, deterministic: bool = True, output_attentions: bool = False
    ) -> Outputs:
        """`query` `(B, T*H*W, Cq)` for the whole grid, `z` `(B, N, D)` -> video `(B, T, H, W, C_out)`."""
        out, probs = self.decoder(query, z, deterministic=deterministic, output_attentions=output_attentions)
        dims = self.decoder.output_position_encodings.index_dims
        return out.reshape((out.shape[0], *dims, out.shape[-1])), probs


class MultimodalDecoder(Decoder, kw_only=True):
    """HF's `PerceiverMultimodalDecoder`: per-modality queries, padded and concatenated, one cross-attention.

    Each modality's `Decoder` builds `(B, O_m, C_m)` queries (its own cross-attention is unused: HF builds
    them `position_encoding_only`); they are padded with the modality's learned `padding` vector to Cq =
    max_m C_m + `min_padding_size` and concatenated in sorted-name order. The shared `decoder` (a
    `BasicDecoder`) decodes them all; as in HF its qk width is d_latents or Cq
    (`config.cross_attention_shape_for_attention` 'kv' or 'q').

    Attributes:
      config: dropout, norm eps, init std and latent width.
      modalities: the query-building decoders.
      output_num_channels: width of the shared decoder's `final_layer`.
      min_padding_size: query padding beyond the widest modality.
      num_heads, qk_channels, v_channels, widening_factor, use_query_residual: the shared cross-attention.
      chunk_size: decode at most this many queries at a time (`BasicDecoder.chunk_size`).
    """

    config: PerceiverConfig
    modalities: Modalities
    output_num_channels: int
    min_padding_size: int = 2
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    chunk_size: int | None = None
    settings: Settings = Settings()

    def setup(self):
        self.decoder = BasicDecoder(
            config=self.config,
            output_num_channels=self.output_num_channels,
            num_channels=self.num_query_channels(),
            num_heads=self.num_heads,
            qk_channels=self.qk_channels,
            v_channels=self.v_channels,
            widening_factor=self.widening_factor,
            use_query_residual=self.use_query_residual,
            chunk_size=self.chunk_size,
            settings=self.settings,
        )
        self.padding = ModalityVectors(init_std=self.config.initializer_range, settings=self.settings)

    def _decoders(self) -> dict[str, Decoder]:
        return {name: self.modalities[name] for name in self.modalities.names()}

    def _points(self, subsampled_points: Mapping[str, Any] | None) -> dict[str, Any]:
        points = dict(subsampled_points or {})
        unknown = sorted(set(points) - set(self.modalities.names()))
        if unknown:
            raise ValueError(
                f"subsampled points for unknown modalities {unknown}; "
                f"this model has {self.modalities.names()}."
            )
        return points

    def num_query_channels(self) -> int:
        """Cq, the width of the padded queries."""
        return max(d.num_query_channels() for d in self._decoders().values()) + self.min_padding_size

    def num_queries(self, subsampled_points: Mapping[str, Any] | None = None) -> int:
        """The queries of every modality."""
        points = self._points(subsampled_points)
        return sum(d.num_queries(points.get(name)) for name, d in self._decoders().items())

    def output_shape(
        self, inputs: jax.Array, subsampled_points: Mapping[str, Any] | None = None
    ) -> tuple[tuple[int, ...], dict[str, int]]:
        """`(B, O, output_num_channels)` and {modality: O_m}, the outputs of each modality (the subsampled
        count, else the whole grid; the label's one learned query)."""
        points = self._points(subsampled_points)
        sizes = {name: d.num_queries(points.get(name)) for name, d in self._decoders().items()}
        return (inputs.shape[0], sum(sizes.values()), self.output_num_channels), sizes

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
          inputs_without_pos: {name: features} for modality decoders that concatenate them.
          subsampled_points: {name: `(O_m,)` flat indices into the modality's output grid}; a modality
            that is absent or None decodes every point (see the module docstring).
        """
        points, parts = self._points(subsampled_points), restructure(modality_sizes, inputs)
        inputs_without_pos = inputs_without_pos or {}
        width = self.num_query_channels()
        decoders = self._decoders()
        padding = self.padding({name: width - d.num_query_channels() for name, d in decoders.items()})
        queries = []
        for name, decoder in decoders.items():
            # Every point of a modality without subsampled points, at the subsampled points' coordinates.
            indices = points.get(name)
            indices = np.arange(decoder.num_queries()) if indices is None else indices
            query = decoder.decoder_query(parts[name], None, inputs_without_pos.get(name), indices)
            query = query.astype(self.settings.dtype)
            pad = _broadcast_rows(padding[name], query.shape[0], query.shape[1])
            queries.append(jnp.concatenate([query, pad], axis=-1))
        return jnp.concatenate(queries, axis=1)

    def __call__(
        self, query: jax.Array, z: jax.Array, *, deterministic: bool = True, output_attentions: bool = False
    ) -> Outputs:
        """`query` `(B, O, Cq)`, latents `z` `(B, N, D)` -> `(B, O, output_num_channels)`."""
        return self.decoder(query, z, deterministic=deterministic, output_attentions=output_attentions)


class AudioPostprocessor(ProjectionPostprocessor, kw_only=True):
    """HF's `PerceiverAudioPostprocessor`: the Dense `classifier` to `out_channels` = S samples per token,
    flattened."""

    def __call__(self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None) -> jax.Array:
        """`inputs` `(B, O, C)` -> audio samples `(B, O * S)`."""
        return super().__call__(inputs).reshape(inputs.shape[0], -1)


class MultimodalPostprocessor(Postprocessor, kw_only=True):
    """HF's `PerceiverMultimodalPostprocessor`: splits the decoder output per modality and postprocesses
    each with its own module.

    Attributes:
      modalities: the per-modality `Postprocessor`s.
    """

    modalities: Modalities

    @nn.compact
    def __call__(
        self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None
    ) -> dict[str, jax.Array]:
        """`inputs` `(B, O, C)` holding {name: O_m} outputs in sorted-name order -> {name: output}."""
        if modality_sizes is None:
            raise ValueError("the multimodal postprocessor needs modality_sizes to split its inputs.")
        parts = restructure(modality_sizes, inputs)
        return {name: self.modalities[name](parts[name]) for name in self.modalities.names()}
