"""Heads exported with `jax.export`: serialized, deserialized and run at two batch sizes against
`model.apply`, with the variables as arguments (never baked into the module)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_rel_err, o1_variables, padded_batch, tiny_dims

from perceiver_jax import HEADS, PerceiverConfig
from perceiver_jax.export import call_exported, deserialize, export_head, serialize

COMMON = tiny_dims(num_self_attends_per_block=1, num_labels=3)
TEXT = dict(vocab_size=20, max_position_embeddings=8)
CONFIGS = {
    "PerceiverForMaskedLM": TEXT,
    "PerceiverForSequenceClassification": TEXT,
    "PerceiverForImageClassificationLearned": dict(image_size=4),
    "PerceiverForImageClassificationFourier": dict(image_size=4),
    "PerceiverForImageClassificationConvProcessing": dict(image_size=8),
    "PerceiverForOpticalFlow": dict(train_size=[4, 6]),
    "PerceiverForMultimodalAutoencoding": dict(
        num_frames=2,
        audio_samples_per_frame=8,
        samples_per_patch=4,
        image_size=4,
        output_shape=[1, 2, 4, 4],
        output_num_channels=8,
        _label_trainable_num_channels=8,
    ),  # fmt: skip
}  # fmt: skip
# Keyword arguments fixed at export: the multimodal head decodes 5 of its 32 video, 2 of its 4 audio points.
CALL_KWARGS = {
    "PerceiverForMultimodalAutoencoding": dict(
        subsampled_output_points={"image": jnp.array([7, 0, 31, 12, 5]), "audio": jnp.array([3, 1])}
    )
}


def model_of(name):
    return HEADS[name](PerceiverConfig(**COMMON, **CONFIGS[name]))


def random_variables(model, seed):
    """O(1) host-drawn variables of `model` (no init compiled)."""
    return o1_variables(model, seed, **model.example_inputs())


def random_inputs(name, model, batch_size, seed=0):
    """Positional inputs at `batch_size`: text heads get token ids and a mask with padded rows; the
    multimodal head its inputs dict; the others their image or patches, all random."""
    rng = np.random.default_rng(seed)
    if name in ("PerceiverForMaskedLM", "PerceiverForSequenceClassification"):
        ids, mask = padded_batch(
            model.config.vocab_size, model.config.max_position_embeddings, batch_size, seed
        )
        return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    inputs = model.example_inputs(batch_size)["inputs"]
    return (jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), inputs),)


def largest_leaf_bytes(variables):
    return max((np.asarray(x) for x in jax.tree_util.tree_leaves(variables)), key=np.size).tobytes()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_head_matches_apply(name):
    model = model_of(name)
    kwargs = CALL_KWARGS.get(name, {})
    exported_with = random_variables(model, seed=0)
    data = serialize(export_head(model, exported_with, *random_inputs(name, model, 2), **kwargs))
    exported = deserialize(data)

    num_inputs = len(jax.tree_util.tree_leaves(random_inputs(name, model, 1)))
    assert len(exported.in_avals) == len(jax.tree_util.tree_leaves(exported_with)) + num_inputs
    assert all(str(aval.shape[0]) == "batch" for aval in exported.in_avals[-num_inputs:])
    assert largest_leaf_bytes(exported_with) not in data  # the weights are not constants of the module
    assert exported.module_kept_var_idx == tuple(range(len(exported.in_avals)))  # unused ones kept too

    variables = random_variables(model, seed=1)  # other weights than at export: they are arguments
    inputs = random_inputs(name, model, 3, seed=1)
    expected = jax.jit(
        lambda v, *x: model.apply(v, *x[:1], **dict(zip(["attention_mask"], x[1:])), **kwargs)
    )(variables, *inputs)
    # Batch 3, and batch 1 (its first example: the heads treat examples independently at inference).
    first = jax.tree_util.tree_map(lambda x: x[:1], (inputs, expected))
    for batch_size, (batch_inputs, batch_expected) in ((3, (inputs, expected)), (1, first)):
        ours = call_exported(exported, variables, *batch_inputs)
        assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(batch_expected)
        for got, want in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(batch_expected)):
            assert got.shape == want.shape and got.shape[0] == batch_size
            assert np.abs(want).max() > 1e-3 and max_rel_err(got, want) <= 1e-5


def test_baked_weights_would_be_found_and_ours_are_far_smaller():
    """The byte search above finds weights that are constants; the module is a fraction of the weights."""
    name = "PerceiverForImageClassificationLearned"
    model = model_of(name)
    variables = random_variables(model, seed=0)
    (images,) = random_inputs(name, model, 2)
    baked = jax.export.export(jax.jit(lambda x: model.apply(variables, x)))(images)
    assert largest_leaf_bytes(variables) in serialize(baked)
    parameter_bytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(variables))
    assert len(serialize(export_head(model, variables, images))) < parameter_bytes / 10


def test_export_for_several_platforms_runs_here():
    name = "PerceiverForSequenceClassification"
    model = model_of(name)
    variables = random_variables(model, seed=0)
    inputs = random_inputs(name, model, 2)
    exported = deserialize(serialize(export_head(model, variables, *inputs, platforms=("cpu", "cuda"))))
    assert exported.platforms == ("cpu", "cuda")
    frozen = flax.core.freeze(variables)  # frozen variables are accepted too
    np.testing.assert_allclose(
        call_exported(exported, frozen, *inputs),
        jax.jit(lambda v, ids, mask: model.apply(v, ids, attention_mask=mask))(variables, *inputs),
        rtol=1e-5,
        atol=1e-6,
    )


def test_clear_errors():
    name = "PerceiverForSequenceClassification"
    model = model_of(name)
    variables = random_variables(model, seed=0)
    ids, mask = random_inputs(name, model, 2)
    with pytest.raises(TypeError, match="inputs"):
        export_head(model, variables)
    with pytest.raises(ValueError, match=r"not variables\['params'\]"):
        export_head(model, variables["params"], ids, mask)
    with pytest.raises(ValueError, match="leading batch axis"):
        export_head(model, variables, ids[0, 0], mask)
    with pytest.raises(ValueError, match="not a serialized jax.export module"):
        deserialize(b"not a module")
    exported = export_head(model, variables, ids, mask)
    with pytest.raises(ValueError, match=r"expected \(batch, 8\) and called with \(2, 7\)"):
        call_exported(exported, variables, ids[:, :7], mask[:, :7])
