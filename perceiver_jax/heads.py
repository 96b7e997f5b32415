"""Task heads: a `PerceiverModel` (submodule `perceiver`) wired with the preprocessor and decoder of each
HF head class, so parameter names mirror HF's state dict.

Every head takes `(config, dtype, param_dtype, remat, attention_implementation)` and its `__call__`
returns the logits (float32), inference by default (`deterministic=True`, no RNG needed).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.decoders import BasicDecoder, ClassificationDecoder, EmbeddingDecoder, OpticalFlowDecoder
from perceiver_jax.model import PerceiverModel
from perceiver_jax.multimodal import (
    AudioPostprocessor,
    AudioPreprocessor,
    BasicVideoAutoencodingDecoder,
    Modalities,
    MultimodalDecoder,
    MultimodalPostprocessor,
    MultimodalPreprocessor,
)
from perceiver_jax.postprocessors import ClassificationPostprocessor, ProjectionPostprocessor
from perceiver_jax.position_encoding import FourierPositionEncoding, TrainablePositionEncoding
from perceiver_jax.preprocessors import OneHotPreprocessor, TextPreprocessor
from perceiver_jax.vision import ImagePreprocessor

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


def _image_size(config: PerceiverConfig) -> tuple[int, int]:
    """`config.image_size` as (height, width)."""
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


class _ImageClassifier(PerceiverHead):
    """Image classifier: RGB images `(B, H, W, 3)`, channels last -> logits `(B, num_labels)`.

    Subclasses give the `ImagePreprocessor`; the decoder is HF's classification decoder. With
    `deterministic=False` the conv stem's batch norm (conv head only) uses batch statistics and updates
    `batch_stats`, so apply with `mutable=['batch_stats']` (and a 'dropout' RNG for attention dropout).
    """

    def _image_preprocessor(self) -> ImagePreprocessor:
        """The head's preprocessor."""
        raise NotImplementedError

    def setup(self):
        self.perceiver = self._perceiver(
            input_preprocessor=self._image_preprocessor(), decoder=self._classification_decoder()
        )

    def example_inputs(self, batch_size: int = 1) -> tuple[Any, ...]:
        """Zero images `(batch_size, *image_size, 3)`."""
        return (jnp.zeros((batch_size, *_image_size(self.config), 3), jnp.float32),)

    def __call__(
        self, inputs: jax.Array, deterministic: bool = True, interpolate_pos_encoding: bool = False
    ) -> jax.Array:
        """Images `(B, H, W, 3)` -> logits `(B, num_labels)`.

        `interpolate_pos_encoding` resizes a learned position table to the image (torch bicubic, as HF);
        Fourier encodings take any image size.
        """
        if inputs.ndim != 4 or inputs.shape[-1] != 3:
            raise ValueError(
                f"images must be RGB (batch, height, width, 3), channels last; got shape {inputs.shape}."
            )
        logits, _ = self.perceiver(
            inputs, deterministic=deterministic, interpolate_pos_encoding=interpolate_pos_encoding
        )
        return logits.astype(jnp.float32)


class PerceiverForImageClassificationLearned(_ImageClassifier):
    """Image classifier with learned positions (HF `PerceiverForImageClassificationLearned`,
    `deepmind/vision-perceiver-learned`): a 1x1 conv to `image_learned_conv_channels`, concatenated with a
    learned `image_size`^2-position table projected to `image_learned_project_pos_dim`. Images of another
    size need `interpolate_pos_encoding=True`."""

    def _image_preprocessor(self) -> ImagePreprocessor:
        cfg = self.config
        height, width = _image_size(cfg)
        table = TrainablePositionEncoding(
            height * width,
            cfg.image_learned_pos_channels,
            cfg.initializer_range,
            self.dtype,
            self.param_dtype,
        )
        return ImagePreprocessor(
            table,
            prep_type="conv1x1",
            spatial_downsample=1,
            out_channels=cfg.image_learned_conv_channels,
            project_pos_dim=cfg.image_learned_project_pos_dim,
            init_std=cfg.initializer_range,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


class PerceiverForImageClassificationFourier(_ImageClassifier):
    """Image classifier on raw pixels with 2-D Fourier positions (HF `PerceiverForImageClassificationFourier`,
    `deepmind/vision-perceiver-fourier`): `image_fourier_num_bands` bands at `image_fourier_max_resolution`;
    any image size."""

    def _image_preprocessor(self) -> ImagePreprocessor:
        cfg = self.config
        return ImagePreprocessor(
            FourierPositionEncoding(
                cfg.image_fourier_num_bands, cfg.image_fourier_max_resolution, dtype=self.dtype
            ),
            prep_type="pixels",
            spatial_downsample=1,
            init_std=cfg.initializer_range,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


class PerceiverForImageClassificationConvProcessing(_ImageClassifier):
    """Image classifier with a conv stem (HF `PerceiverForImageClassificationConvProcessing`,
    `deepmind/vision-perceiver-conv`): `Conv2DDownsample` (4x, `image_conv_channels`, batch norm) and 2-D
    Fourier positions (`image_conv_num_bands` at `image_conv_max_resolution`); any image size."""

    def _image_preprocessor(self) -> ImagePreprocessor:
        cfg = self.config
        return ImagePreprocessor(
            FourierPositionEncoding(
                cfg.image_conv_num_bands, cfg.image_conv_max_resolution, dtype=self.dtype
            ),
            prep_type="conv",
            spatial_downsample=1,
            out_channels=cfg.image_conv_channels,
            init_std=cfg.initializer_range,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


class PerceiverForOpticalFlow(PerceiverHead):
    """Optical flow (HF `PerceiverForOpticalFlow`, `deepmind/optical-flow-perceiver`).

    Inputs are two frames of 3x3 RGB patches, channels last, `(B, 2, H, W, 27)` with (H, W) =
    `config.train_size` (see `perceiver_jax.flow` for building them from frames of any size). The frames
    are stacked per pixel (54 channels), projected by a Dense to `flow_patch_channels` and concatenated
    with Fourier positions; each pixel's token is also its decoder query. The output is the flow
    `(B, H, W, 2)` divided by `flow_rescale_factor`.

    Attributes:
      chunk_size: decode at most this many of the H*W queries at a time at inference (None: all at once;
        the full-size model has 182,528 queries, so set e.g. 8192 to bound memory).
    """

    chunk_size: int | None = None

    def setup(self):
        cfg = self.config
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size <= 0):
            raise ValueError(f"chunk_size must be None or a positive integer, got {self.chunk_size!r}.")
        positions = FourierPositionEncoding(cfg.flow_num_bands, cfg.train_size, dtype=self.dtype)
        preprocessor = ImagePreprocessor(
            positions,
            prep_type="patches",
            spatial_downsample=1,
            temporal_downsample=cfg.flow_temporal_downsample,
            out_channels=cfg.flow_patch_channels,
            conv_after_patching=True,
            init_std=cfg.initializer_range,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        decoder = BasicDecoder(
            cfg,
            output_num_channels=2,
            num_channels=cfg.flow_patch_channels + positions.output_size(),
            num_heads=cfg.flow_decoder_num_heads,
            widening_factor=cfg.flow_decoder_widening_factor,
            use_query_residual=cfg.flow_decoder_use_query_residual,
            chunk_size=self.chunk_size,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        flow_decoder = OpticalFlowDecoder(decoder, tuple(cfg.train_size), cfg.flow_rescale_factor)
        self.perceiver = self._perceiver(input_preprocessor=preprocessor, decoder=flow_decoder)

    def example_inputs(self, batch_size: int = 1) -> tuple[Any, ...]:
        """Zero patches `(batch_size, flow_temporal_downsample, *train_size, flow_frame_channels)`."""
        cfg = self.config
        shape = (batch_size, cfg.flow_temporal_downsample, *cfg.train_size, cfg.flow_frame_channels)
        return (jnp.zeros(shape, jnp.float32),)

    def __call__(self, inputs: jax.Array, deterministic: bool = True) -> jax.Array:
        """Patches `(B, 2, H, W, 27)` -> flow `(B, H, W, 2)` (float32)."""
        cfg = self.config
        expected = (cfg.flow_temporal_downsample, *cfg.train_size, cfg.flow_frame_channels)
        if inputs.ndim != 5 or tuple(inputs.shape[1:]) != expected:
            raise ValueError(
                f"optical-flow inputs must be (batch, {', '.join(map(str, expected))}): "
                f"{cfg.flow_temporal_downsample} frames of train_size={tuple(cfg.train_size)} pixels with "
                f"{cfg.flow_frame_channels} channels (3x3 RGB patches), channels last; got shape "
                f"{inputs.shape}. Build patches of larger or smaller frames with "
                "perceiver_jax.flow.compute_optical_flow."
            )
        flow, _ = self.perceiver(inputs, deterministic=deterministic)
        return flow.astype(jnp.float32)


class PerceiverForMultimodalAutoencoding(PerceiverHead):
    """Video, audio and label autoencoder (HF `PerceiverForMultimodalAutoencoding`,
    `deepmind/multimodal-perceiver`); the pieces are in `perceiver_jax.multimodal`.

    Inputs are a dict: `image`, a video `(B, T, H, W, C)` channels last (T, H, W multiples of the patch
    size, at least 2 patches in time); `audio` `(B, N, 1)` (N a multiple of `samples_per_patch`); `label`
    `(B, num_labels)`. The video is cut into 1x4x4 patches, the audio into S-sample tokens, the label is one
    token (always replaced by the learned mask token, so it does not affect the outputs); each gets Fourier
    positions of its own grid, and all are padded and concatenated (audio, image, label). Decoder queries
    are Fourier features of the output video grid `output_shape[1:]` and of the audio token grid
    (num_frames * audio_samples_per_frame / S tokens), and one learned label query.

    Outputs `{'audio': (B, O_audio * S), 'image': (B, O_image, C_out), 'label': (B, num_labels)}`, O_m the
    number of `subsampled_output_points[m]`, or every point of modality m's output grid when it has none
    (HF requires subsampled points; see `perceiver_jax.multimodal` for the position convention).

    Attributes:
      chunk_size: decode at most this many queries at a time (None: all at once). Decoding every point of
        the full-size model is 804,737 queries; chunks bound the attention memory (the queries and outputs
        of all points remain: about 8 GiB of temporaries at batch 1). HF's chunks of 6,272 video + 240
        audio points fit in one.
    """

    chunk_size: int | None = 8192

    def setup(self):
        cfg = self.config
        num_samples = cfg.num_frames * cfg.audio_samples_per_frame
        height, width = (cfg.image_size,) * 2 if isinstance(cfg.image_size, int) else cfg.image_size
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def audio_positions():
            return FourierPositionEncoding(cfg.multimodal_audio_num_bands, (num_samples,), dtype=self.dtype)

        def video_positions():
            resolution = (cfg.num_frames, height, width)
            return FourierPositionEncoding(cfg.multimodal_image_num_bands, resolution, dtype=self.dtype)

        preprocessor = MultimodalPreprocessor(
            Modalities(
                {
                    "audio": AudioPreprocessor(cfg.samples_per_patch, audio_positions(), self.dtype),
                    "image": ImagePreprocessor(
                        video_positions(),
                        prep_type="patches",
                        spatial_downsample=cfg.multimodal_spatial_downsample,
                        temporal_downsample=cfg.multimodal_temporal_downsample,
                        init_std=cfg.initializer_range,
                        **common,
                    ),
                    "label": OneHotPreprocessor(),
                }
            ),
            mask_probs={
                "audio": cfg.multimodal_audio_mask_prob,
                "image": cfg.multimodal_image_mask_prob,
                "label": cfg.multimodal_label_mask_prob,
            },
            min_padding_size=cfg.multimodal_input_padding,
            init_std=cfg.initializer_range,
            **common,
        )

        def queries(positions, index_dims, output_num_channels=cfg.output_num_channels):
            return BasicDecoder(
                cfg,
                output_num_channels=output_num_channels,
                output_position_encodings=positions,
                output_index_dims=index_dims,
                position_encoding_only=True,
                **common,
            )

        label_positions = TrainablePositionEncoding(
            1, cfg._label_trainable_num_channels, cfg.initializer_range, **common
        )
        decoder = MultimodalDecoder(
            cfg,
            Modalities(
                {
                    "audio": queries(audio_positions(), (num_samples // cfg.samples_per_patch,)),
                    "image": BasicVideoAutoencodingDecoder(
                        queries(video_positions(), tuple(cfg.output_shape[1:])), tuple(cfg.output_shape)
                    ),
                    "label": ClassificationDecoder(queries(label_positions, (1,), cfg.num_labels)),
                }
            ),
            output_num_channels=cfg.output_num_channels,
            min_padding_size=cfg.multimodal_query_padding,
            num_heads=cfg.multimodal_decoder_num_heads,
            widening_factor=cfg.multimodal_decoder_widening_factor,
            use_query_residual=cfg.multimodal_decoder_use_query_residual,
            chunk_size=self.chunk_size,
            attention_implementation=self.attention_implementation,
            **common,
        )
        init_std = cfg.initializer_range
        postprocessor = MultimodalPostprocessor(
            Modalities(
                {
                    "audio": AudioPostprocessor(cfg.samples_per_patch, init_std, **common),
                    "image": ProjectionPostprocessor(
                        cfg.multimodal_image_output_channels, init_std, **common
                    ),
                    "label": ClassificationPostprocessor(cfg.num_labels, init_std, **common),
                }
            )
        )
        self.perceiver = self._perceiver(
            input_preprocessor=preprocessor, decoder=decoder, output_postprocessor=postprocessor
        )

    def example_inputs(self, batch_size: int = 1) -> tuple[Any, ...]:
        """The smallest valid inputs (a video of 2 x 1 patches, one audio token, the label) and one
        subsampled output point per modality, so that `init` decodes little."""
        cfg = self.config
        t, s = cfg.multimodal_temporal_downsample, cfg.multimodal_spatial_downsample
        inputs = {
            "audio": jnp.zeros((batch_size, cfg.samples_per_patch, 1), jnp.float32),
            "image": jnp.zeros((batch_size, 2 * t, s, s, cfg.multimodal_image_channels), jnp.float32),
            "label": jnp.zeros((batch_size, cfg.num_labels), jnp.float32),
        }
        points = {"audio": jnp.zeros((1,), jnp.int32), "image": jnp.zeros((1,), jnp.int32)}
        return inputs, None, points

    def _check_inputs(self, inputs: Any) -> None:
        """Raises ValueError/TypeError naming the modality whose input cannot be autoencoded."""
        cfg = self.config
        names = ("audio", "image", "label")
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a dict with keys {names}; got {type(inputs).__name__}.")
        for name in names:
            if name not in inputs:
                raise ValueError(f"inputs lack modality {name!r}; expected keys {names}.")
        t, s = cfg.multimodal_temporal_downsample, cfg.multimodal_spatial_downsample
        video, audio, label = inputs["image"], inputs["audio"], inputs["label"]
        video_ok = (
            video.ndim == 5
            and video.shape[-1] == cfg.multimodal_image_channels
            and video.shape[1] % t == 0
            and video.shape[1] // t >= 2
            and video.shape[2] % s == 0
            and video.shape[3] % s == 0
        )
        if not video_ok:
            raise ValueError(
                f"image must be a video (batch, time, height, width, {cfg.multimodal_image_channels}), "
                f"channels last, with time a multiple of {t} (at least {2 * t} frames) and height, width "
                f"multiples of {s}; got shape {video.shape}."
            )
        if audio.ndim != 3 or audio.shape[-1] != 1 or audio.shape[1] % cfg.samples_per_patch:
            raise ValueError(
                f"audio must be (batch, samples, 1) with samples a multiple of samples_per_patch="
                f"{cfg.samples_per_patch}; got shape {audio.shape}."
            )
        if label.ndim != 2 or label.shape[1] != cfg.num_labels:
            raise ValueError(f"label must be (batch, num_labels={cfg.num_labels}); got shape {label.shape}.")
        batch_sizes = {name: inputs[name].shape[0] for name in names}
        if len(set(batch_sizes.values())) != 1:
            raise ValueError(f"the modalities have different batch sizes: {batch_sizes}.")

    def __call__(
        self,
        inputs: Mapping[str, jax.Array],
        attention_mask: jax.Array | None = None,
        subsampled_output_points: Mapping[str, jax.Array | None] | None = None,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        """Autoencodes `inputs` (see the class docstring).

        Args:
          inputs: {'image': (B, T, H, W, C), 'audio': (B, N, 1), 'label': (B, num_labels)}.
          attention_mask: `(B, M)` over the M concatenated input tokens (audio, image, label), 1 = keep.
          subsampled_output_points: {'image': (O_image,), 'audio': (O_audio,)} flat indices into the
            output video grid and the audio token grid; a missing or None entry decodes every point.
          deterministic: no dropout when True.

        Returns:
          {'audio': (B, O_audio * S), 'image': (B, O_image, C_out), 'label': (B, num_labels)}, float32.
        """
        self._check_inputs(inputs)
        outputs, _ = self.perceiver(inputs, attention_mask, subsampled_output_points, deterministic)
        return {name: value.astype(jnp.float32) for name, value in outputs.items()}


# HF architecture name -> head class; the vision, flow and multimodal heads register here too.
HEADS: dict[str, type[PerceiverHead]] = {
    "PerceiverForMaskedLM": PerceiverForMaskedLM,
    "PerceiverForSequenceClassification": PerceiverForSequenceClassification,
    "PerceiverForImageClassificationLearned": PerceiverForImageClassificationLearned,
    "PerceiverForImageClassificationFourier": PerceiverForImageClassificationFourier,
    "PerceiverForImageClassificationConvProcessing": PerceiverForImageClassificationConvProcessing,
    "PerceiverForOpticalFlow": PerceiverForOpticalFlow,
    "PerceiverForMultimodalAutoencoding": PerceiverForMultimodalAutoencoding,
}
