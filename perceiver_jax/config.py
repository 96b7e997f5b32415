"""`PerceiverConfig`: every field of Hugging Face's config, plus the values HF hard-codes.

The first group of fields has the names and defaults of `transformers.PerceiverConfig`, so a config.json
written by HF loads unchanged. The later groups expose the numbers HF's heads, decoders and processors
hard-code (see `../shared/reference/hf-perceiver.md`); their defaults reproduce HF exactly, and changing
them gives architectures HF cannot express (those are not written back to a HF config.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

# Fields that are ours only: written by `to_dict`, never by `to_hf_dict`.
_HF_EXTRA_KEYS = ("num_labels", "id2label", "label2id", "architectures", "problem_type")


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
    """Hyper-parameters of a Perceiver IO model (immutable; use `replace` to derive one).

    HF fields (same names and defaults as `transformers.PerceiverConfig`):
      num_latents: N, the number of latent vectors the encoder cross-attends into.
      d_latents: D, the width of each latent vector.
      d_model: C, the width of the preprocessed inputs when there is no preprocessor (text: embedding width).
      num_blocks: how many times the self-attention block is applied (weights shared between blocks).
      num_self_attends_per_block: self-attention layers in one block (each with its own weights).
      num_self_attention_heads: heads of every encoder self-attention.
      num_cross_attention_heads: heads of the encoder cross-attention.
      qk_channels: width of queries and keys in the encoder's attentions (None: the query width for
        self-attention, see `cross_attention_shape_for_attention` for cross-attention).
      v_channels: width of values in the encoder's attentions (None: qk_channels).
      cross_attention_shape_for_attention: 'kv' or 'q', which side's width the cross-attention's qk width
        defaults to when `qk_channels` is None.
      self_attention_widening_factor: MLP hidden width / D in self-attention layers.
      cross_attention_widening_factor: MLP hidden width / D in the encoder cross-attention.
      hidden_act: MLP activation; only 'gelu' (exact erf form, as torch) is supported.
      attention_probs_dropout_prob: dropout on attention probabilities, training only.
      initializer_range: std of the normal init of kernels, embeddings, latents and position tables.
      layer_norm_eps: stored for HF round trips; HF never reads it (see `norm_eps`).
      use_query_residual: add the latents to the encoder cross-attention output.
      vocab_size: byte vocabulary of the text heads (256 bytes + 6 special tokens).
      max_position_embeddings: text position table length; also the MLM decoder's output length.
      image_size: image side of the learned-position image head.
      train_size: (H, W) of the optical-flow head's input frames.
      num_frames: video frames of the multimodal head.
      audio_samples_per_frame: audio samples per video frame of the multimodal head.
      samples_per_patch: audio samples per audio token of the multimodal head.
      output_shape: (B, T, H, W) of the multimodal video decoder queries.
      output_num_channels: query width of each modality decoder of the multimodal head.
      _label_trainable_num_channels: label query width of the multimodal head.
      num_labels, id2label, label2id, architectures, problem_type: HF's generic config fields
        (`num_labels` is the classifier width of the classification heads).

    Values HF hard-codes (defaults reproduce HF):
      norm_eps: epsilon of every LayerNorm (torch's default 1e-5; HF ignores `layer_norm_eps`).
      mlm_decoder_qk_channels, mlm_decoder_v_channels, mlm_decoder_num_heads,
      mlm_decoder_widening_factor, mlm_decoder_use_query_residual: the masked-LM decoder's
        cross-attention (qk 8*32, v = d_model when None, 8 heads, widening 1, no query residual).
      mlm_decoder_num_queries: output positions of the masked-LM decoder (None: max_position_embeddings).
      classification_decoder_num_heads, classification_decoder_widening_factor,
      classification_decoder_use_query_residual: the classification decoder's cross-attention.
      image_learned_conv_channels, image_learned_pos_channels, image_learned_project_pos_dim: the
        learned-position image head: 1x1 conv to 256 channels, a 256-channel position table projected to 256.
      image_fourier_num_bands, image_fourier_max_resolution: Fourier features of the pixel-input image
        head (64 bands at (224, 224), whatever the image size).
      image_conv_channels, image_conv_num_bands, image_conv_max_resolution: the conv-stem image head
        (64 stem channels; 64 bands at (56, 56)).
      flow_frame_channels, flow_temporal_downsample, flow_patch_channels: the optical-flow inputs, 27
        channels (a 3x3 RGB patch) per frame, 2 frames stacked by space-to-depth, Linear 54 -> 64.
      flow_num_bands: Fourier bands of the flow head's pixel positions (at max resolution train_size).
      flow_rescale_factor: the flow decoder's output is divided by it (100).
      flow_decoder_num_heads, flow_decoder_widening_factor, flow_decoder_use_query_residual: the flow
        decoder's cross-attention (1 head, widening 1, no query residual).
      multimodal_audio_num_bands: Fourier bands of the multimodal head's audio token positions, in the
        encoder and the audio decoder queries alike (192, at max resolution num_frames *
        audio_samples_per_frame samples).
      multimodal_image_num_bands: Fourier bands of the video positions, encoder and decoder queries alike
        (32, at max resolution (num_frames, image_size, image_size)).
      multimodal_image_channels: channels of the input video (3, RGB).
      multimodal_spatial_downsample, multimodal_temporal_downsample: the video is cut into patches of
        1 frame x 4 x 4 pixels by space-to-depth (one input token per patch).
      multimodal_image_output_channels: channels decoded per output pixel (3, RGB).
      multimodal_input_padding: every modality's tokens are padded with a learned vector to the widest
        modality's width + this (4).
      multimodal_query_padding: the same for the decoder queries (2).
      multimodal_audio_mask_prob, multimodal_image_mask_prob, multimodal_label_mask_prob: probability
        that a token of the modality is replaced by its learned mask token (0, 0, 1: the label input is
        always masked, so it has no effect on the outputs).
      multimodal_decoder_num_heads, multimodal_decoder_widening_factor,
      multimodal_decoder_use_query_residual: the shared multimodal decoder cross-attention (1 head,
        widening 1, no query residual; its qk width follows `cross_attention_shape_for_attention`).
    """

    # --- HF's PerceiverConfig fields.
    num_latents: int = 256
    d_latents: int = 1280
    d_model: int = 768
    num_blocks: int = 1
    num_self_attends_per_block: int = 26
    num_self_attention_heads: int = 8
    num_cross_attention_heads: int = 8
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attention_shape_for_attention: str = "kv"
    self_attention_widening_factor: int = 1
    cross_attention_widening_factor: int = 1
    hidden_act: str = "gelu"
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    use_query_residual: bool = True
    vocab_size: int = 262
    max_position_embeddings: int = 2048
    image_size: int | tuple[int, int] = 56
    train_size: tuple[int, int] = (368, 496)
    num_frames: int = 16
    audio_samples_per_frame: int = 1920
    samples_per_patch: int = 16
    output_shape: tuple[int, ...] = (1, 16, 224, 224)
    output_num_channels: int = 512
    _label_trainable_num_channels: int = 1024
    num_labels: int = 2
    id2label: Mapping[int, str] | None = None
    label2id: Mapping[str, int] | None = None
    architectures: tuple[str, ...] | None = None
    problem_type: str | None = None

    # --- Values HF hard-codes.
    norm_eps: float = 1e-5
    mlm_decoder_qk_channels: int = 8 * 32
    mlm_decoder_v_channels: int | None = None
    mlm_decoder_num_heads: int = 8
    mlm_decoder_widening_factor: int = 1
    mlm_decoder_use_query_residual: bool = False
    mlm_decoder_num_queries: int | None = None
    classification_decoder_num_heads: int = 1
    classification_decoder_widening_factor: int = 1
    classification_decoder_use_query_residual: bool = True
    image_learned_conv_channels: int = 256
    image_learned_pos_channels: int = 256
    image_learned_project_pos_dim: int = 256
    image_fourier_num_bands: int = 64
    image_fourier_max_resolution: tuple[int, int] = (224, 224)
    image_conv_channels: int = 64
    image_conv_num_bands: int = 64
    image_conv_max_resolution: tuple[int, int] = (56, 56)
    flow_frame_channels: int = 27
    flow_temporal_downsample: int = 2
    flow_patch_channels: int = 64
    flow_num_bands: int = 64
    flow_rescale_factor: float = 100.0
    flow_decoder_num_heads: int = 1
    flow_decoder_widening_factor: int = 1
    flow_decoder_use_query_residual: bool = False
    multimodal_audio_num_bands: int = 192
    multimodal_image_num_bands: int = 32
    multimodal_image_channels: int = 3
    multimodal_spatial_downsample: int = 4
    multimodal_temporal_downsample: int = 1
    multimodal_image_output_channels: int = 3
    multimodal_input_padding: int = 4
    multimodal_query_padding: int = 2
    multimodal_audio_mask_prob: float = 0.0
    multimodal_image_mask_prob: float = 0.0
    multimodal_label_mask_prob: float = 1.0
    multimodal_decoder_num_heads: int = 1
    multimodal_decoder_widening_factor: int = 1
    multimodal_decoder_use_query_residual: bool = False

    def __post_init__(self):
        for name in (
            "train_size",
            "output_shape",
            "architectures",
            "image_fourier_max_resolution",
            "image_conv_max_resolution",
        ):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))
        self._canonicalise_labels()
        self.validate()

    def _canonicalise_labels(self) -> None:
        """int keys in id2label (num_labels follows it); label maps equal to HF's defaults become None.

        HF fills in `LABEL_i` names and the inverse `label2id` itself, so dropping them keeps one
        representation per model: a config read back from HF equals the one written.
        """
        id2label = None if self.id2label is None else {int(k): v for k, v in self.id2label.items()}
        if id2label is not None:
            object.__setattr__(self, "num_labels", len(id2label))
        names = id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is not None:
            label2id = {k: int(v) for k, v in self.label2id.items()}
            object.__setattr__(
                self, "label2id", None if label2id == {v: k for k, v in names.items()} else label2id
            )
        if id2label == {i: f"LABEL_{i}" for i in range(len(names))}:
            id2label = None
        object.__setattr__(self, "id2label", id2label)

    def validate(self) -> None:
        """Raises `ValueError` naming the first field whose value cannot build a model."""
        positive = (
            "num_latents",
            "d_latents",
            "d_model",
            "num_blocks",
            "num_self_attends_per_block",
            "num_self_attention_heads",
            "num_cross_attention_heads",
            "self_attention_widening_factor",
            "cross_attention_widening_factor",
            "vocab_size",
            "max_position_embeddings",
            "num_frames",
            "audio_samples_per_frame",
            "samples_per_patch",
            "output_num_channels",
            "_label_trainable_num_channels",
            "num_labels",
            "mlm_decoder_qk_channels",
            "mlm_decoder_num_heads",
            "mlm_decoder_widening_factor",
            "classification_decoder_num_heads",
            "classification_decoder_widening_factor",
            "image_learned_conv_channels",
            "image_learned_pos_channels",
            "image_learned_project_pos_dim",
            "image_fourier_num_bands",
            "image_conv_channels",
            "image_conv_num_bands",
            "flow_frame_channels",
            "flow_temporal_downsample",
            "flow_patch_channels",
            "flow_num_bands",
            "flow_decoder_num_heads",
            "flow_decoder_widening_factor",
            "multimodal_audio_num_bands",
            "multimodal_image_num_bands",
            "multimodal_image_channels",
            "multimodal_spatial_downsample",
            "multimodal_temporal_downsample",
            "multimodal_image_output_channels",
            "multimodal_decoder_num_heads",
            "multimodal_decoder_widening_factor",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PerceiverConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("qk_channels", "v_channels", "mlm_decoder_v_channels", "mlm_decoder_num_queries"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"PerceiverConfig.{name} must be None or a positive integer, got {value!r}.")
        if not 0.0 <= self.attention_probs_dropout_prob < 1.0:
            raise ValueError(
                "PerceiverConfig.attention_probs_dropout_prob must be in [0, 1), got "
                f"{self.attention_probs_dropout_prob!r}."
            )
        if not self.flow_rescale_factor > 0:
            raise ValueError(
                f"PerceiverConfig.flow_rescale_factor must be positive, got {self.flow_rescale_factor!r}."
            )
        for name in ("multimodal_input_padding", "multimodal_query_padding"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"PerceiverConfig.{name} must be a non-negative integer, got {value!r}.")
        for name in (
            "multimodal_audio_mask_prob",
            "multimodal_image_mask_prob",
            "multimodal_label_mask_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PerceiverConfig.{name} must be in [0, 1], got {value!r}.")
        if self.norm_eps <= 0:
            raise ValueError(f"PerceiverConfig.norm_eps must be positive, got {self.norm_eps!r}.")
        if self.cross_attention_shape_for_attention not in ("kv", "q"):
            raise ValueError(
                "PerceiverConfig.cross_attention_shape_for_attention must be 'kv' or 'q', got "
                f"{self.cross_attention_shape_for_attention!r}."
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"PerceiverConfig.hidden_act={self.hidden_act!r} is not supported; use 'gelu'.")
        heads = {
            "num_self_attention_heads": self.num_self_attention_heads,
            "num_cross_attention_heads": self.num_cross_attention_heads,
        }
        for name, n in heads.items():
            if self.d_latents % n:
                raise ValueError(f"PerceiverConfig.{name}={n} must divide d_latents={self.d_latents}.")
            for channels in ("qk_channels", "v_channels"):
                width = getattr(self, channels)
                if width is not None and width % n:
                    raise ValueError(f"PerceiverConfig.{channels}={width} must be divisible by {name}={n}.")
        # HF's self-attention projects back to its value width and adds the latents: v must equal D.
        self_v = self.v_channels or self.qk_channels or self.d_latents
        if self_v != self.d_latents:
            source = (
                f"v_channels={self_v}" if self.v_channels else f"v_channels=None (= qk_channels={self_v})"
            )
            raise ValueError(
                f"PerceiverConfig.{source} must equal d_latents={self.d_latents}: the self-attention "
                "output has the value width and is added to the latents; set v_channels=d_latents."
            )
        sizes = {"train_size": self.train_size, "output_shape": self.output_shape}
        sizes["image_size"] = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,)
        sizes["image_fourier_max_resolution"] = self.image_fourier_max_resolution
        sizes["image_conv_max_resolution"] = self.image_conv_max_resolution
        for name, dims in sizes.items():
            if not dims or any(not isinstance(d, int) or d <= 0 for d in dims):
                raise ValueError(f"PerceiverConfig.{name} must hold positive integers, got {dims!r}.")

    # --- Construction and serialisation.

    def replace(self, **changes: Any) -> "PerceiverConfig":
        """Returns a copy with `changes` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, source: Any) -> "PerceiverConfig":
        """Builds a config from a HF `PerceiverConfig`, a dict, a `config.json` path or a model folder.

        Keys this class does not know (HF's generic bookkeeping such as `torch_dtype`) are ignored;
        known keys with impossible values raise `ValueError` naming the field.
        """
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"No Perceiver config at {path!r}: expected a config.json or a model folder."
                )
            with open(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} is not valid JSON: {e}") from e
        elif isinstance(source, Mapping):
            data = dict(source)
        elif hasattr(source, "to_dict"):
            data = source.to_dict()
        else:
            raise TypeError(
                f"PerceiverConfig.from_hf takes a HF config, a dict or a path, not {type(source)}."
            )
        model_type = data.get("model_type", "perceiver")
        if model_type != "perceiver":
            raise ValueError(
                f"config model_type is {model_type!r}, not 'perceiver': this is not a Perceiver model."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "id2label" in kwargs and kwargs["id2label"] is not None:
            kwargs.pop("num_labels", None)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (ours included); `from_hf` reads it back."""
        data = dataclasses.asdict(self)
        for k, v in data.items():
            if isinstance(v, tuple):
                data[k] = list(v)
        if data["id2label"] is not None:
            data["id2label"] = {str(k): v for k, v in data["id2label"].items()}
        return data

    def to_hf_dict(self) -> dict[str, Any]:
        """A dict `transformers.PerceiverConfig(**d)` (or its config.json) reads back unchanged.

        Raises ValueError when a hard-coded value differs from HF's: HF could not build that model.
        """
        default = PerceiverConfig()
        ours = [
            f.name
            for f in dataclasses.fields(self)
            if f.name.startswith(
                (
                    "norm_eps",
                    "mlm_",
                    "classification_",
                    "image_learned_",
                    "image_fourier_",
                    "image_conv_",
                    "flow_",
                    "multimodal_",
                )
            )
        ]
        changed = [n for n in ours if getattr(self, n) != getattr(default, n)]
        if changed:
            raise ValueError(
                f"Fields {changed} differ from HF's hard-coded values; HF cannot express this model."
            )
        data = {k: v for k, v in self.to_dict().items() if k not in ours}
        if data["id2label"] is None:
            data["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        if data["label2id"] is None:
            data["label2id"] = {v: int(k) for k, v in data["id2label"].items()}
        for k in _HF_EXTRA_KEYS:
            if data.get(k) is None:
                data.pop(k, None)
        data.pop("num_labels", None)
        data["model_type"] = "perceiver"
        return data

    # --- Derived widths (one place for HF's defaulting rules).

    @property
    def mlm_num_queries(self) -> int:
        """Output positions of the masked-LM decoder."""
        return self.mlm_decoder_num_queries or self.max_position_embeddings
