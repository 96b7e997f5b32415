"""Task heads: a `PerceiverModel` (submodule `perceiver`) wired with the preprocessor and decoder of each
HF head class, so parameter names mirror HF's state dict.

Every head is built as `Head(config, settings=Settings(...))` and called as `head.apply(variables,
inputs, *, attention_mask=None, deterministic=True, output_hidden_states=False, output_attentions=False,
...)` (head-specific keyword flags after those). It returns float32 logits, or a `PerceiverOutput` holding
them when `output_hidden_states` / `output_attentions` ask for more. Inference is the default
(`deterministic=True`, no RNG needed). Inputs are checked here, where they enter.
"""

from __future__ import annotations

import dataclasses
import math
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
from perceiver_jax.outputs import PerceiverOutput
from perceiver_jax.position_encoding import (
    FourierPositionEncoding,
    PositionEncodingProjector,
    TrainablePositionEncoding,
)
from perceiver_jax.postprocessors import ClassificationPostprocessor, ProjectionPostprocessor
from perceiver_jax.preprocessors import OneHotPreprocessor, TextPreprocessor, check_token_ids
from perceiver_jax.settings import Settings
from perceiver_jax.vision import Conv2DDownsample, ImagePreprocessor


class PerceiverHead(nn.Module):
    """The call convention and helpers of all heads; subclasses define `setup`, `example_inputs` and
    `check_inputs` (and `_logits` / `_forward` where the Perceiver's outputs are not the head's).

    Attributes:
      config: the model's hyper-parameters.
      settings: how it computes (dtype, attention implementation, remat).
    """

    config: PerceiverConfig
    _: dataclasses.KW_ONLY
    settings: Settings = Settings()

    def example_inputs(self, batch_size: int = 1) -> dict[str, Any]:
        """Keyword arguments of the right shapes and dtypes for `init` (and shape inference)."""
        raise NotImplementedError

    def check_inputs(self, inputs: Any, **options: Any) -> None:
        """Raises ValueError / TypeError saying what is wrong when `inputs` (and the head's own keyword
        `options`, e.g. `interpolate_pos_encoding`) cannot be this head's; a keyword the head does not
        take raises TypeError."""
        raise NotImplementedError

    def __call__(
        self,
        inputs: Any,
        *,
        attention_mask: jax.Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **options: Any,
    ):
        """Runs the head on checked `inputs` (shapes in the class docstring).

        Args:
          inputs: the head's inputs.
          attention_mask: `(B, M)` over the M input tokens, 1 = attend (None: all).
          deterministic: no dropout (and, in the conv head, batch norm on running statistics) when True.
          output_hidden_states, output_attentions: return a `PerceiverOutput` holding the outputs and
            HF's extras (the latents after each layer, the attention maps).
          **options: the head's own keyword arguments (`interpolate_pos_encoding` for image heads,
            `subsampled_output_points` for the multimodal head).

        Returns:
          The head's outputs in float32 (a dict for the multimodal head), or a `PerceiverOutput`.
        """
        self.check_inputs(inputs, **options)
        output = self._forward(
            inputs,
            attention_mask=attention_mask,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **options,
        )
        logits = jax.tree.map(lambda x: x.astype(jnp.float32), self._logits(output))
        return output.replace(logits=logits) if output_hidden_states or output_attentions else logits

    def _forward(self, inputs: Any, **kwargs: Any) -> PerceiverOutput:
        """The Perceiver on checked inputs."""
        return self.perceiver(inputs, **kwargs)

    def _logits(self, output: PerceiverOutput) -> Any:
        """The head's outputs from the Perceiver's (default: its logits)."""
        return output.logits

    def _perceiver(self, **modules) -> PerceiverModel:
        """A `PerceiverModel` named `perceiver` with this head's config, settings and the given modules."""
        return PerceiverModel(config=self.config, settings=self.settings, name="perceiver", **modules)

    def _fourier(self, index_dims, num_bands: int, max_resolution=None) -> FourierPositionEncoding:
        """A Fourier encoding with the config's `fourier_concat_pos` / `fourier_sine_only`."""
        return FourierPositionEncoding(
            index_dims=tuple(index_dims),
            num_bands=num_bands,
            max_resolution=None if max_resolution is None else tuple(max_resolution),
            concat_pos=self.config.fourier_concat_pos,
            sine_only=self.config.fourier_sine_only,
            settings=self.settings,
        )

    def _learned(self, index_dims: tuple[int, ...], num_channels: int) -> TrainablePositionEncoding:
        """A learned position table `index_dims` x `num_channels` with the config's init."""
        init_std = self.config.initializer_range
        return TrainablePositionEncoding(
            index_dims=tuple(index_dims), num_channels=num_channels, init_std=init_std, settings=self.settings
        )

    def _decoder(self, output_num_channels: int, attention, **options: Any) -> BasicDecoder:
        """A `BasicDecoder` with the attention shape `attention` (a `DecoderAttention`) and `options`."""
        attention = dataclasses.asdict(attention)
        return BasicDecoder(
            config=self.config,
            output_num_channels=output_num_channels,
            **attention,
            **options,
            settings=self.settings,
        )

    def _classification_decoder(self) -> ClassificationDecoder:
        """HF's `PerceiverClassificationDecoder`: one learned query of width d_latents."""
        cfg = self.config
        query = self._learned((1,), cfg.d_latents)
        return ClassificationDecoder(
            decoder=self._decoder(cfg.num_labels, cfg.classification_decoder, output_position_encodings=query)
        )


def _check_batch(batch_size: int, what: str) -> None:
    if batch_size < 1:
        raise ValueError(f"{what} has batch size {batch_size}; a batch needs at least one example.")


class _TextHead(PerceiverHead):
    """A head whose inputs are token ids `(B, T)` with an optional attention mask `(B, T)`."""

    def _text_preprocessor(self) -> TextPreprocessor:
        cfg = self.config
        return TextPreprocessor(
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            max_position_embeddings=cfg.max_position_embeddings,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )

    def example_inputs(self, batch_size: int = 1) -> dict[str, Any]:
        """Token ids `(batch_size, min(8, max_position_embeddings))` of zeros."""
        return {"inputs": jnp.zeros((batch_size, min(8, self.config.max_position_embeddings)), jnp.int32)}

    def check_inputs(self, inputs: jax.Array) -> None:
        """Token ids `(B, T)`, integers in [0, vocab_size), T <= max_position_embeddings."""
        check_token_ids(inputs, self.config.vocab_size, self.config.max_position_embeddings)
        _check_batch(inputs.shape[0], "the token ids")


class PerceiverForMaskedLM(_TextHead):
    """Byte-level masked language model (HF `PerceiverForMaskedLM`, `deepmind/language-perceiver`).

    `mlm_num_queries` learned decoder queries (default max_position_embeddings, whatever the input
    length) attend to the latents; logits use the input embedding table (tied) plus a bias. Token ids
    `(B, T)` and `attention_mask` `(B, T)` -> logits `(B, mlm_num_queries, vocab_size)`.
    """

    def __post_init__(self):
        mlm = self.config.mlm_decoder
        for name, width in (
            ("qk_channels", mlm.qk_channels),
            ("v_channels", mlm.v_channels or self.config.d_model),
        ):
            if width is not None and width % mlm.num_heads:
                raise ValueError(
                    f"PerceiverConfig.mlm_decoder.{name}={width} (v_channels None: d_model) must be "
                    f"divisible by mlm_decoder.num_heads={mlm.num_heads} to build the masked-LM decoder."
                )
        super().__post_init__()

    def setup(self):
        cfg = self.config
        attention = dataclasses.replace(cfg.mlm_decoder, v_channels=cfg.mlm_decoder.v_channels or cfg.d_model)
        queries = self._learned((cfg.mlm_num_queries,), cfg.d_model)
        decoder = self._decoder(
            cfg.d_latents, attention, output_position_encodings=queries, final_project=False
        )
        self.perceiver = self._perceiver(input_preprocessor=self._text_preprocessor(), decoder=decoder)
        self.embedding_decoder = EmbeddingDecoder(vocab_size=cfg.vocab_size, settings=self.settings)

    def _logits(self, output: PerceiverOutput) -> jax.Array:
        """Decoded queries `(B, mlm_num_queries, d_model)` -> logits `(B, mlm_num_queries, vocab_size)`."""
        return self.embedding_decoder(output.logits, self.perceiver.input_preprocessor.embeddings.embedding)


class PerceiverForSequenceClassification(_TextHead):
    """Text classifier (HF `PerceiverForSequenceClassification`): one learned query decodes the logits.
    Token ids `(B, T)` and `attention_mask` `(B, T)` -> logits `(B, num_labels)`."""

    def setup(self):
        self.perceiver = self._perceiver(
            input_preprocessor=self._text_preprocessor(), decoder=self._classification_decoder()
        )


class _ImageClassifier(PerceiverHead):
    """Image classifier: RGB images `(B, H, W, 3)`, channels last -> logits `(B, num_labels)`;
    `attention_mask` `(B, M)` is over the M image tokens. `interpolate_pos_encoding=True` resizes a learned
    position table to images of another size (torch bicubic, as HF; the Fourier heads take any size).

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

    def example_inputs(self, batch_size: int = 1) -> dict[str, Any]:
        """Zero images `(batch_size, *image_size, 3)`."""
        return {"inputs": jnp.zeros((batch_size, *self.config.image_hw, 3), jnp.float32)}

    def check_inputs(self, inputs: jax.Array, interpolate_pos_encoding: bool = False) -> None:
        """Float RGB images `(B, H, W, 3)`."""
        if inputs.ndim != 4 or inputs.shape[-1] != 3:
            raise ValueError(
                f"images must be RGB (batch, height, width, 3), channels last; got shape {inputs.shape}."
            )
        if not jnp.issubdtype(inputs.dtype, jnp.floating):
            raise TypeError(
                "images must be floats (normalised as perceiver_jax.image_processing does); "
                f"got dtype {inputs.dtype}."
            )
        _check_batch(inputs.shape[0], "the images")


class PerceiverForImageClassificationLearned(_ImageClassifier):
    """Image classifier with learned positions (HF `PerceiverForImageClassificationLearned`,
    `deepmind/vision-perceiver-learned`): a 1x1 conv to `image_learned_conv_channels`, concatenated with a
    learned `image_size` position table projected to `image_learned_project_pos_dim`. Images of another
    size need `interpolate_pos_encoding=True`."""

    def _image_preprocessor(self) -> ImagePreprocessor:
        cfg = self.config
        table = self._learned(cfg.image_hw, cfg.image_learned_pos_channels)
        positions = PositionEncodingProjector(
            encoding=table,
            output_channels=cfg.image_learned_project_pos_dim,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )
        return ImagePreprocessor(
            position_embeddings=positions,
            prep_type="conv1x1",
            spatial_downsample=1,
            out_channels=cfg.image_learned_conv_channels,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )

    def check_inputs(self, inputs: jax.Array, interpolate_pos_encoding: bool = False) -> None:
        """Float RGB images `(B, *image_size, 3)`, or of any size with `interpolate_pos_encoding`."""
        super().check_inputs(inputs, interpolate_pos_encoding)
        if not interpolate_pos_encoding and tuple(inputs.shape[1:3]) != self.config.image_hw:
            side = "x".join(map(str, self.config.image_hw))
            raise ValueError(
                f"the images are {inputs.shape[1]}x{inputs.shape[2]} but the learned position table is "
                f"{side} (image_size): pass interpolate_pos_encoding=True to resize the table (torch "
                "bicubic, as HF), or resize the images to the size the table was trained for."
            )


class PerceiverForImageClassificationFourier(_ImageClassifier):
    """Image classifier on raw pixels with 2-D Fourier positions (HF `PerceiverForImageClassificationFourier`,
    `deepmind/vision-perceiver-fourier`): `image_fourier_num_bands` bands at `image_fourier_max_resolution`;
    any image size."""

    def _image_preprocessor(self) -> ImagePreprocessor:
        cfg = self.config
        return ImagePreprocessor(
            position_embeddings=self._fourier(
                cfg.image_hw, cfg.image_fourier_num_bands, cfg.image_fourier_max_resolution
            ),
            prep_type="pixels",
            spatial_downsample=1,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )


class PerceiverForImageClassificationConvProcessing(_ImageClassifier):
    """Image classifier with a conv stem (HF `PerceiverForImageClassificationConvProcessing`,
    `deepmind/vision-perceiver-conv`): `Conv2DDownsample` (`image_conv_*`: 7x7 stride-2 conv, batch norm,
    3x3 stride-2 max-pool, 64 channels) and 2-D Fourier positions (`image_conv_num_bands` at
    `image_conv_max_resolution`); any image size the stem can downsample."""

    def _stem(self) -> Conv2DDownsample:
        cfg = self.config
        return Conv2DDownsample(
            out_channels=cfg.image_conv_channels,
            kernel_size=cfg.image_conv_kernel_size,
            stride=cfg.image_conv_stride,
            padding=cfg.image_conv_padding,
            pool_size=cfg.image_conv_pool_size,
            pool_stride=cfg.image_conv_pool_stride,
            batchnorm_momentum=cfg.image_conv_batchnorm_momentum,
            batchnorm_eps=cfg.image_conv_batchnorm_eps,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )

    def _image_preprocessor(self) -> ImagePreprocessor:
        cfg = self.config
        stem = self._stem()
        return ImagePreprocessor(
            position_embeddings=self._fourier(
                stem.output_size(*cfg.image_hw), cfg.image_conv_num_bands, cfg.image_conv_max_resolution
            ),
            prep_type="conv",
            spatial_downsample=1,
            convnet=stem,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )

    def check_inputs(self, inputs: jax.Array, interpolate_pos_encoding: bool = False) -> None:
        """Float RGB images `(B, H, W, 3)` the stem can downsample."""
        super().check_inputs(inputs, interpolate_pos_encoding)
        stem = self.perceiver.input_preprocessor.convnet
        if min(inputs.shape[1:3]) < stem.min_input_size():
            raise ValueError(
                f"{inputs.shape[1]}x{inputs.shape[2]} images are too small for the conv stem (its "
                "convolution and max-pool leave no pixel): use images of at least "
                f"{stem.min_input_size()} pixels a side."
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

    _: dataclasses.KW_ONLY
    chunk_size: int | None = None

    def setup(self):
        cfg = self.config
        preprocessor = ImagePreprocessor(
            position_embeddings=self._fourier(cfg.train_size, cfg.flow_num_bands),
            prep_type="patches",
            spatial_downsample=1,
            temporal_downsample=cfg.flow_temporal_downsample,
            out_channels=cfg.flow_patch_channels,
            conv_after_patching=True,
            in_channels=cfg.flow_frame_channels,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )
        decoder = self._decoder(
            2, cfg.flow_decoder, num_channels=preprocessor.num_channels(), chunk_size=self.chunk_size
        )
        flow_decoder = OpticalFlowDecoder(
            decoder=decoder, output_image_shape=tuple(cfg.train_size), rescale_factor=cfg.flow_rescale_factor
        )
        self.perceiver = self._perceiver(input_preprocessor=preprocessor, decoder=flow_decoder)

    def example_inputs(self, batch_size: int = 1) -> dict[str, Any]:
        """Zero patches `(batch_size, flow_temporal_downsample, *train_size, flow_frame_channels)`."""
        cfg = self.config
        shape = (batch_size, cfg.flow_temporal_downsample, *cfg.train_size, cfg.flow_frame_channels)
        return {"inputs": jnp.zeros(shape, jnp.float32)}

    def check_inputs(self, inputs: jax.Array) -> None:
        """Patches `(B, flow_temporal_downsample, *train_size, flow_frame_channels)`."""
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
        _check_batch(inputs.shape[0], "the optical-flow inputs")


MODALITIES = ("audio", "image", "label")


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
      chunk_size: video points decoded at a time (None: all at once). Decoding every point (no subsampled
        points) is streamed: `chunk_size` video points and the matching share of the audio tokens per
        chunk, each chunk built, decoded and postprocessed before the next, so memory does not grow with the
        output size (the full-size model decodes 804,737 points). HF's chunks of 6,272 video + 240 audio
        points fit in one.
    """

    _: dataclasses.KW_ONLY
    chunk_size: int | None = 8192

    def setup(self):
        cfg = self.config
        num_samples = cfg.num_frames * cfg.audio_samples_per_frame
        num_audio_tokens = num_samples // cfg.samples_per_patch
        height, width = cfg.image_hw
        t, s = cfg.multimodal_temporal_downsample, cfg.multimodal_spatial_downsample
        video_resolution = (cfg.num_frames, height, width)

        def audio_positions():
            return self._fourier((num_audio_tokens,), cfg.multimodal_audio_num_bands, (num_samples,))

        def video_positions(index_dims):
            return self._fourier(index_dims, cfg.multimodal_image_num_bands, video_resolution)

        common = dict(init_std=cfg.initializer_range, settings=self.settings)
        preprocessor = MultimodalPreprocessor(
            modalities=Modalities(
                members={
                    "audio": AudioPreprocessor(
                        samples_per_patch=cfg.samples_per_patch,
                        position_embeddings=audio_positions(),
                        settings=self.settings,
                    ),
                    "image": ImagePreprocessor(
                        position_embeddings=video_positions((cfg.num_frames // t, height // s, width // s)),
                        prep_type="patches",
                        spatial_downsample=s,
                        temporal_downsample=t,
                        in_channels=cfg.multimodal_image_channels,
                        **common,
                    ),
                    "label": OneHotPreprocessor(channels=cfg.num_labels),
                }
            ),
            mask_probs={
                "audio": cfg.multimodal_audio_mask_prob,
                "image": cfg.multimodal_image_mask_prob,
                "label": cfg.multimodal_label_mask_prob,
            },
            min_padding_size=cfg.multimodal_input_padding,
            **common,
        )

        def queries(positions, output_num_channels=cfg.output_num_channels):
            return BasicDecoder(
                config=cfg,
                output_num_channels=output_num_channels,
                output_position_encodings=positions,
                position_encoding_only=True,
                settings=self.settings,
            )

        label_positions = self._learned((1,), cfg._label_trainable_num_channels)
        decoder = MultimodalDecoder(
            config=cfg,
            modalities=Modalities(
                members={
                    "audio": queries(audio_positions()),
                    "image": BasicVideoAutoencodingDecoder(
                        decoder=queries(video_positions(tuple(cfg.output_shape[1:])))
                    ),
                    "label": ClassificationDecoder(decoder=queries(label_positions, cfg.num_labels)),
                }
            ),
            output_num_channels=cfg.output_num_channels,
            min_padding_size=cfg.multimodal_query_padding,
            chunk_size=self.chunk_size,
            **dataclasses.asdict(cfg.multimodal_decoder),
            settings=self.settings,
        )
        postprocessor = MultimodalPostprocessor(
            modalities=Modalities(
                members={
                    "audio": AudioPostprocessor(out_channels=cfg.samples_per_patch, **common),
                    "image": ProjectionPostprocessor(
                        out_channels=cfg.multimodal_image_output_channels, **common
                    ),
                    "label": ClassificationPostprocessor(out_channels=cfg.num_labels, **common),
                }
            )
        )
        self.perceiver = self._perceiver(
            input_preprocessor=preprocessor, decoder=decoder, output_postprocessor=postprocessor
        )

    def example_inputs(self, batch_size: int = 1) -> dict[str, Any]:
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
        return {"inputs": inputs, "subsampled_output_points": points}

    def check_inputs(self, inputs: Any, subsampled_output_points: Any = None) -> None:
        """Names the modality whose input cannot be autoencoded (the points are checked by the decoder)."""
        cfg = self.config
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a dict with keys {MODALITIES}; got {type(inputs).__name__}.")
        missing = [name for name in MODALITIES if name not in inputs]
        unknown = sorted(set(inputs) - set(MODALITIES))
        if missing or unknown:
            raise ValueError(
                f"inputs must have exactly the modalities {MODALITIES}; missing {missing}, unknown {unknown}."
            )
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
        batch_sizes = {name: inputs[name].shape[0] for name in MODALITIES}
        if len(set(batch_sizes.values())) != 1:
            raise ValueError(f"the modalities have different batch sizes: {batch_sizes}.")
        _check_batch(video.shape[0], "the multimodal inputs")

    def _forward(
        self,
        inputs: Mapping[str, jax.Array],
        *,
        subsampled_output_points: Mapping[str, jax.Array | None] | None = None,
        **kwargs: Any,
    ) -> PerceiverOutput:
        """The Perceiver, or, decoding every point with a `chunk_size` (and no attention maps asked for),
        the encoder followed by the streamed reconstruction (`_reconstruct`)."""
        stream = subsampled_output_points is None and self.chunk_size is not None
        if stream and not kwargs["output_attentions"] and not self.is_initializing():
            encoded = self.perceiver.encode(inputs, **kwargs)
            return encoded.output.replace(logits=self._reconstruct(encoded, kwargs["deterministic"]))
        return self.perceiver(inputs, subsampled_output_points=subsampled_output_points, **kwargs)

    def _reconstruct(self, encoded, deterministic: bool) -> dict[str, jax.Array]:
        """Every output point, decoded `chunk_size` video points (and the matching share of the audio
        tokens) at a time in a `lax.map`, each chunk postprocessed before the next: memory stays that of one
        chunk whatever the output size, but for the final outputs. Equal to decoding all points at once
        (`perceiver_jax.multimodal`: decoding all points is decoding any partition of them)."""
        cfg = self.config
        num_video = math.prod(cfg.output_shape[1:])
        num_audio = cfg.num_frames * cfg.audio_samples_per_frame // cfg.samples_per_patch
        num_chunks = -(-num_video // self.chunk_size)
        per_chunk = {"image": self.chunk_size, "audio": -(-num_audio // num_chunks)}
        sizes = {"image": num_video, "audio": num_audio}

        def chunk(i):  # the last chunk repeats the last point; the copies are cut below
            points = {
                name: jnp.minimum(i * count + jnp.arange(count), sizes[name] - 1)
                for name, count in per_chunk.items()
            }
            output = self.perceiver.decode(
                encoded, subsampled_output_points=points, deterministic=deterministic
            )
            return output.logits

        chunks = jax.lax.map(chunk, jnp.arange(num_chunks))  # {name: (num_chunks, B, ...)}

        def joined(x, length):  # (num_chunks, B, n, ...) -> (B, length, ...)
            x = jnp.moveaxis(x, 0, 1)
            return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]

        return {
            "image": joined(chunks["image"], num_video),
            "audio": joined(chunks["audio"], num_audio * cfg.samples_per_patch),
            "label": chunks["label"][0],
        }


# HF architecture name -> head class.
HEADS: dict[str, type[PerceiverHead]] = {
    "PerceiverForMaskedLM": PerceiverForMaskedLM,
    "PerceiverForSequenceClassification": PerceiverForSequenceClassification,
    "PerceiverForImageClassificationLearned": PerceiverForImageClassificationLearned,
    "PerceiverForImageClassificationFourier": PerceiverForImageClassificationFourier,
    "PerceiverForImageClassificationConvProcessing": PerceiverForImageClassificationConvProcessing,
    "PerceiverForOpticalFlow": PerceiverForOpticalFlow,
    "PerceiverForMultimodalAutoencoding": PerceiverForMultimodalAutoencoding,
}
