"""Fast unit tests of the building blocks: torch-exact linspace and Fourier features, dropout, remat,
the scanned encoder's parameter layout and trace size, and chunked decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from helpers import max_rel_err, o1_variables, padded_batch, redraw_, tiny_dims
from jax.sharding import PartitionSpec
from transformers.models.perceiver import modeling_perceiver as hf

from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM, PerceiverForSequenceClassification, Settings
from perceiver_jax.decoders import BasicDecoder
from perceiver_jax.encoder import PerceiverEncoder
from perceiver_jax.position_encoding import (
    TrainablePositionEncoding,
    fourier_features,
    linear_positions,
    torch_linspace,
)

SMALL = PerceiverConfig(
    num_latents=8, d_latents=32, d_model=16, num_blocks=2, num_self_attends_per_block=2,
    num_self_attention_heads=4, num_cross_attention_heads=2, vocab_size=30, max_position_embeddings=12,
    num_labels=3,
    attention_probs_dropout_prob=0.5,
)  # fmt: skip

LINSPACE_CASES = [
    (1.0, 7680.0, 192),  # the multimodal audio encoding (192 bands, resolution 15360)
    (1.0, 112.0, 64),  # Fourier image head, 224 px
    (1.0, 28.0, 64),  # conv image head, 56 px
    (1.0, 184.0, 64),  # optical flow, 368 px
    (1.0, 248.0, 64),
    (1.0, 8.0, 32),  # multimodal video
    (-1.0, 1.0, 224),
    (-1.0, 1.0, 55),
    (-1.0, 1.0, 496),
    (-1.0, 1.0, 2),
    (0.0, 1.0, 1),
    (-3.5, 2.25, 7),
    (0.5, 1000.25, 3001),
]


@pytest.mark.parametrize("start, end, steps", LINSPACE_CASES)
def test_torch_linspace_is_bit_exact(start, end, steps):
    ours = torch_linspace(start, end, steps)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, torch.linspace(start, end, steps).numpy())


def test_torch_linspace_random_sweep():
    """Endpoints as HF uses them (exactly representable in float32: integers, halves, quarters)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        start, end = rng.integers(-512, 512) / 4, rng.integers(-40000, 40000) / 2
        steps = int(rng.integers(1, 3000))
        np.testing.assert_array_equal(
            torch_linspace(start, end, steps), torch.linspace(start, end, steps).numpy()
        )


def test_numpy_linspace_is_not_torch_linspace():
    reference = torch.linspace(1.0, 7680.0, 192).numpy()
    assert not np.array_equal(np.linspace(1.0, 7680.0, 192, dtype=np.float32), reference)
    assert not np.array_equal(np.asarray(jnp.linspace(1.0, 7680.0, 192, dtype=jnp.float32)), reference)


@pytest.mark.parametrize(
    "index_dims, max_resolution, num_bands, concat_pos, sine_only",
    [
        ((7, 9), (224, 224), 64, True, False),
        ((6, 5), (56, 56), 16, False, False),
        ((4, 6), (368, 496), 64, True, True),
        ((3, 4, 5), (16, 32, 32), 8, True, False),
        ((2, 3, 4), (16, 224, 224), 32, False, True),
        ((40,), (15360,), 192, True, False),
    ],
)
def test_fourier_features_match_hf(index_dims, max_resolution, num_bands, concat_pos, sine_only):
    hf_pos = hf.build_linear_positions(index_dims).reshape(1, -1, len(index_dims))
    pos = linear_positions(index_dims).reshape(-1, len(index_dims))
    np.testing.assert_array_equal(pos, hf_pos[0].numpy())
    reference = hf.generate_fourier_features(hf_pos, num_bands, max_resolution, concat_pos, sine_only)
    reference = reference.reshape(-1, reference.shape[-1]).numpy()  # (N, C); HF drops the batch axis
    for ours in (
        fourier_features(pos, num_bands, max_resolution, concat_pos, sine_only),
        fourier_features(jnp.asarray(pos), num_bands, max_resolution, concat_pos, sine_only),
    ):
        ours = np.asarray(ours)
        assert ours.shape == reference.shape
        # Arguments are bit-exact; sin/cos of the same float32 may differ by one ulp between libms.
        np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-7)
        if concat_pos:
            np.testing.assert_array_equal(ours[:, : len(index_dims)], reference[:, : len(index_dims)])


def _text_batch(config, batch_size=3):
    ids, mask = padded_batch(config.vocab_size, config.max_position_embeddings, batch_size)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)


def test_dropout_only_when_not_deterministic():
    model = PerceiverForSequenceClassification(SMALL)
    no_dropout = PerceiverForSequenceClassification(SMALL.replace(attention_probs_dropout_prob=0.0))
    ids, mask = _text_batch(SMALL)
    variables = o1_variables(model, inputs=ids, attention_mask=mask)

    @jax.jit
    def run(variables, key):
        def train(m):
            return m.apply(variables, ids, attention_mask=mask, deterministic=False, rngs={"dropout": key})

        evals = (
            model.apply(variables, ids, attention_mask=mask),
            no_dropout.apply(variables, ids, attention_mask=mask),
        )
        return evals + (train(model), train(no_dropout))

    # 'rbg' keys: same dropout code as the default threefry keys, a fraction of the CPU compile time.
    key = lambda seed: jax.random.key(seed, impl="rbg")  # noqa: E731
    eval_out, plain, a, plain_train = run(variables, key(1))
    b = run(variables, key(2))[2]
    a_again = run(variables, key(1))[2]
    assert max_rel_err(a, b) > 1e-2 and max_rel_err(a, eval_out) > 1e-2
    np.testing.assert_array_equal(a, a_again)
    # Deterministic with dropout configured == the same weights without dropout, in either mode.
    np.testing.assert_array_equal(eval_out, plain)
    np.testing.assert_array_equal(eval_out, plain_train)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, ids, attention_mask=mask, deterministic=False)  # dropout needs an RNG


@pytest.fixture(scope="module")
def mlm_loss_and_grad():
    """`(config, ids, mask, variables, f)` with f(model) -> jitted (loss, grads) at `variables`."""
    config = SMALL.replace(attention_probs_dropout_prob=0.0)
    ids, mask = _text_batch(config)
    variables = o1_variables(PerceiverForMaskedLM(config), inputs=ids, attention_mask=mask)

    def loss_and_grad(model):
        def loss(v):
            return jnp.mean(jax.nn.log_softmax(model.apply(v, ids, attention_mask=mask))[..., 0] ** 2)

        return jax.jit(jax.value_and_grad(loss))(variables)

    return config, ids, mask, variables, loss_and_grad, loss_and_grad(PerceiverForMaskedLM(config))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_outputs_and_gradients(mlm_loss_and_grad, remat):
    config, ids, mask, variables, loss_and_grad, (loss, grads) = mlm_loss_and_grad
    loss_r, grads_r = loss_and_grad(PerceiverForMaskedLM(config, settings=Settings(remat=remat)))
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    flat, flat_r = jax.tree_util.tree_leaves(nn.unbox(grads)), jax.tree_util.tree_leaves(nn.unbox(grads_r))
    assert len(flat) == len(flat_r) and len(flat) > 20
    scale = max(float(np.abs(g).max()) for g in flat)
    assert scale > 1e-3
    for g, g_r in zip(flat, flat_r):
        np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-6 * scale)


def test_unknown_remat_policy_is_rejected():
    with pytest.raises(ValueError, match="Settings.remat='some'; choose one of"):
        Settings(remat="some")


def _encoder_inputs(config, batch_size=2, length=10):
    inputs = jnp.ones((batch_size, length, config.d_model), jnp.float32)
    return inputs, jnp.ones((batch_size, length), jnp.int32)


def test_encoder_stacks_layers_with_logical_axes():
    config = SMALL.replace(num_self_attends_per_block=3)
    encoder = PerceiverEncoder(config=config)
    inputs, mask = _encoder_inputs(config)
    variables = jax.eval_shape(lambda key: encoder.init(key, inputs, inputs_mask=mask), jax.random.key(0))
    params = nn.unbox(variables["params"])
    assert set(params) == {"latents", "cross_attention", "self_attends"}
    for leaf in jax.tree_util.tree_leaves(params["self_attends"]):
        assert leaf.shape[0] == 3
    d = config.d_latents
    assert params["self_attends"]["attention"]["query"]["kernel"].shape == (3, d, d)
    assert params["self_attends"]["mlp"]["dense1"]["kernel"].shape == (3, d, d)

    specs = nn.get_partition_spec(variables)["params"]
    layer = specs["self_attends"]
    assert layer["attention"]["query"]["kernel"] == PartitionSpec("layers", "embed", "heads")
    assert layer["attention"]["output"]["kernel"] == PartitionSpec("layers", "heads", "embed")
    assert layer["attention"]["query"]["bias"] == PartitionSpec("layers", "heads")
    assert layer["mlp"]["dense1"]["kernel"] == PartitionSpec("layers", "embed", "mlp")
    assert layer["mlp"]["dense2"]["kernel"] == PartitionSpec("layers", "mlp", "embed")
    assert layer["query_norm"]["scale"] == PartitionSpec("layers", "embed")
    cross = specs["cross_attention"]
    assert cross["attention"]["key"]["kernel"] == PartitionSpec("embed", "heads")
    assert cross["mlp"]["dense1"]["kernel"] == PartitionSpec("embed", "mlp")
    assert specs["latents"] == PartitionSpec("latents", "embed")
    # Every parameter carries names for all of its dimensions.
    for spec, leaf in zip(
        jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
        jax.tree_util.tree_leaves(params),
    ):
        assert len(spec) == leaf.ndim and all(isinstance(name, str) for name in spec)


def _trace_sizes(config):
    encoder = PerceiverEncoder(config=config)
    inputs, mask = _encoder_inputs(config)
    variables = jax.eval_shape(lambda key: encoder.init(key, inputs, inputs_mask=mask), jax.random.key(0))

    def forward(v, x, m):
        return encoder.apply(v, x, inputs_mask=m).last_hidden_state

    jaxpr = str(jax.make_jaxpr(forward)(variables, inputs, mask))
    hlo = jax.jit(forward).lower(variables, inputs, mask).as_text()
    return len(jaxpr), len(hlo)


def test_trace_size_does_not_grow_with_depth():
    # Depth within a block (one block: the encoder skips the loop over blocks).
    shallow = _trace_sizes(SMALL.replace(num_blocks=1, num_self_attends_per_block=2))
    deep = _trace_sizes(SMALL.replace(num_blocks=1, num_self_attends_per_block=24))
    # Number of weight-shared blocks.
    two_blocks = _trace_sizes(SMALL.replace(num_blocks=2, num_self_attends_per_block=2))
    many_blocks = _trace_sizes(SMALL.replace(num_blocks=8, num_self_attends_per_block=24))
    for base, size in ((shallow, deep), (two_blocks, many_blocks)):
        for small, big in zip(base, size):
            assert big <= 1.1 * small, (base, size)


def test_chunked_decoding_equals_unchunked():
    num_queries, width = 10, 24
    config = SMALL

    def decoder(chunk):
        return BasicDecoder(
            config=config,
            output_num_channels=5,
            output_position_encodings=TrainablePositionEncoding(
                index_dims=(num_queries,), num_channels=width
            ),
            qk_channels=16,
            v_channels=24,
            num_heads=4,
            widening_factor=2,
            use_query_residual=True,
            chunk_size=chunk,
        )

    latents = jnp.asarray(np.random.default_rng(1).standard_normal((2, config.num_latents, config.d_latents)))

    def forward(module, z):
        return module(module.decoder_query(z), z)[0]

    # O(1) weights, so that a wrong mapping of chunks to queries could not hide in small outputs.
    shapes = jax.eval_shape(nn.init(forward, decoder(None)), jax.random.key(0), latents)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape, np.float32) / 4), shapes)
    full = jax.jit(nn.apply(forward, decoder(None)))(variables, latents)
    assert full.shape == (2, num_queries, 5)
    # 1 and 3: padded last chunk; 5: exact split.
    for chunk_size in (1, 3, 5):
        chunked = jax.jit(nn.apply(forward, decoder(chunk_size)))(variables, latents)
        np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-6 * float(np.abs(full).max()))


def test_redraw_is_deterministic_and_order_one():
    """`helpers.redraw_`, which every parity test relies on: all parameters and float buffers re-drawn."""
    config = transformers.PerceiverConfig(
        **tiny_dims(num_self_attends_per_block=1, num_self_attention_heads=1, num_labels=3)
    )
    build = transformers.PerceiverForImageClassificationConvProcessing
    a, b, c = redraw_(build(config), seed=0), redraw_(build(config), seed=0), redraw_(build(config), seed=1)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key
        if value.is_floating_point():
            assert not torch.equal(value, state_c[key]), key
    prefix = "perceiver.input_preprocessor.convnet."
    assert state_a[prefix + "batchnorm.num_batches_tracked"].item() == 0
    for key, value in state_a.items():
        if key.endswith("num_batches_tracked"):
            continue
        std = float(value.std())
        if key.endswith(("layernorm.weight", "layernorm1.weight", "layernorm2.weight", "batchnorm.weight")):
            assert 0.9 <= float(value.min()) and float(value.max()) <= 1.1 and std > 0.02, key
        elif key.endswith("running_var"):
            assert 0.5 <= float(value.min()) and float(value.max()) <= 1.5, key
        elif key.endswith("running_mean"):
            assert 0.05 < std < 0.2, key
        elif key.endswith("bias"):
            assert 0.1 <= std <= 0.5 or value.numel() < 8, key
        elif value.ndim == 2 and "latents" not in key and "position" not in key:  # Linear (out, in)
            assert abs(std * np.sqrt(value.shape[1]) - 1) < 0.3, key
    conv = state_a[prefix + "conv.weight"]
    assert abs(float(conv.std()) * np.sqrt(3 * 7 * 7) - 1) < 0.1
    assert abs(float(state_a["perceiver.embeddings.latents"].std()) - 1) < 0.3


def test_dense_products_accumulate_in_float32():
    """bf16 operands: the result is the float32-accumulated product rounded once to bf16 (a bf16 running
    sum over 512 terms would be off by many bf16 ulps)."""
    from perceiver_jax.attention import dot_general_f32_accumulation

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 512)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((512, 16)), jnp.bfloat16)
    out = dot_general_f32_accumulation(x, w, (((2,), (0,)), ((), ())))
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 8, 16)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    ulp = np.abs(exact) * 2.0**-8
    assert np.all(np.abs(np.asarray(out, np.float64) - exact) <= ulp + 1e-6)
    with pytest.raises(ValueError, match="accumulation"):
        dot_general_f32_accumulation(x, w, (((2,), (0,)), ((), ())), preferred_element_type=jnp.bfloat16)


def test_bfloat16_model_has_no_bfloat16_result_products():
    """Every matrix product of a bf16-compute model accumulates and returns float32 (on XLA's CPU backend a
    product with a bf16 result runs at half the speed; see benchmarks/RESULTS.md)."""
    config = PerceiverConfig(
        num_latents=8, d_latents=32, d_model=16, num_self_attends_per_block=2, qk_channels=16, v_channels=32
    )
    model = PerceiverForMaskedLM(config, settings=Settings(dtype=jnp.bfloat16))
    ids = jnp.ones((2, 24), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    hlo = jax.jit(model.apply).lower(variables, ids).as_text(dialect="hlo")
    products = [line for line in hlo.splitlines() if " dot(" in line]
    assert len(products) >= 10
    assert not [line for line in products if "= bf16[" in line], products


def test_cudnn_attention_falls_back_to_xla_where_it_does_not_apply():
    """On a CPU (and for float32, or unequal head widths) 'cudnn' models compute exactly what 'xla' ones
    do."""
    from perceiver_jax.attention import cudnn_applies

    config = SMALL.replace(attention_probs_dropout_prob=0.0)
    ids, mask = _text_batch(config)
    variables = jax.jit(PerceiverForMaskedLM(config).init)(jax.random.key(0), ids)
    outputs = {}
    for implementation in ("xla", "cudnn"):
        model = PerceiverForMaskedLM(config, settings=Settings(attention_implementation=implementation))
        outputs[implementation] = jax.jit(model.apply)(variables, ids, attention_mask=mask)
    np.testing.assert_array_equal(outputs["xla"], outputs["cudnn"])
    q = jnp.zeros((1, 4, 2, 64), jnp.bfloat16)
    assert not cudnn_applies(q, q, q)  # no GPU here


def test_a_learned_table_of_another_grid_refuses_or_is_resized():
    """`for_grid`: a table serves any grid of as many points, is resized (2-D) when asked, refuses
    otherwise with the grids named; Fourier features of another grid are that grid's coordinates."""
    from perceiver_jax.position_encoding import (
        FourierPositionEncoding,
        TrainablePositionEncoding,
        linear_positions,
    )

    table = TrainablePositionEncoding(index_dims=(4, 4), num_channels=3)
    variables = table.init(jax.random.key(0), 1)
    assert table.apply(variables, 2, (16,), method="for_grid").shape == (2, 16, 3)
    assert table.apply(variables, 2, (6, 5), interpolate=True, method="for_grid").shape == (2, 30, 3)
    with pytest.raises(ValueError, match=r"grid \(6, 5\) \(30 positions\) is not .* table's \(4, 4\)"):
        table.apply(variables, 2, (6, 5), method="for_grid")
    with pytest.raises(ValueError, match="resizes a 2-D table"):
        table.apply(variables, 2, (2, 2, 4), interpolate=True, method="for_grid")
    fourier = FourierPositionEncoding(index_dims=(4, 4), num_bands=3, max_resolution=(8, 8))
    for interpolate in (False, True):
        features = fourier.apply({}, 2, (6, 5), interpolate=interpolate, method="for_grid")
        expected = fourier.apply({}, 2, pos=linear_positions((6, 5)).reshape(1, 30, 2))
        np.testing.assert_array_equal(features, expected)
