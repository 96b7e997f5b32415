"""Unit tests of the trainer's input pipeline, losses and optimiser pieces (fast, no training)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from helpers import tiny_dims

from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM, PerceiverTokenizer
from perceiver_jax.tokenizer import CLS_ID, MASK_ID, SEP_ID
from train import optim, tasks
from train.data import text as data


@pytest.fixture(scope="module")
def corpus():
    return data.load_documents("")


def test_windows_split_the_corpus_into_fixed_disjoint_train_and_eval_parts(corpus):
    train, held_out = data.Windows(corpus, 254, "train", 20), data.Windows(corpus, 254, "eval", 20)
    assert len(corpus[0]) == len(data.embedded_corpus()) > 400_000
    assert len(train) + len(held_out) == -(-len(corpus[0]) // 254)
    assert abs(len(held_out) / (len(train) + len(held_out)) - 0.05) < 0.001
    assert set(held_out.starts // 254) == set(range(0, len(train) + len(held_out), 20))
    assert bytes(held_out[1]) == bytes(corpus[0][20 * 254 : 21 * 254])
    # The encoding is the tokenizer's: [CLS] bytes [SEP], padded with [PAD].
    ids, mask = data.encode(held_out[0][:100], 128)
    expected = PerceiverTokenizer()(bytes(held_out[0][:100]).decode(), padding="max_length", max_length=128)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


def test_masking_follows_bert_rates_and_spares_special_tokens(corpus):
    source = data.MaskBytes(256, 0.15)
    windows = data.Windows(corpus, 200, "train", 20)
    examples = [source(windows[i], np.random.default_rng(i)) for i in range(300)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    inputs, targets, picked = batch["inputs"], batch["targets"], batch["weights"].astype(bool)
    is_byte = targets >= 6
    assert not picked[~is_byte].any()
    assert (
        (targets[:, 0] == CLS_ID).all()
        and (targets[:, 201] == SEP_ID).all()
        and (targets[:, 202:] == 0).all()
    )
    np.testing.assert_array_equal(inputs[~picked], targets[~picked])
    assert picked.sum() / is_byte.sum() == pytest.approx(0.15, abs=0.005)
    as_mask = inputs[picked] == MASK_ID
    kept = inputs[picked] == targets[picked]
    assert as_mask.mean() == pytest.approx(0.8, abs=0.015)
    assert kept.mean() == pytest.approx(0.1, abs=0.01)
    assert (~as_mask & ~kept).mean() == pytest.approx(0.1, abs=0.01)
    assert (inputs >= 0).all() and (inputs < 262).all()


def test_files_globs_and_missing_files(tmp_path):
    for name, text in (("a.txt", b"hello"), ("b.txt", b"world!"), ("empty.txt", b"")):
        (tmp_path / name).write_bytes(text)
    docs = data.load_documents(f"{tmp_path}/*.txt")
    assert [bytes(d) for d in docs] == [b"hello", b"world!"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.load_documents([str(tmp_path / "a.txt"), str(tmp_path / "nope.txt")])


def test_decay_mask_spares_biases_and_norm_scales():
    config = PerceiverConfig(**tiny_dims(
        d_model=8, num_self_attends_per_block=1, num_cross_attention_heads=2, max_position_embeddings=16,
        mlm_decoder=dict(num_heads=2, qk_channels=8),
    ))  # fmt: skip
    params = PerceiverForMaskedLM(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"]
    for boxed in (True, False):
        tree = params if boxed else nn.unbox(params)
        mask = optim.decay_mask(tree)
        flat = {jax.tree_util.keystr(path): m for path, m in jax.tree_util.tree_leaves_with_path(mask)}
        assert flat and all(m == (not key.endswith(("['bias']", "['scale']"))) for key, m in flat.items())
        assert any("latents" in k and m for k, m in flat.items())
        assert any("position_embeddings" in k and m for k, m in flat.items())


def test_lamb_schedule_is_constant_then_cosine_and_scaled_by_batch():
    config = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-4,
            lr_batch_scaling=True,
            global_batch_size=512,
            num_train_steps=100,
            schedule="constant_cosine",
            warmup_steps=0,
        )
    )
    schedule = optim.learning_rate_schedule(config)
    assert schedule(0) == schedule(49) == pytest.approx(1e-3)
    assert schedule(75) == pytest.approx(5e-4, rel=1e-3) and schedule(100) == pytest.approx(0.0, abs=1e-9)


def test_classification_sums_weight_and_smooth():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    batch = {"targets": jnp.array([[0, 2]]), "weights": jnp.array([[1.0, 0.0]])}
    sums = tasks.classification_sums(logits, batch)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[0, :1], batch["targets"][0, :1]).sum()
    assert sums["loss"] == pytest.approx(float(expected)) and sums["weight"] == 1 and sums["correct"] == 1
    np.testing.assert_array_equal(sums["target_counts"], [1, 0, 0])
    assert tasks.classification_sums(logits, batch, 0.1)["loss"] > sums["loss"]
