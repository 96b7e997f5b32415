"""`PerceiverConfig`: HF defaults, reading HF configs in every form, writing them back, validation."""

import dataclasses
import inspect
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from helpers import tiny_dims

from perceiver_jax import HEADS, PerceiverConfig

# The model-specific fields of HF's PerceiverConfig (keyword-only arguments of its constructor).
HF_FIELDS = [
    name
    for name, p in inspect.signature(transformers.PerceiverConfig.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
]
SMALL = dict(d_model=32, d_latents=48, num_latents=8, num_self_attends_per_block=2, vocab_size=40)


def _normalise(value):
    return tuple(value) if isinstance(value, list) else value


def test_hf_field_list_is_complete():
    assert len(HF_FIELDS) == 27
    assert {"num_latents", "cross_attention_shape_for_attention", "_label_trainable_num_channels"} <= set(
        HF_FIELDS
    )


@pytest.mark.parametrize("name", HF_FIELDS + ["num_labels"])
def test_defaults_equal_hf(name):
    ours = getattr(PerceiverConfig(), name)
    hf = getattr(transformers.PerceiverConfig(), name)
    assert _normalise(ours) == _normalise(hf)


def test_default_labels_match_hf():
    hf = transformers.PerceiverConfig(**PerceiverConfig().to_hf_dict())
    assert hf.id2label == transformers.PerceiverConfig().id2label
    assert hf.label2id == transformers.PerceiverConfig().label2id


@pytest.fixture
def custom_hf():
    return transformers.PerceiverConfig(
        num_latents=16, d_latents=64, d_model=40, num_blocks=3, num_self_attends_per_block=2,
        num_self_attention_heads=4, num_cross_attention_heads=2, qk_channels=32, v_channels=64,
        cross_attention_shape_for_attention="q", self_attention_widening_factor=4,
        cross_attention_widening_factor=2, attention_probs_dropout_prob=0.0, use_query_residual=False,
        vocab_size=100, max_position_embeddings=64, image_size=[32, 48], train_size=[8, 16],
        id2label={0: "neg", 1: "neu", 2: "pos"}, architectures=["PerceiverForSequenceClassification"],
    )  # fmt: skip


def _check_custom(cfg):
    assert (cfg.num_latents, cfg.d_latents, cfg.d_model, cfg.num_blocks) == (16, 64, 40, 3)
    assert (cfg.qk_channels, cfg.v_channels, cfg.cross_attention_shape_for_attention) == (32, 64, "q")
    assert (cfg.self_attention_widening_factor, cfg.cross_attention_widening_factor) == (4, 2)
    assert cfg.use_query_residual is False and cfg.attention_probs_dropout_prob == 0.0
    assert cfg.image_size == (32, 48) and cfg.train_size == (8, 16)
    assert cfg.id2label == {0: "neg", 1: "neu", 2: "pos"} and cfg.num_labels == 3
    assert cfg.architectures == ("PerceiverForSequenceClassification",)


def test_from_hf_object_dict_json_and_folder(custom_hf, tmp_path):
    custom_hf.save_pretrained(tmp_path)
    sources = [custom_hf, custom_hf.to_dict(), json.loads((tmp_path / "config.json").read_text())]
    sources += [tmp_path / "config.json", str(tmp_path / "config.json"), tmp_path, str(tmp_path)]
    configs = [PerceiverConfig.from_hf(s) for s in sources]
    for cfg in configs:
        _check_custom(cfg)
    assert all(cfg == configs[0] for cfg in configs)


def test_from_hf_ignores_hf_bookkeeping_keys():
    cfg = PerceiverConfig.from_hf({"d_model": 64, "torch_dtype": "float32", "transformers_version": "9"})
    assert cfg.d_model == 64


@pytest.mark.parametrize(
    "cfg",
    [
        PerceiverConfig(),
        PerceiverConfig(num_labels=5),
        PerceiverConfig(id2label={0: "a", 1: "b", 2: "c"}),
        PerceiverConfig(id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0}),
        PerceiverConfig(
            **SMALL, qk_channels=16, v_channels=48, image_size=(32, 48), problem_type="regression"
        ),
        PerceiverConfig(**SMALL, architectures=("PerceiverForMaskedLM",), layer_norm_eps=1e-7),
    ],
)
def test_to_hf_dict_round_trip(cfg, tmp_path):
    hf = transformers.PerceiverConfig(**cfg.to_hf_dict())
    for name in HF_FIELDS:
        assert _normalise(getattr(hf, name)) == _normalise(getattr(cfg, name)), name
    assert hf.num_labels == cfg.num_labels
    assert PerceiverConfig.from_hf(hf) == cfg
    hf.save_pretrained(tmp_path)
    assert PerceiverConfig.from_hf(tmp_path) == cfg
    # What HF writes, HF reads back unchanged.
    assert transformers.PerceiverConfig.from_pretrained(tmp_path).to_dict() == hf.to_dict()


def test_to_hf_dict_is_json_serialisable():
    cfg = PerceiverConfig(id2label={0: "x", 1: "y"}, image_size=(8, 8))
    data = json.loads(json.dumps(cfg.to_hf_dict()))
    assert data["model_type"] == "perceiver" and data["id2label"] == {"0": "x", "1": "y"}
    assert PerceiverConfig.from_hf(data) == cfg


def test_to_hf_dict_refuses_values_hf_hard_codes():
    with pytest.raises(ValueError, match="norm_eps"):
        PerceiverConfig(norm_eps=1e-6).to_hf_dict()
    with pytest.raises(ValueError, match="mlm_decoder"):
        PerceiverConfig(mlm_decoder=dict(num_heads=4, qk_channels=256)).to_hf_dict()


def test_labels():
    assert PerceiverConfig().num_labels == 2 and PerceiverConfig().id2label is None
    assert PerceiverConfig(num_labels=7).num_labels == 7
    named = PerceiverConfig(id2label={"0": "cat", "1": "dog", "2": "fish"})  # JSON gives string keys
    assert named.id2label == {0: "cat", 1: "dog", 2: "fish"} and named.num_labels == 3
    # id2label wins over a stale num_labels, as in HF.
    assert PerceiverConfig.from_hf({"num_labels": 9, "id2label": {"0": "a", "1": "b"}}).num_labels == 2
    assert PerceiverConfig.from_hf({"num_labels": 9}).num_labels == 9
    assert PerceiverConfig.from_hf(transformers.PerceiverConfig(num_labels=4)).num_labels == 4
    # HF's generated names are the same config as none at all.
    assert PerceiverConfig(id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}) == PerceiverConfig(
        num_labels=3
    )
    assert PerceiverConfig(num_labels=3).replace(num_labels=4).num_labels == 4
    hf = transformers.PerceiverConfig(**named.to_hf_dict())
    assert hf.id2label == {0: "cat", 1: "dog", 2: "fish"} and hf.label2id == {"cat": 0, "dog": 1, "fish": 2}


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(num_self_attention_heads=7), "num_self_attention_heads"),
        (dict(num_cross_attention_heads=3), "num_cross_attention_heads"),
        (dict(qk_channels=100), "qk_channels"),  # 100 % 8 != 0
        (dict(num_self_attention_heads=5, d_latents=1280, v_channels=1282), "num_self_attention_heads"),
        (dict(num_self_attention_heads=5, d_latents=1280, qk_channels=256), "qk_channels"),
        (dict(num_cross_attention_heads=5, qk_channels=256, v_channels=1280), "num_cross_attention_heads=5"),
        (dict(d_latents=1280, v_channels=640), "v_channels"),
        (dict(qk_channels=256), "v_channels"),  # v defaults to qk = 256 != d_latents
        (dict(num_latents=0), "num_latents"),
        (dict(d_latents=-8), "d_latents"),
        (dict(d_model=0), "d_model"),
        (dict(num_blocks=0), "num_blocks"),
        (dict(num_self_attends_per_block=-1), "num_self_attends_per_block"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
        (dict(num_labels=0), "num_labels"),
        (dict(self_attention_widening_factor=0), "self_attention_widening_factor"),
        (dict(qk_channels=0), "qk_channels"),
        (dict(v_channels=-1280), "v_channels"),
        (dict(num_latents=2.5), "num_latents"),
        (dict(image_size=0), "image_size"),
        (dict(train_size=(368, -1)), "train_size"),
        (dict(cross_attention_shape_for_attention="qkv"), "cross_attention_shape_for_attention"),
        (dict(hidden_act="relu"), "hidden_act"),
        (dict(hidden_act="gelu_new"), "hidden_act"),
        (dict(attention_probs_dropout_prob=1.0), "attention_probs_dropout_prob"),
        (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        PerceiverConfig(**changes)
    with pytest.raises(ValueError, match=field):
        PerceiverConfig().replace(**changes)
    with pytest.raises(ValueError, match=field):
        PerceiverConfig.from_hf(changes)


def test_hf_cannot_run_v_channels_other_than_d_latents():
    """The check is not stricter than HF: HF builds the model but crashes on the residual."""
    hf_config = transformers.PerceiverConfig(
        **SMALL,
        max_position_embeddings=16,
        num_self_attention_heads=2,
        num_cross_attention_heads=2,
        v_channels=32,
    )
    model = transformers.PerceiverForSequenceClassification(hf_config).eval()
    with pytest.raises(RuntimeError):
        model(inputs=torch.zeros((1, 16), dtype=torch.long))
    with pytest.raises(ValueError, match="v_channels"):
        PerceiverConfig.from_hf(hf_config)


def test_other_model_type_is_rejected(tmp_path):
    transformers.BertConfig(hidden_size=32, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        PerceiverConfig.from_hf(tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        PerceiverConfig.from_hf({"model_type": "vit"})


def test_invalid_json_and_missing_file(tmp_path):
    (tmp_path / "config.json").write_text('{"d_model": 64,')
    with pytest.raises(ValueError, match="not valid JSON"):
        PerceiverConfig.from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        PerceiverConfig.from_hf(tmp_path / "nowhere")
    with pytest.raises(TypeError):
        PerceiverConfig.from_hf(42)


def test_frozen_and_replace():
    cfg = PerceiverConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3
    other = cfg.replace(d_model=64, num_blocks=2)
    assert (other.d_model, other.num_blocks) == (64, 2)
    assert (cfg.d_model, cfg.num_blocks) == (768, 1)
    assert other.replace(d_model=768, num_blocks=1) == cfg


# --- Fields for values HF hard-codes: each changes the model, and HF cannot express it.

TINY = tiny_dims(
    num_self_attends_per_block=1,
    num_labels=3,
    attention_probs_dropout_prob=0.0,
    image_size=20,
    train_size=(4, 4),
)
# field -> (new value, head it changes).
NEW_FIELDS = {
    "self_attention_use_query_residual": (False, "PerceiverForImageClassificationFourier"),
    "fourier_concat_pos": (False, "PerceiverForImageClassificationFourier"),
    "fourier_sine_only": (True, "PerceiverForImageClassificationFourier"),
    "image_conv_kernel_size": (5, "PerceiverForImageClassificationConvProcessing"),
    "image_conv_stride": (1, "PerceiverForImageClassificationConvProcessing"),
    "image_conv_padding": (1, "PerceiverForImageClassificationConvProcessing"),
    "image_conv_pool_size": (2, "PerceiverForImageClassificationConvProcessing"),
    "image_conv_pool_stride": (1, "PerceiverForImageClassificationConvProcessing"),
    "image_conv_batchnorm_momentum": (0.5, "PerceiverForImageClassificationConvProcessing"),
    "image_conv_batchnorm_eps": (1e-1, "PerceiverForImageClassificationConvProcessing"),
    "classification_decoder": (
        dict(qk_channels=8, use_query_residual=True),
        "PerceiverForImageClassificationFourier",
    ),
    "flow_decoder": (dict(num_heads=2, widening_factor=2), "PerceiverForOpticalFlow"),
}


def _run(config, name, train):
    """(outputs, updated batch stats) of head `name` at O(1)-ish random weights on fixed inputs."""
    model = HEADS[name](config)
    inputs = model.example_inputs(2)["inputs"]
    if jnp.issubdtype(inputs.dtype, jnp.floating):
        inputs = jax.random.normal(jax.random.key(1), inputs.shape)
    variables = jax.jit(model.init)(jax.random.key(0), inputs)
    if train:
        return model.apply(variables, inputs, deterministic=False, mutable=["batch_stats"])
    return model.apply(variables, inputs), None


@pytest.mark.parametrize("field", sorted(NEW_FIELDS))
def test_new_fields_change_the_model_and_hf_cannot_express_them(field):
    value, head = NEW_FIELDS[field]
    base = PerceiverConfig(**TINY)
    changed = base.replace(**{field: value})
    train = field.startswith("image_conv_batchnorm")  # only training uses the momentum and epsilon
    before, stats_before = _run(base, head, train)
    after, stats_after = _run(changed, head, train)
    differs = before.shape != after.shape or not np.allclose(before, after, rtol=1e-4, atol=1e-6)
    if field == "image_conv_batchnorm_momentum":  # the output uses batch statistics; the update differs
        means = [jax.tree.leaves(nn.unbox(stats))[0] for stats in (stats_before, stats_after)]  # mean first
        differs = not np.allclose(*means, rtol=1e-6, atol=1e-7)
    assert differs, field
    with pytest.raises(ValueError, match=field):
        changed.to_hf_dict()
    with pytest.raises(ValueError, match=field):
        changed.to_hf_dict(head)
    assert PerceiverConfig.from_dict(changed.to_dict()) == changed


@pytest.mark.parametrize("field", sorted(NEW_FIELDS))
def test_a_field_only_some_heads_use_leaves_the_others_and_their_hf_config_alone(field):
    """`used_by` metadata is exact: a head outside it builds the same model and HF can express it."""
    unused = [name for name in HEADS if not PerceiverConfig.used_by(field, name)]
    if field == "self_attention_use_query_residual":
        assert not unused  # the encoder's: every head
        return
    assert NEW_FIELDS[field][1] not in unused and "PerceiverForMaskedLM" in unused
    base = PerceiverConfig(**TINY)
    changed = base.replace(**{field: NEW_FIELDS[field][0]})
    np.testing.assert_array_equal(
        _run(base, "PerceiverForMaskedLM", False)[0], _run(changed, "PerceiverForMaskedLM", False)[0]
    )
    for name in unused:
        assert changed.to_hf_dict(name) == base.to_hf_dict(name)


def test_fields_are_documented_and_split_from_metadata():
    docs = PerceiverConfig.describe()
    assert all(docs.values()) and len(docs) == len(dataclasses.fields(PerceiverConfig))
    assert sorted(PerceiverConfig.hf_fields()) == sorted(
        HF_FIELDS + ["num_labels", "id2label", "label2id", "architectures", "problem_type"]
    )
    assert "mlm_decoder" in PerceiverConfig.head_fields() and "d_latents" not in PerceiverConfig.head_fields()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(norm_eps="1e-5"), r"norm_eps must be a number, got '1e-5' \(str\)"),
        (
            dict(use_query_residual="false"),
            r"use_query_residual must be a boolean \(true/false\), got 'false'",
        ),
        (dict(d_model=64.0), r"d_model must be an integer, got 64.0"),
        (dict(train_size=[8]), r"train_size must be a tuple of 2 integers"),
        (dict(mlm_decoder=dict(num_heads=0)), r"mlm_decoder: DecoderAttention.num_heads must be positive"),
        (dict(mlm_decoder=dict(heads=2)), r"mlm_decoder: .*unexpected keyword argument 'heads'"),
    ],
)
def test_wrong_types_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        PerceiverConfig(**changes)


def test_config_json_values_of_the_wrong_type_name_the_field(tmp_path):
    """A config.json written by hand: "false" is a string, not false, and is refused (not read as true)."""
    (tmp_path / "config.json").write_text(json.dumps({"use_query_residual": "false"}))
    with pytest.raises(ValueError, match=r"use_query_residual must be a boolean \(true/false\), got 'false'"):
        PerceiverConfig.from_hf(tmp_path)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown PerceiverConfig fields \['num_layers'\]"):
        PerceiverConfig.from_dict({"num_layers": 4})
