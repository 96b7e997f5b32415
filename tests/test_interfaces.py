"""One interface per role: parts written by a user, subclassing the bases, plug into `PerceiverModel`
and the library's own parts, which call them the same way as the built-in ones."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import o1_variables, tiny_dims
from test_export import CALL_KWARGS, CONFIGS, model_of

from perceiver_jax import PerceiverConfig, PerceiverModel, Settings
from perceiver_jax.decoders import BasicDecoder, Decoder, ProjectionDecoder
from perceiver_jax.position_encoding import (
    FourierPositionEncoding,
    PositionEncoding,
    PositionEncodingProjector,
    TrainablePositionEncoding,
)
from perceiver_jax.preprocessors import Preprocessor

CONFIG = PerceiverConfig(
    **tiny_dims(d_model=12, num_self_attends_per_block=1, attention_probs_dropout_prob=0.0)
)


class SinusoidalPositionEncoding(PositionEncoding, kw_only=True):
    """The transformer's fixed sin/cos encoding of 1-D positions (not in the library)."""

    index_dims: tuple[int, ...]
    num_channels: int

    def output_size(self) -> int:
        return self.num_channels

    def __call__(self, batch_size, *, pos=None):
        positions = (
            jnp.arange(self.index_dims[0])[:, None] if pos is None else (pos[0] + 1) * self.index_dims[0] / 2
        )
        rates = 1.0 / 10000 ** (jnp.arange(self.num_channels // 2) / (self.num_channels // 2))
        angles = positions * rates[None]
        table = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        return jnp.broadcast_to(table[None], (batch_size,) + table.shape)


class FeaturePreprocessor(Preprocessor, kw_only=True):
    """Per-timestep features `(B, T, F)` -> a Dense to `width` plus a position encoding."""

    width: int
    position_embeddings: PositionEncoding

    def num_channels(self) -> int:
        return self.width

    @nn.compact
    def __call__(self, inputs, *, interpolate_pos_encoding=False, deterministic=True):
        features = nn.Dense(self.width, name="project")(inputs)
        return features + self.position_embeddings(inputs.shape[0]), None, features


class SummaryDecoder(Decoder, kw_only=True):
    """One query per output from a learned table; returns the decoded queries' mean, `(B, C)`."""

    config: PerceiverConfig
    num_outputs: int
    width: int

    def setup(self):
        self.queries = TrainablePositionEncoding(index_dims=(self.num_outputs,), num_channels=self.width)
        self.decoder = BasicDecoder(
            config=self.config, output_num_channels=5, output_position_encodings=self.queries
        )

    def num_query_channels(self):
        return self.width

    def num_queries(self, subsampled_points=None):
        return self.num_outputs

    def decoder_query(self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None):
        return self.decoder.decoder_query(inputs)

    def output_shape(self, inputs, subsampled_points=None):
        return (inputs.shape[0], 5), None

    def __call__(self, query, z, *, deterministic=True, output_attentions=False):
        outputs, probs = self.decoder(
            query, z, deterministic=deterministic, output_attentions=output_attentions
        )
        return outputs.mean(axis=1), probs


def test_user_written_parts_plug_into_perceiver_model():
    positions = SinusoidalPositionEncoding(index_dims=(7,), num_channels=CONFIG.d_model)
    model = PerceiverModel(
        config=CONFIG,
        input_preprocessor=FeaturePreprocessor(width=CONFIG.d_model, position_embeddings=positions),
        decoder=SummaryDecoder(config=CONFIG, num_outputs=3, width=10),
    )
    features = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 4)), jnp.float32)
    variables = model.init(jax.random.key(0), features)
    output = model.apply(variables, features, output_attentions=True)
    assert output.logits.shape == (2, 5) and output.last_hidden_state.shape == (2, 4, 16)
    assert [p.shape for p in output.cross_attentions] == [(2, 1, 4, 7), (2, 1, 3, 4)]
    other = model.apply(variables, features[::-1])
    np.testing.assert_allclose(other.logits, output.logits[::-1], rtol=1e-6)  # examples stay apart


def test_a_user_position_encoding_serves_the_library_decoder_and_projector():
    positions = PositionEncodingProjector(
        encoding=SinusoidalPositionEncoding(index_dims=(6,), num_channels=8), output_channels=10
    )
    decoder = BasicDecoder(config=CONFIG, output_num_channels=3, output_position_encodings=positions)
    latents = jnp.ones((2, 4, 16))

    def run(module, z, points=None):
        return module(module.decoder_query(z, subsampled_points=points), z)[0]

    variables = nn.init(run, decoder)(jax.random.key(0), latents)
    assert set(variables["params"]["output_position_encodings"]) == {"positions_projection"}
    everything = nn.apply(run, decoder)(variables, latents)
    some = nn.apply(run, decoder)(variables, latents, jnp.array([4, 1]))
    assert everything.shape == (2, 6, 3) and some.shape == (2, 2, 3)
    np.testing.assert_allclose(some, everything[:, [4, 1]], rtol=1e-5, atol=1e-6)


def test_projection_decoder_through_a_headless_model():
    model = PerceiverModel(config=CONFIG, decoder=ProjectionDecoder(num_labels=3))
    inputs = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, CONFIG.d_model)), jnp.float32)
    variables = model.init(jax.random.key(0), inputs)
    output = model.apply(variables, inputs)
    classifier = variables["params"]["decoder"]["classifier"]
    expected = output.last_hidden_state.mean(axis=1) @ classifier["kernel"].value + classifier["bias"].value
    assert output.logits.shape == (2, 3)
    np.testing.assert_allclose(output.logits, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"inputs must be \(batch, length, d_model=12\)"):
        model.apply(variables, inputs[..., :5])


def test_every_encoding_has_one_call_signature():
    encodings = [
        TrainablePositionEncoding(index_dims=(2, 3), num_channels=4),
        FourierPositionEncoding(index_dims=(2, 3), num_bands=2),
        PositionEncodingProjector(
            encoding=FourierPositionEncoding(index_dims=(2, 3), num_bands=2), output_channels=4
        ),
        SinusoidalPositionEncoding(index_dims=(6,), num_channels=4),
    ]
    for encoding in encodings:
        variables = encoding.init(jax.random.key(0), 3)
        features = encoding.apply(variables, 3)
        assert features.shape == (3, 6, encoding.output_size()), type(encoding).__name__


def test_settings_are_validated_where_they_enter():
    with pytest.raises(ValueError, match="Settings.attention_implementation='flash'"):
        Settings(attention_implementation="flash")
    assert Settings(dtype="bfloat16").dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="positional"):
        BasicDecoder(CONFIG, 3)  # constructors take keywords


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_head_takes_the_same_call(name):
    """`apply(variables, inputs, *, attention_mask=None, deterministic=True, ...)` on every head: a mask of
    ones over the preprocessed inputs changes nothing, and a positional flag is refused (it would
    otherwise become `deterministic=None`)."""
    model = model_of(name)
    kwargs = dict(model.example_inputs(2), **CALL_KWARGS.get(name, {}))
    variables = o1_variables(model, 0, **model.example_inputs())
    plain = model.apply(variables, **kwargs, output_attentions=True)
    num_inputs = plain.cross_attentions[0].shape[-1]
    masked = model.apply(variables, **kwargs, attention_mask=jnp.ones((2, num_inputs), jnp.int32))
    for ours, reference in zip(jax.tree.leaves(masked), jax.tree.leaves(plain.logits)):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError):
        model.apply(variables, kwargs.pop("inputs"), None, **kwargs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_preprocessor_reports_its_width(name):
    """`num_channels()` of each head's preprocessor is the width of the tokens it returns (the flow
    decoder and the multimodal padding are sized from it)."""
    model = model_of(name)
    inputs = model.example_inputs(2)["inputs"]
    preprocessor = model.bind(o1_variables(model, 0, **model.example_inputs())).perceiver.input_preprocessor
    tokens, _, _ = preprocessor(inputs)
    assert tokens.shape[-1] == preprocessor.num_channels()
