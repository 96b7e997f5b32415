"""`PerceiverConfig`: every field of Hugging Face's config, plus the values HF hard-codes.

Fields marked `hf` have the names and defaults of `transformers.PerceiverConfig`, so a config.json
written by HF loads unchanged. The others expose the numbers HF's heads, decoders and processors
hard-code; their defaults reproduce HF exactly, and changing them gives architectures HF cannot express
(`to_hf_dict` refuses them). Each field is documented, typed and checked where it is declared: the
field's metadata drives validation, the HF/ours split and what fine-tuning may change.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from typing import Any, Callable, Mapping, Union

# --- Checks a field's metadata can name (value -> problem, or None when fine).


def _positive(value) -> str | None:
    return None if value > 0 else "must be positive"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be non-negative"


def _probability(value) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _dropout(value) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def _positive_dims(value) -> str | None:
    dims = value if isinstance(value, tuple) else (value,)
    return None if dims and all(d > 0 for d in dims) else "must hold positive integers"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value) -> str | None:
        return None if value in choices else f"must be one of {choices}"

    return check


def _field(
    default: Any,
    doc: str,
    *,
    hf: bool = False,
    head: bool = False,
    check=None,
    used_by: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its documentation and metadata.

    Args:
      default: the default value (HF's default for `hf` fields and for the values HF hard-codes).
      doc: what the field means.
      hf: the field is one of `transformers.PerceiverConfig`'s (written by `to_hf_dict`).
      head: the field configures only a head's decoder, labels or dropout, so a model fine-tuned from a
        pretrained one may change it.
      check: a function value -> problem (or None) applied after the type check; None values of
        optional fields are not checked.
      used_by: the HF head classes whose model the field shapes (None: every head).
    """
    metadata = dict(doc=doc, hf=hf, head=head, check=check, used_by=used_by)
    return dataclasses.field(default=default, metadata=metadata)


# --- Type checks derived from the annotations.


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is tuple:
        items = "integers" if args[0] is int else "strings"
        return f"a tuple of {items}" if args[-1] is Ellipsis else f"a tuple of {len(args)} {items}"
    if origin is not None:
        return "a mapping"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _has_type(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple) or (args[-1] is not Ellipsis and len(value) != len(args)):
            return False
        return all(_has_type(v, args[0]) for v in value)
    if origin is not None:  # Mapping[...]
        return isinstance(value, Mapping)
    return isinstance(value, annotation)


def _validate_fields(obj: Any) -> None:
    """Raises ValueError naming the first field of dataclass `obj` whose value has the wrong type or fails
    its metadata check."""
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _has_type(value, hints[f.name]):
            raise ValueError(
                f"{type(obj).__name__}.{f.name} must be {_describe(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})."
            )
        problem = f.metadata["check"](value) if f.metadata.get("check") and value is not None else None
        if problem:
            raise ValueError(f"{type(obj).__name__}.{f.name} {problem}, got {value!r}.")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class DecoderAttention:
    """The cross-attention of a decoder: queries attend to the latents once, then an MLP."""

    num_heads: int = _field(1, "attention heads", check=_positive)
    qk_channels: int | None = _field(
        None,
        "query/key width (None: d_latents, or the query width under cross_attention_shape 'q')",
        check=_positive,
    )
    v_channels: int | None = _field(None, "value width (None: qk_channels)", check=_positive)
    widening_factor: int = _field(1, "MLP hidden width / query width", check=_positive)
    use_query_residual: bool = _field(False, "add the queries to the attention output")

    def __post_init__(self):
        _validate_fields(self)


# The HF head classes that build with a field HF hard-codes (its `used_by`; the other heads ignore it).
_MASKED_LM = ("PerceiverForMaskedLM",)
_IMAGE_LEARNED = ("PerceiverForImageClassificationLearned",)
_IMAGE_FOURIER = ("PerceiverForImageClassificationFourier",)
_IMAGE_CONV = ("PerceiverForImageClassificationConvProcessing",)
_CLASSIFIERS = ("PerceiverForSequenceClassification", *_IMAGE_LEARNED, *_IMAGE_FOURIER, *_IMAGE_CONV)
_FLOW = ("PerceiverForOpticalFlow",)
_MULTIMODAL = ("PerceiverForMultimodalAutoencoding",)
_FOURIER = (*_IMAGE_FOURIER, *_IMAGE_CONV, *_FLOW, *_MULTIMODAL)


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
    """Hyper-parameters of a Perceiver IO model (immutable; `replace` derives one). See each field's `doc`
    in `PerceiverConfig.describe()`; N latents of width D, inputs of width C."""

    # --- HF's PerceiverConfig fields.
    num_latents: int = _field(256, "N, the number of latent vectors", hf=True, check=_positive)
    d_latents: int = _field(1280, "D, the width of each latent vector", hf=True, check=_positive)
    d_model: int = _field(
        768,
        "C, the width of the inputs without a preprocessor (text: the embedding width)",
        hf=True,
        check=_positive,
    )
    num_blocks: int = _field(
        1, "times the self-attention block is applied (blocks share weights)", hf=True, check=_positive
    )
    num_self_attends_per_block: int = _field(
        26, "self-attention layers in a block (each with its own weights)", hf=True, check=_positive
    )
    num_self_attention_heads: int = _field(8, "heads of every self-attention", hf=True, check=_positive)
    num_cross_attention_heads: int = _field(
        8, "heads of the encoder cross-attention", hf=True, check=_positive
    )
    qk_channels: int | None = _field(
        None,
        "query/key width of the encoder's attentions (None: see cross_attention_shape_for_attention)",
        hf=True,
        check=_positive,
    )
    v_channels: int | None = _field(
        None, "value width of the encoder's attentions (None: qk_channels)", hf=True, check=_positive
    )
    cross_attention_shape_for_attention: str = _field(
        "kv",
        "whose width qk_channels=None gives cross-attentions: 'kv' (keys) or 'q' (queries)",
        hf=True,
        check=_one_of("kv", "q"),
    )
    self_attention_widening_factor: int = _field(
        1, "MLP hidden width / D in self-attention layers", hf=True, check=_positive
    )
    cross_attention_widening_factor: int = _field(
        1, "MLP hidden width / D in the encoder cross-attention", hf=True, check=_positive
    )
    hidden_act: str = _field(
        "gelu", "MLP activation; only 'gelu' (exact erf form)", hf=True, check=_one_of("gelu")
    )
    attention_probs_dropout_prob: float = _field(
        0.1, "dropout on attention probabilities, training only", hf=True, head=True, check=_dropout
    )
    initializer_range: float = _field(
        0.02,
        "std of the normal init of kernels, embeddings, latents and tables",
        hf=True,
        check=_non_negative,
    )
    layer_norm_eps: float = _field(
        1e-12, "kept for HF round trips; HF never reads it (see norm_eps)", hf=True
    )
    use_query_residual: bool = _field(True, "add the latents to the encoder cross-attention output", hf=True)
    vocab_size: int = _field(
        262, "byte vocabulary of the text heads (256 bytes + 6 special)", hf=True, check=_positive
    )
    max_position_embeddings: int = _field(
        2048,
        "text position table length; also the masked-LM decoder's output length",
        hf=True,
        check=_positive,
    )
    image_size: int | tuple[int, int] = _field(
        56, "image side (or (H, W)) of the image heads' inputs", hf=True, check=_positive_dims
    )
    train_size: tuple[int, int] = _field(
        (368, 496), "(H, W) of the optical-flow head's input frames", hf=True, check=_positive_dims
    )
    num_frames: int = _field(16, "video frames of the multimodal head", hf=True, check=_positive)
    audio_samples_per_frame: int = _field(
        1920, "audio samples per video frame of the multimodal head", hf=True, check=_positive
    )
    samples_per_patch: int = _field(
        16, "audio samples per audio token of the multimodal head", hf=True, check=_positive
    )
    output_shape: tuple[int, ...] = _field(
        (1, 16, 224, 224),
        "(B, T, H, W) of the multimodal video decoder queries",
        hf=True,
        head=True,
        check=_positive_dims,
    )
    output_num_channels: int = _field(
        512,
        "query width of each modality decoder of the multimodal head",
        hf=True,
        head=True,
        check=_positive,
    )
    _label_trainable_num_channels: int = _field(
        1024, "label query width of the multimodal head", hf=True, head=True, check=_positive
    )
    num_labels: int = _field(
        2, "classifier width of the classification heads", hf=True, head=True, check=_positive
    )
    id2label: Mapping[int, str] | None = _field(None, "class names (sets num_labels)", hf=True, head=True)
    label2id: Mapping[str, int] | None = _field(None, "inverse of id2label", hf=True, head=True)
    architectures: tuple[str, ...] | None = _field(None, "HF head class names", hf=True, head=True)
    problem_type: str | None = _field(None, "HF's generic problem type", hf=True, head=True)

    # --- Values HF hard-codes (defaults reproduce HF).
    norm_eps: float = _field(1e-5, "epsilon of every LayerNorm (torch's default)", check=_positive)
    self_attention_use_query_residual: bool = _field(True, "add the latents to each self-attention's output")
    fourier_concat_pos: bool = _field(
        True, "Fourier position features start with the raw coordinates", used_by=_FOURIER
    )
    fourier_sine_only: bool = _field(False, "Fourier position features without the cosines", used_by=_FOURIER)
    mlm_decoder: DecoderAttention = _field(
        DecoderAttention(num_heads=8, qk_channels=8 * 32),
        "the masked-LM decoder (v_channels None: d_model)",
        head=True,
        used_by=_MASKED_LM,
    )
    mlm_decoder_num_queries: int | None = _field(
        None,
        "output positions of the masked-LM decoder (None: max_position_embeddings)",
        head=True,
        check=_positive,
        used_by=_MASKED_LM,
    )
    classification_decoder: DecoderAttention = _field(
        DecoderAttention(use_query_residual=True),
        "the classification decoder (one learned query)",
        head=True,
        used_by=_CLASSIFIERS,
    )
    image_learned_conv_channels: int = _field(
        256, "learned-position image head: 1x1 conv channels", check=_positive, used_by=_IMAGE_LEARNED
    )
    image_learned_pos_channels: int = _field(
        256, "learned-position image head: table width", check=_positive, used_by=_IMAGE_LEARNED
    )
    image_learned_project_pos_dim: int = _field(
        256,
        "learned-position image head: the table is projected to this width",
        check=_positive,
        used_by=_IMAGE_LEARNED,
    )
    image_fourier_num_bands: int = _field(
        64, "pixel image head: Fourier bands per dimension", check=_positive, used_by=_IMAGE_FOURIER
    )
    image_fourier_max_resolution: tuple[int, int] = _field(
        (224, 224),
        "pixel image head: resolution of the top frequency (not tied to image_size)",
        check=_positive_dims,
        used_by=_IMAGE_FOURIER,
    )
    image_conv_channels: int = _field(
        64, "conv image head: stem channels", check=_positive, used_by=_IMAGE_CONV
    )
    image_conv_kernel_size: int = _field(
        7, "conv image head: stem kernel size", check=_positive, used_by=_IMAGE_CONV
    )
    image_conv_stride: int = _field(2, "conv image head: stem stride", check=_positive, used_by=_IMAGE_CONV)
    image_conv_padding: int = _field(
        3, "conv image head: stem zero padding on every side", check=_non_negative, used_by=_IMAGE_CONV
    )
    image_conv_pool_size: int = _field(
        3, "conv image head: max-pool window (no padding)", check=_positive, used_by=_IMAGE_CONV
    )
    image_conv_pool_stride: int = _field(
        2, "conv image head: max-pool stride", check=_positive, used_by=_IMAGE_CONV
    )
    image_conv_batchnorm_momentum: float = _field(
        0.9,
        "conv image head: weight of the old running statistics (flax convention; torch's 0.1)",
        check=_probability,
        used_by=_IMAGE_CONV,
    )
    image_conv_batchnorm_eps: float = _field(
        1e-5, "conv image head: BatchNorm epsilon", check=_positive, used_by=_IMAGE_CONV
    )
    image_conv_num_bands: int = _field(
        64, "conv image head: Fourier bands", check=_positive, used_by=_IMAGE_CONV
    )
    image_conv_max_resolution: tuple[int, int] = _field(
        (56, 56),
        "conv image head: resolution of the top frequency",
        check=_positive_dims,
        used_by=_IMAGE_CONV,
    )
    flow_frame_channels: int = _field(
        27, "optical flow: channels per frame (a 3x3 RGB patch)", check=_positive, used_by=_FLOW
    )
    flow_temporal_downsample: int = _field(
        2, "optical flow: frames stacked per pixel", check=_positive, used_by=_FLOW
    )
    flow_patch_channels: int = _field(
        64, "optical flow: Dense width of the stacked patches", check=_positive, used_by=_FLOW
    )
    flow_num_bands: int = _field(
        64, "optical flow: Fourier bands (at max resolution train_size)", check=_positive, used_by=_FLOW
    )
    flow_rescale_factor: float = _field(
        100.0, "optical flow: the decoder output is divided by it", head=True, check=_positive, used_by=_FLOW
    )
    flow_decoder: DecoderAttention = _field(
        DecoderAttention(), "the optical-flow decoder", head=True, used_by=_FLOW
    )
    multimodal_audio_num_bands: int = _field(
        192,
        "multimodal: Fourier bands of audio positions (at max resolution num_frames x samples)",
        check=_positive,
        used_by=_MULTIMODAL,
    )
    multimodal_image_num_bands: int = _field(
        32,
        "multimodal: Fourier bands of video positions (at max resolution (T, H, W))",
        check=_positive,
        used_by=_MULTIMODAL,
    )
    multimodal_image_channels: int = _field(
        3, "multimodal: channels of the input video", check=_positive, used_by=_MULTIMODAL
    )
    multimodal_spatial_downsample: int = _field(
        4, "multimodal: video patch side (space-to-depth)", check=_positive, used_by=_MULTIMODAL
    )
    multimodal_temporal_downsample: int = _field(
        1, "multimodal: video patch length in frames", check=_positive, used_by=_MULTIMODAL
    )
    multimodal_image_output_channels: int = _field(
        3, "multimodal: channels decoded per output pixel", head=True, check=_positive, used_by=_MULTIMODAL
    )
    multimodal_input_padding: int = _field(
        4,
        "multimodal: input tokens are padded to the widest modality + this",
        check=_non_negative,
        used_by=_MULTIMODAL,
    )
    multimodal_query_padding: int = _field(
        2,
        "multimodal: decoder queries are padded to the widest modality + this",
        head=True,
        check=_non_negative,
        used_by=_MULTIMODAL,
    )
    multimodal_audio_mask_prob: float = _field(
        0.0, "multimodal: probability of masking an audio token", check=_probability, used_by=_MULTIMODAL
    )
    multimodal_image_mask_prob: float = _field(
        0.0, "multimodal: probability of masking a video token", check=_probability, used_by=_MULTIMODAL
    )
    multimodal_label_mask_prob: float = _field(
        1.0,
        "multimodal: probability of masking the label token (1: the label input has no effect)",
        check=_probability,
        used_by=_MULTIMODAL,
    )
    multimodal_decoder: DecoderAttention = _field(
        DecoderAttention(),
        "the shared multimodal decoder (qk width per cross_attention_shape_for_attention)",
        head=True,
        used_by=_MULTIMODAL,
    )

    def __post_init__(self):
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _as_tuple(getattr(self, f.name))
            if hints[f.name] is DecoderAttention and isinstance(value, Mapping):
                try:
                    value = DecoderAttention(**value)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"PerceiverConfig.{f.name}: {e}") from e
            object.__setattr__(self, f.name, value)
        _validate_fields(self)
        self._canonicalise_labels()
        self._validate_widths()

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

    def _validate_widths(self) -> None:
        """Raises ValueError naming the fields whose widths cannot build the attentions."""
        for name in ("num_self_attention_heads", "num_cross_attention_heads"):
            n = getattr(self, name)
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

    # --- Construction and serialisation.

    def replace(self, **changes: Any) -> "PerceiverConfig":
        """Returns a copy with `changes` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> dict[str, str]:
        """{field: its documentation}, HF fields first."""
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}

    @classmethod
    def hf_fields(cls) -> tuple[str, ...]:
        """Names of the fields `transformers.PerceiverConfig` has."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["hf"])

    @classmethod
    def head_fields(cls) -> tuple[str, ...]:
        """Names of the fields that configure only a head (its decoder, labels, dropout)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["head"])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PerceiverConfig":
        """A config from a dict of fields (as `to_dict` writes; nested dicts for decoder groups). Keys that
        are not fields raise ValueError listing them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown PerceiverConfig fields {unknown}; see PerceiverConfig.describe().")
        return cls(**data)

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
        """All fields as a JSON-serialisable dict (ours included; decoder groups as dicts); `from_dict` and
        `from_hf` read it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def used_by(cls, name: str, architecture: str) -> bool:
        """Whether field `name` shapes the model of HF head class `architecture`."""
        heads = cls.__dataclass_fields__[name].metadata["used_by"]
        return heads is None or architecture in heads

    def to_hf_dict(self, architecture: str | None = None) -> dict[str, Any]:
        """A dict `transformers.PerceiverConfig(**d)` (or its config.json) reads back unchanged.

        Raises ValueError when a hard-coded value differs from HF's: HF could not build that model. With
        `architecture` (an HF head class name), only the values that head builds with count.
        """
        default = PerceiverConfig()
        hf = set(self.hf_fields())
        changed = [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in hf
            and getattr(self, f.name) != getattr(default, f.name)
            and (architecture is None or self.used_by(f.name, architecture))
        ]
        if changed:
            raise ValueError(
                f"Fields {changed} differ from HF's hard-coded values; HF cannot express this model."
            )
        data = {k: v for k, v in self.to_dict().items() if k in hf}
        if data["id2label"] is None:
            data["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        if data["label2id"] is None:
            data["label2id"] = {v: int(k) for k, v in data["id2label"].items()}
        for k in ("architectures", "problem_type"):
            if data[k] is None:
                data.pop(k)
        data.pop("num_labels")
        data["model_type"] = "perceiver"
        return data

    # --- Derived values (one place for HF's defaulting rules).

    @property
    def image_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else size

    @property
    def mlm_num_queries(self) -> int:
        """Output positions of the masked-LM decoder."""
        return self.mlm_decoder_num_queries or self.max_position_embeddings
