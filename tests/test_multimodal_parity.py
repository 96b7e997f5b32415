"""Parity of the multimodal autoencoding head with HF's torch `PerceiverForMultimodalAutoencoding`.

Every HF parameter is re-drawn at O(1) scale (`helpers.redraw_`) and outputs are compared in float32 at
a relative error (max|jax - torch| / max|torch|) of at most 1e-5 per output. The small model uses
`cross_attention_shape_for_attention='q'`, the official-size one HF's default 'kv', so both qk-width rules
of the decoder are covered. HF crashes without `subsampled_output_points`; our decode of every point is
checked against HF decoding all indices as subsampled points, which is the convention we document.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from helpers import count_params, max_rel_err, redraw_, save_random_hf

from perceiver_jax import (
    PerceiverConfig,
    PerceiverForMultimodalAutoencoding,
    from_pretrained,
    save_pretrained,
)
from perceiver_jax.official import ARCHITECTURES, NUM_PARAMETERS
from perceiver_jax.decoders import BasicDecoder
from perceiver_jax.hf import abstract_variables, hf_key, load_hf_state_dict, to_hf_state_dict
from perceiver_jax.multimodal import BasicVideoAutoencodingDecoder
from perceiver_jax.parity import main as parity_main
from perceiver_jax.position_encoding import FourierPositionEncoding

RTOL = 1e-5

SMALL = dict(
    num_latents=12, d_latents=32, d_model=64, num_blocks=2, num_self_attends_per_block=2,
    num_self_attention_heads=2, num_cross_attention_heads=1, cross_attention_shape_for_attention="q",
    num_labels=5, num_frames=2, audio_samples_per_frame=24, samples_per_patch=4, image_size=12,
    output_shape=[1, 2, 8, 12],  # output grid unlike the input video (2 x 12 x 12)
    output_num_channels=24, _label_trainable_num_channels=20,
)  # fmt: skip
NUM_VIDEO_POINTS = 2 * 8 * 12
NUM_AUDIO_POINTS = 2 * 24 // 4
NUM_TOKENS = NUM_AUDIO_POINTS + 2 * 3 * 3 + 1  # audio, 1x4x4 video patches, label


def _inputs(rng, batch_size, frames, size, samples, num_labels):
    """Random (jax inputs, torch inputs) of the multimodal head; torch's video is (B, T, C, H, W)."""
    video = rng.standard_normal((batch_size, frames, size, size, 3)).astype(np.float32)
    audio = rng.standard_normal((batch_size, samples, 1)).astype(np.float32)
    label = rng.standard_normal((batch_size, num_labels)).astype(np.float32)
    ours = {"image": jnp.asarray(video), "audio": jnp.asarray(audio), "label": jnp.asarray(label)}
    theirs = {
        "image": torch.tensor(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3))),
        "audio": torch.tensor(audio),
        "label": torch.tensor(label),
    }
    return ours, theirs


def _hf_logits(torch_model, inputs, points, mask=None):
    """HF's logits dict (numpy) for `points` {'image', 'audio'} (the label is always decoded)."""
    subsampled = {
        "image": torch.tensor(points["image"]),
        "audio": torch.tensor(points["audio"]),
        "label": None,
    }
    with torch.no_grad():
        logits = torch_model(
            inputs=inputs,
            attention_mask=None if mask is None else torch.tensor(mask),
            subsampled_output_points=subsampled,
        ).logits
    return {k: v.numpy() for k, v in logits.items()}


def _assert_close(ours, reference, rtol=RTOL):
    assert set(ours) == set(reference) == {"audio", "image", "label"}
    for key, ref in reference.items():
        assert ours[key].shape == ref.shape, (key, ours[key].shape, ref.shape)
        err = max_rel_err(ours[key], ref)
        assert err <= rtol, f"{key}: relative error {err:.2e} > {rtol:.0e}"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A re-drawn small HF model saved to a folder, our model loaded from it, shared inputs and HF outputs."""
    folder = tmp_path_factory.mktemp("multimodal_small")
    hf_config = transformers.PerceiverConfig(**SMALL)
    torch_model = save_random_hf(transformers.PerceiverForMultimodalAutoencoding, hf_config, folder, seed=0)
    model, variables = from_pretrained(str(folder))
    rng = np.random.default_rng(0)
    inputs, torch_inputs = _inputs(rng, 2, 2, 12, 2 * 24, 5)
    mask = np.ones((2, NUM_TOKENS), np.int64)
    mask[1, -6:] = 0  # the label and the last 5 video tokens of the second example
    points = {
        "image": rng.permutation(NUM_VIDEO_POINTS)[:70],  # unsorted
        "audio": rng.permutation(NUM_AUDIO_POINTS)[:5],
    }
    apply = jax.jit(lambda v, x, m, p: model.apply(v, x, attention_mask=m, subsampled_output_points=p))
    ours = apply(variables, inputs, jnp.asarray(mask), {k: jnp.asarray(v) for k, v in points.items()})
    reference = _hf_logits(torch_model, torch_inputs, points, mask)
    return dict(
        folder=folder,
        torch_model=torch_model,
        model=model,
        variables=variables,
        inputs=inputs,
        torch_inputs=torch_inputs,
        mask=mask,
        points=points,
        apply=apply,
        ours=ours,
        reference=reference,
    )


def test_parity_with_subsampled_points_and_mask(small):
    _assert_close(small["ours"], small["reference"])
    assert small["ours"]["image"].shape == (2, 70, 3)
    assert small["ours"]["audio"].shape == (2, 5 * 4)
    assert small["ours"]["label"].shape == (2, 5)


def test_label_input_has_no_effect(small):
    """HF always replaces the label tokens by the mask token (mask probability 1)."""
    other = dict(small["inputs"], label=small["inputs"]["label"] + 3.0)
    points = {k: jnp.asarray(v) for k, v in small["points"].items()}
    outputs = small["apply"](small["variables"], other, jnp.asarray(small["mask"]), points)
    for key in ("audio", "image", "label"):
        np.testing.assert_array_equal(outputs[key], small["ours"][key])


def test_decode_all_points(small):
    """No subsampled points: every point is decoded, in chunks, at `-1 + 2 * index / dim`; equal to HF
    decoding every index as subsampled points and to our subsampled decodes of a partition."""
    model, variables, inputs = small["model"].clone(chunk_size=64), small["variables"], small["inputs"]
    everything = jax.jit(model.apply)(variables, inputs)
    assert everything["image"].shape == (2, NUM_VIDEO_POINTS, 3)
    assert everything["audio"].shape == (2, NUM_AUDIO_POINTS * 4)
    all_points = {"image": np.arange(NUM_VIDEO_POINTS), "audio": np.arange(NUM_AUDIO_POINTS)}
    _assert_close(everything, _hf_logits(small["torch_model"], small["torch_inputs"], all_points))

    perm = {k: np.random.default_rng(1).permutation(v) for k, v in all_points.items()}
    parts = [{k: jnp.asarray(np.array_split(v, 3)[i]) for k, v in perm.items()} for i in range(3)]
    pieces = [small["apply"](variables, inputs, None, p) for p in parts]
    for key, n in (("image", NUM_VIDEO_POINTS), ("audio", NUM_AUDIO_POINTS)):
        stitched = np.concatenate(
            [np.asarray(p[key]).reshape(2, len(part[key]), -1) for p, part in zip(pieces, parts)], 1
        )
        unpermuted = np.empty_like(stitched)
        unpermuted[:, perm[key]] = stitched
        full = np.asarray(everything[key]).reshape(2, n, -1)
        assert max_rel_err(unpermuted, full) <= 1e-6
    for piece in pieces:
        assert max_rel_err(piece["label"], everything["label"]) <= 1e-6


def test_round_trips(small, tmp_path):
    """HF -> Flax -> HF gives identical tensors; Flax -> save_pretrained -> HF torch gives our outputs."""
    original = load_hf_state_dict(str(small["folder"]))
    converted = to_hf_state_dict(small["variables"])
    assert set(converted) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(converted[key], value, err_msg=key)

    save_pretrained(small["model"], small["variables"], str(tmp_path))
    reloaded = transformers.PerceiverForMultimodalAutoencoding.from_pretrained(str(tmp_path)).eval()
    _assert_close(small["ours"], _hf_logits(reloaded, small["torch_inputs"], small["points"], small["mask"]))
    assert PerceiverConfig.from_hf(str(tmp_path)) == small["model"].config


def test_parity_cli(small, capsys):
    assert parity_main([str(small["folder"])]) == 0
    assert "parity OK" in capsys.readouterr().out


def test_official_dims(tmp_path):
    """deepmind/multimodal-perceiver's architecture: 19,858,855 parameters in HF and here, and parity on a
    shorter, smaller video (16 x 32 x 32) and audio (3840 samples) decoded at 2048 + 120 random points."""
    hf_config = transformers.PerceiverConfig(**ARCHITECTURES["deepmind/multimodal-perceiver"])
    torch_model = save_random_hf(transformers.PerceiverForMultimodalAutoencoding, hf_config, tmp_path, seed=1)
    assert sum(p.numel() for p in torch_model.parameters()) == NUM_PARAMETERS["deepmind/multimodal-perceiver"]
    fresh = PerceiverForMultimodalAutoencoding(PerceiverConfig.from_hf(hf_config))
    assert (
        count_params(abstract_variables(fresh)["params"]) == NUM_PARAMETERS["deepmind/multimodal-perceiver"]
    )

    model, variables = from_pretrained(str(tmp_path))
    rng = np.random.default_rng(2)
    inputs, torch_inputs = _inputs(rng, 1, 16, 32, 3840, 700)
    points = {"image": rng.permutation(16 * 224 * 224)[:2048], "audio": rng.permutation(1920)[:120]}
    jax_points = {k: jnp.asarray(v) for k, v in points.items()}
    ours = jax.jit(lambda v, x, p: model.apply(v, x, subsampled_output_points=p))(
        variables, inputs, jax_points
    )
    _assert_close(ours, _hf_logits(torch_model, torch_inputs, points))


def test_video_decoder_matches_hf():
    """`BasicVideoAutoencodingDecoder` decoding a whole (T, H, W) grid into a video, as HF's."""
    hf_config = transformers.PerceiverConfig(d_latents=16, num_latents=6)
    fourier = dict(num_bands=3, max_resolution=(2, 4, 6), sine_only=False, concat_pos=True)
    torch.manual_seed(0)
    theirs = transformers.models.perceiver.modeling_perceiver.PerceiverBasicVideoAutoencodingDecoder(
        hf_config,
        output_shape=[1, 2, 4, 6],
        position_encoding_type="fourier",
        output_num_channels=7,
        num_channels=21,
        fourier_position_encoding_kwargs=fourier,
    ).eval()
    redraw_(theirs, seed=3)
    z = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        query = theirs.decoder_query(torch.zeros(1, 1, 1), subsampled_points=torch.arange(48))
        reference = theirs(query, z).logits.numpy()

    config = PerceiverConfig.from_hf(hf_config)
    positions = FourierPositionEncoding(index_dims=(2, 4, 6), num_bands=3)
    inner = BasicDecoder(config=config, output_num_channels=7, output_position_encodings=positions)
    ours = BasicVideoAutoencodingDecoder(decoder=inner)

    def run(module, z):
        return module(module.decoder_query(z, subsampled_points=jnp.arange(48)), z)[0]

    shapes = nn.unbox(jax.eval_shape(lambda: ours.init(jax.random.key(0), z.numpy(), method=run)))
    state = theirs.state_dict()
    params = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        value = state[hf_key("params", path)].numpy()
        params[path] = value.T if path[-1] == "kernel" else value
        assert params[path].shape == leaf.shape, path
    assert len(params) == len(state)
    variables = {"params": traverse_util.unflatten_dict(params)}
    video = ours.apply(variables, jnp.asarray(z.numpy()), method=run)
    assert video.shape == reference.shape == (1, 2, 4, 6, 7)
    assert max_rel_err(video, reference) <= RTOL


# --- Bad inputs: clear errors naming what is wrong.


@pytest.fixture(scope="module")
def checker(small):
    """Runs the small model abstractly (shapes only) on modified inputs."""

    def run(inputs=None, points=None, **changes):
        inputs = dict(small["inputs"] if inputs is None else inputs, **changes)
        return jax.eval_shape(
            lambda v: small["model"].apply(v, inputs, subsampled_output_points=points), small["variables"]
        )

    return run


@pytest.mark.parametrize("missing", ["image", "audio", "label"])
def test_missing_modality(checker, small, missing):
    inputs = {k: v for k, v in small["inputs"].items() if k != missing}
    with pytest.raises(ValueError, match=f"missing \\['{missing}'\\]"):
        checker(inputs)


@pytest.mark.parametrize(
    "name, shape, message",
    [
        ("image", (2, 12, 12, 3), "image must be a video"),
        ("image", (2, 2, 12, 12, 4), "image must be a video"),
        ("image", (2, 2, 10, 12, 3), "height, width multiples of 4"),
        ("image", (2, 1, 12, 12, 3), "at least 2 frames"),
        ("audio", (2, 48), "audio must be"),
        ("audio", (2, 46, 1), "multiple of samples_per_patch=4"),
        ("label", (2, 6), "label must be"),
        ("label", (3, 5), "different batch sizes"),
    ],
)
def test_wrong_shapes(checker, name, shape, message):
    with pytest.raises(ValueError, match=message):
        checker(**{name: jnp.zeros(shape, jnp.float32)})


@pytest.mark.parametrize(
    "points, message",
    [
        ({"video": np.arange(3)}, "unknown modalities"),
        ({"image": np.zeros((2, 3), np.int32)}, "1-D integer array"),
        ({"image": np.arange(3.0)}, "1-D integer array"),
        ({"image": np.array([0, NUM_VIDEO_POINTS])}, rf"must be in \[0, {NUM_VIDEO_POINTS}\)"),
        ({"audio": np.array([-1])}, rf"must be in \[0, {NUM_AUDIO_POINTS}\)"),
    ],
)
def test_bad_subsampled_points(checker, points, message):
    with pytest.raises(ValueError, match=message):
        checker(points=points)


def test_random_masking_needs_rng(small):
    """A mask probability strictly between 0 and 1 draws masks from the 'masking' RNG."""
    model = PerceiverForMultimodalAutoencoding(small["model"].config.replace(multimodal_audio_mask_prob=0.5))
    points = {"image": jnp.arange(3), "audio": jnp.arange(2)}
    args = (small["variables"], small["inputs"])
    with pytest.raises(ValueError, match="rngs=\\{'masking': key\\}"):
        jax.eval_shape(lambda: model.apply(*args, subsampled_output_points=points))
    masked = jax.eval_shape(
        lambda: model.apply(*args, subsampled_output_points=points, rngs={"masking": jax.random.key(0)})
    )
    assert masked["audio"].shape == (2, 2 * 4) and masked["image"].shape == (2, 3, 3)
