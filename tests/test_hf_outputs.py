"""HF-style extra outputs on every head: `output_hidden_states` (the latents entering each self-attention
layer and leaving each block) and `output_attentions` (self-attention maps, encoder and decoder
cross-attention maps), against HF's torch model at O(1) weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from helpers import max_rel_err, save_random_hf, tiny_dims

from perceiver_jax import PerceiverOutput, from_pretrained

TOL = 1e-5
COMMON = tiny_dims(num_latents=6, num_blocks=2, num_labels=3)
rng = np.random.default_rng(0)
TEXT = rng.integers(1, 30, (2, 10))
MASK = np.ones((2, 10), np.int64)
MASK[1, 6:] = 0
IMAGE = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
VIDEO = rng.standard_normal((2, 2, 8, 8, 3)).astype(np.float32)
AUDIO = rng.standard_normal((2, 32, 1)).astype(np.float32)
LABEL = rng.standard_normal((2, 3)).astype(np.float32)
POINTS = {"image": np.arange(0, 128, 5), "audio": np.arange(3)}

# head -> (HF config overrides, perceiver-jax kwargs, torch kwargs)
CASES = {
    "PerceiverForMaskedLM": (
        dict(d_model=16, vocab_size=30, max_position_embeddings=10),
        dict(inputs=jnp.asarray(TEXT, jnp.int32), attention_mask=jnp.asarray(MASK)),
        dict(inputs=torch.tensor(TEXT), attention_mask=torch.tensor(MASK)),
    ),
    "PerceiverForSequenceClassification": (
        dict(d_model=16, vocab_size=30, max_position_embeddings=10),
        dict(inputs=jnp.asarray(TEXT, jnp.int32), attention_mask=jnp.asarray(MASK)),
        dict(inputs=torch.tensor(TEXT), attention_mask=torch.tensor(MASK)),
    ),
    "PerceiverForImageClassificationLearned": (
        dict(d_model=512, image_size=8),
        dict(inputs=jnp.asarray(IMAGE)),
        dict(inputs=torch.tensor(IMAGE.transpose(0, 3, 1, 2).copy())),
    ),
    "PerceiverForImageClassificationFourier": (
        dict(d_model=261, image_size=8),
        dict(inputs=jnp.asarray(IMAGE)),
        dict(inputs=torch.tensor(IMAGE.transpose(0, 3, 1, 2).copy())),
    ),
    "PerceiverForImageClassificationConvProcessing": (
        dict(d_model=322, image_size=16),
        dict(inputs=jnp.asarray(np.tile(IMAGE, (1, 2, 2, 1)))),
        dict(inputs=torch.tensor(np.tile(IMAGE, (1, 2, 2, 1)).transpose(0, 3, 1, 2).copy())),
    ),
    "PerceiverForOpticalFlow": (
        dict(d_model=322, train_size=[4, 6]),
        dict(inputs=jnp.asarray(rng.standard_normal((2, 2, 4, 6, 27)), jnp.float32)),
        None,  # torch inputs built from the jax ones below (channels moved)
    ),
    "PerceiverForMultimodalAutoencoding": (
        dict(d_model=16, num_frames=2, image_size=8, audio_samples_per_frame=16, samples_per_patch=8,
             output_shape=[1, 2, 8, 8], output_num_channels=8, _label_trainable_num_channels=8),
        dict(
            inputs={"image": jnp.asarray(VIDEO), "audio": jnp.asarray(AUDIO), "label": jnp.asarray(LABEL)},
            subsampled_output_points={k: jnp.asarray(v) for k, v in POINTS.items()},
        ),
        dict(
            inputs={
                "image": torch.tensor(VIDEO.transpose(0, 1, 4, 2, 3).copy()),
                "audio": torch.tensor(AUDIO),
                "label": torch.tensor(LABEL),
            },
            subsampled_output_points={**{k: torch.tensor(v) for k, v in POINTS.items()}, "label": None},
        ),  # fmt: skip
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_hidden_states_and_attentions_match_hf(name, tmp_path):
    overrides, ours_kwargs, torch_kwargs = CASES[name]
    if torch_kwargs is None:
        torch_kwargs = dict(inputs=torch.tensor(np.moveaxis(np.asarray(ours_kwargs["inputs"]), -1, 2).copy()))
    torch_model = save_random_hf(
        getattr(transformers, name), transformers.PerceiverConfig(**{**COMMON, **overrides}), tmp_path
    )
    model, variables = from_pretrained(str(tmp_path))
    ours = jax.jit(lambda v, kw: model.apply(v, **kw, output_hidden_states=True, output_attentions=True))(
        variables, ours_kwargs
    )
    with torch.no_grad():
        theirs = torch_model(**torch_kwargs, output_hidden_states=True, output_attentions=True)
    assert isinstance(ours, PerceiverOutput)
    # num_blocks x (the input of each of its layers + the block's output), HF's order.
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 2 * (2 + 1)
    assert len(ours.attentions) == len(theirs.attentions) == 2 * 2
    assert len(ours.cross_attentions) == len(theirs.cross_attentions) == 2  # encoder, decoder
    for key in ("hidden_states", "attentions", "cross_attentions"):
        for i, (a, b) in enumerate(zip(getattr(ours, key), getattr(theirs, key))):
            assert a.shape == tuple(b.shape), (key, i)
            assert max_rel_err(a, b) <= TOL, (key, i)
    logits = ours.logits if isinstance(ours.logits, dict) else {"logits": ours.logits}
    reference = theirs.logits if isinstance(theirs.logits, dict) else {"logits": theirs.logits}
    for key, value in reference.items():
        assert max_rel_err(logits[key], value) <= TOL, key
