"""Parity of the image-classification and optical-flow heads with Hugging Face's torch Perceiver.

Every HF parameter and BatchNorm buffer is re-drawn at O(1) scale (`helpers.redraw_`) and outputs are
compared in float32 at a relative error (max|jax - torch| / max|torch|) of at most 1e-5. Images are fed
channels-last to perceiver-jax and NCHW to torch; flow patches as (B, 2, H, W, 27) and (B, 2, 27, H, W).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from helpers import count_params, max_rel_err, redraw_, save_random_hf
from safetensors.numpy import load_file
from transformers.models.perceiver import modeling_perceiver as hf_perceiver

from perceiver_jax import HEADS, PerceiverConfig, PerceiverForOpticalFlow, from_pretrained, save_pretrained
from perceiver_jax.hf import abstract_variables, convert_state_dict, hf_key
from perceiver_jax.official import ARCHITECTURES, NUM_PARAMETERS
from perceiver_jax.parity import main as parity_main
from perceiver_jax.position_encoding import (
    FourierPositionEncoding,
    PositionEncodingProjector,
    TrainablePositionEncoding,
)
from perceiver_jax.multimodal import AudioPreprocessor
from perceiver_jax.vision import ImagePreprocessor, space_to_depth

RTOL = 1e-5
LEARNED = "PerceiverForImageClassificationLearned"
FOURIER = "PerceiverForImageClassificationFourier"
CONV = "PerceiverForImageClassificationConvProcessing"
FLOW = "PerceiverForOpticalFlow"
HEAD_NAMES = (LEARNED, FOURIER, CONV, FLOW)

_SMALL = dict(
    num_latents=8, d_latents=32, num_blocks=2, num_self_attends_per_block=2, num_self_attention_heads=4,
    num_cross_attention_heads=1, num_labels=5,
)  # fmt: skip
# head -> (HF config kwargs, input shape for perceiver-jax); Fourier/conv heads take non-square images.
SMALL = {
    LEARNED: (dict(_SMALL, d_model=512, image_size=8), (2, 8, 8, 3)),
    FOURIER: (dict(_SMALL, d_model=261, image_size=12), (2, 12, 10, 3)),
    CONV: (dict(_SMALL, d_model=322, image_size=32), (2, 32, 28, 3)),
    FLOW: (dict(_SMALL, d_model=322, train_size=[6, 8]), (2, 2, 6, 8, 27)),
}

# Official checkpoints: head -> (HF config kwargs, published parameter count, parity input shape).
OFFICIAL = {
    head: (ARCHITECTURES[hub_id], NUM_PARAMETERS[hub_id], shape)
    for head, hub_id, shape in (
        (LEARNED, "deepmind/vision-perceiver-learned", (1, 64, 48, 3)),  # 224^2 table interpolated
        (FOURIER, "deepmind/vision-perceiver-fourier", (1, 48, 64, 3)),
        (CONV, "deepmind/vision-perceiver-conv", (1, 96, 80, 3)),
        (FLOW, "deepmind/optical-flow-perceiver", (1, 2, 24, 32, 27)),  # parity at train_size 24x32
    )
}


def _to_torch(x: np.ndarray) -> torch.Tensor:
    """Channels-last images (B, H, W, C) -> NCHW; flow patches (B, T, H, W, C) -> (B, T, C, H, W)."""
    return torch.tensor(np.ascontiguousarray(np.moveaxis(x, -1, 1 if x.ndim == 4 else 2)))


def _random_inputs(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_logits(model, x: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(inputs=_to_torch(x), **kwargs).logits.numpy()


def _jax_logits(model, variables, x: np.ndarray, **kwargs) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, jnp.asarray(x)))


def _hf_config(kwargs) -> transformers.PerceiverConfig:
    return transformers.PerceiverConfig(**kwargs)


def _random_hf(name: str, kwargs, seed: int = 0):
    """HF model built on the meta device (no init cost), materialised and re-drawn at O(1) scale."""
    with torch.device("meta"):
        model = getattr(transformers, name)(_hf_config(kwargs))
    model = model.to_empty(device="cpu").eval()
    for buffer in model.buffers():
        if not buffer.is_floating_point():  # BatchNorm's num_batches_tracked
            buffer.zero_()
    return redraw_(model, seed)


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    """head name -> (folder of a saved O(1)-redrawn small HF model, that torch model), built once."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            config = _hf_config(SMALL[name][0])
            cache[name] = (str(folder), save_random_hf(getattr(transformers, name), config, folder, seed=1))
        return cache[name]

    return get


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_small_parity_and_save_round_trip(name, small_hf, tmp_path):
    folder, hf_model = small_hf(name)
    model, variables = from_pretrained(folder)
    assert type(model) is HEADS[name]
    x = _random_inputs(SMALL[name][1])
    ref = _torch_logits(hf_model, x)
    ours = _jax_logits(model, variables, x)
    assert ours.shape == ref.shape == ((2, 6, 8, 2) if name == FLOW else (2, 5))
    assert np.abs(ref[0] - ref[1]).max() > 1e-3 * np.abs(ref).max()  # the inputs matter
    assert max_rel_err(ours, ref) <= RTOL

    # perceiver-jax -> HF folder: identical tensors (BatchNorm buffers included), HF loads it cleanly and
    # computes the same outputs.
    save_pretrained(model, variables, str(tmp_path))
    original, saved = load_file(f"{folder}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert sorted(saved) == sorted(original)
    for key, value in original.items():
        assert saved[key].dtype == value.dtype and np.array_equal(saved[key], value), key
    reloaded, info = getattr(transformers, name).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info
    assert max_rel_err(ours, _torch_logits(reloaded.eval(), x)) <= RTOL


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_parity_cli(name, small_hf, capsys):
    folder, _ = small_hf(name)
    assert parity_main([folder]) == 0
    assert "parity OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, image_shape",
    [(LEARNED, (2, 12, 10, 3)), (LEARNED, (2, 5, 6, 3)), (FOURIER, (2, 8, 14, 3)), (CONV, (2, 24, 40, 3))],
)
def test_interpolate_pos_encoding(name, image_shape, small_hf):
    """A learned table is resized as HF does; Fourier features, computed for any grid, ignore the flag as
    HF does (they are not a table to resize)."""
    folder, hf_model = small_hf(name)
    model, variables = from_pretrained(folder)
    x = _random_inputs(image_shape, seed=2)
    ref = _torch_logits(hf_model, x, interpolate_pos_encoding=True)
    ours = _jax_logits(model, variables, x, interpolate_pos_encoding=True)
    assert max_rel_err(ours, ref) <= RTOL


def test_conv_stem_train_mode_updates_batch_stats_as_torch():
    """Train mode: batch statistics normalise and update the running ones like torch (unbiased var)."""
    kwargs = dict(SMALL[CONV][0], attention_probs_dropout_prob=0.0)
    hf_model = _random_hf(CONV, kwargs, seed=3).train()
    model = HEADS[CONV](PerceiverConfig.from_hf(hf_model.config))
    variables = convert_state_dict(model, {k: v.numpy() for k, v in hf_model.state_dict().items()})
    x = _random_inputs(SMALL[CONV][1], seed=3)
    ref = _torch_logits(hf_model, x)
    train_step = jax.jit(lambda v, x: model.apply(v, x, deterministic=False, mutable=["batch_stats"]))
    ours, updates = train_step(variables, jnp.asarray(x))
    assert max_rel_err(ours, ref) <= RTOL
    stats = updates["batch_stats"]["perceiver"]["input_preprocessor"]["convnet"]["batchnorm"]
    bn = hf_model.perceiver.input_preprocessor.convnet.batchnorm
    assert max_rel_err(nn.unbox(stats["mean"]), bn.running_mean) <= RTOL
    assert max_rel_err(nn.unbox(stats["var"]), bn.running_var) <= RTOL
    before = variables["batch_stats"]["perceiver"]["input_preprocessor"]["convnet"]["batchnorm"]["var"]
    assert max_rel_err(nn.unbox(stats["var"]), nn.unbox(before)) > 1e-3  # the statistics did move


def test_flow_chunked_decoding(small_hf):
    folder, hf_model = small_hf(FLOW)
    model, variables = from_pretrained(folder, chunk_size=5)  # 48 queries: 10 chunks, the last padded
    x = _random_inputs(SMALL[FLOW][1], seed=4)
    assert max_rel_err(_jax_logits(model, variables, x), _torch_logits(hf_model, x)) <= RTOL
    # init decodes in chunks too (parameters are created outside lax.map)
    assert jax.tree_util.tree_map(jnp.shape, abstract_variables(model)) == jax.tree_util.tree_map(
        jnp.shape, variables
    )


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_official_dims(name):
    kwargs, published, shape = OFFICIAL[name]
    if name == FLOW:  # nothing depends on train_size but the Fourier grid: count at 368x496, run smaller
        with torch.device("meta"):
            full = getattr(transformers, name)(_hf_config(kwargs))
        assert sum(p.numel() for p in full.parameters()) == published
        full_model = HEADS[name](PerceiverConfig.from_hf(full.config))
        assert count_params(abstract_variables(full_model)["params"]) == published
        kwargs = dict(kwargs, train_size=list(shape[2:4]))
    hf_model = _random_hf(name, kwargs)
    assert sum(p.numel() for p in hf_model.parameters()) == published
    config = PerceiverConfig.from_hf(hf_model.config)
    model = HEADS[name](config, chunk_size=256) if name == FLOW else HEADS[name](config)
    variables = convert_state_dict(model, {k: v.numpy() for k, v in hf_model.state_dict().items()})
    assert count_params(variables["params"]) == published
    x = _random_inputs(shape, seed=5)
    kw = {"interpolate_pos_encoding": True} if name == LEARNED else {}
    ref = _torch_logits(hf_model, x, **kw)
    ours = _jax_logits(model, variables, x, **kw)
    assert max_rel_err(ours, ref) <= RTOL


# --- ImagePreprocessor settings the heads do not use, against HF's PerceiverImagePreprocessor.


def _fourier(num_bands, max_resolution):
    return dict(num_bands=num_bands, max_resolution=max_resolution, concat_pos=True, sine_only=False)


def _trainable(index_dims, num_channels):
    """HF's trainable-position kwargs and our encoding of the same table."""
    hf = dict(position_encoding_type="trainable", trainable_position_encoding_kwargs=dict(
        num_channels=num_channels, index_dims=index_dims))  # fmt: skip
    return hf, TrainablePositionEncoding(index_dims=(index_dims,), num_channels=num_channels)


def _fourier_positions(num_bands, index_dims):
    """HF's Fourier-position kwargs and our encoding."""
    hf = dict(
        position_encoding_type="fourier", fourier_position_encoding_kwargs=_fourier(num_bands, index_dims)
    )
    return hf, FourierPositionEncoding(index_dims=index_dims, num_bands=num_bands)


def _projected(positions, width):
    """`positions` (HF kwargs, ours) projected to `width`."""
    hf, ours = positions
    return dict(hf, project_pos_dim=width), PositionEncodingProjector(encoding=ours, output_channels=width)


# case -> (preprocessor kwargs both take, (HF position kwargs, our position encoding), HF-only kwargs,
# input shape (channels-last)).
PREPROCESSOR_CASES = {
    "conv1x1_stride2_trainable_projected": (
        dict(prep_type="conv1x1", spatial_downsample=2, out_channels=8),
        _projected(_trainable(16, 8), 8), {}, (2, 8, 8, 3),
    ),
    "conv_stem_trainable": (
        dict(prep_type="conv", spatial_downsample=4, out_channels=8), _trainable(9, 6), {}, (2, 16, 16, 3)
    ),
    "patches_linear_fourier_projected_add": (
        dict(prep_type="patches", spatial_downsample=2, conv_after_patching=True, out_channels=10,
             concat_or_add_pos="add"),
        _projected(_fourier_positions(2, (4, 4)), 10), dict(conv_after_patching_in_channels=12), (2, 8, 8, 3),
    ),
    "video_patches_fourier": (
        dict(prep_type="patches", spatial_downsample=2, temporal_downsample=2),
        _fourier_positions(3, (2, 4, 4)), {}, (2, 4, 8, 8, 3),
    ),
    "video_pixels_fourier": (
        dict(prep_type="pixels", spatial_downsample=2, temporal_downsample=2),
        _fourier_positions(2, (2, 4, 4)), {}, (2, 4, 8, 8, 3),
    ),
}  # fmt: skip


def _variables_from_torch(torch_module, flax_module, x):
    """Flax variables of `flax_module` filled from `torch_module`'s state dict (HF names, torch layouts)."""
    state = {k: v.numpy() for k, v in torch_module.state_dict().items()}
    target = nn.unbox(jax.eval_shape(lambda: flax_module.init(jax.random.key(0), x)))
    variables = {}
    for collection, tree in target.items():
        flat = {}
        for path in traverse_util.flatten_dict(tree):
            value = state[hf_key(collection, path)]
            if path[-1] == "kernel":
                value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
            flat[path] = jnp.asarray(value)
        variables[collection] = traverse_util.unflatten_dict(flat)
    return variables


@pytest.mark.parametrize("case", sorted(PREPROCESSOR_CASES))
def test_image_preprocessor_matches_hf(case):
    common, (hf_positions, positions), hf_only, shape = PREPROCESSOR_CASES[case]
    hf_kwargs = dict(common, **hf_positions, **hf_only)
    ours = ImagePreprocessor(position_embeddings=positions, **common)
    torch.manual_seed(0)
    hf_module = redraw_(hf_perceiver.PerceiverImagePreprocessor(_hf_config({}), **hf_kwargs).eval(), seed=6)
    x = _random_inputs(shape, seed=6)
    with torch.no_grad():
        ref_tokens, _, ref_features = hf_module(_to_torch(x))
    variables = _variables_from_torch(hf_module, ours, jnp.asarray(x))
    tokens, modality_sizes, features = ours.apply(variables, jnp.asarray(x))
    assert modality_sizes is None
    assert tokens.shape == tuple(ref_tokens.shape) and tokens.shape[-1] == hf_module.num_channels
    assert max_rel_err(tokens, ref_tokens) <= RTOL
    assert max_rel_err(features, ref_features) <= RTOL


@pytest.mark.parametrize(
    "shape, spatial, temporal",
    [((2, 6, 4, 3), 2, 1), ((2, 4, 6, 4, 5), 2, 2), ((1, 6, 6, 3, 2), 3, 3)],
)
def test_space_to_depth_matches_hf(shape, spatial, temporal):
    x = _random_inputs(shape, seed=7)
    ref = hf_perceiver.space_to_depth(_to_torch(x), temporal_block_size=temporal, spatial_block_size=spatial)
    np.testing.assert_array_equal(np.asarray(space_to_depth(jnp.asarray(x), temporal, spatial)), ref.numpy())


# --- Bad inputs give errors that say what to do.


@pytest.mark.parametrize(
    "name, shape, message",
    [
        (LEARNED, (1, 10, 10, 3), "pass interpolate_pos_encoding=True .* or resize the images"),
        (LEARNED, (1, 3, 8, 8), r"RGB \(batch, height, width, 3\), channels last"),  # NCHW by mistake
        (FOURIER, (12, 10, 3), r"RGB \(batch, height, width, 3\), channels last"),  # no batch axis
        (CONV, (1, 2, 32, 28, 3), r"RGB \(batch, height, width, 3\), channels last"),
        (FLOW, (1, 2, 7, 8, 27), r"2 frames of train_size=\(6, 8\)"),
        (FLOW, (1, 3, 6, 8, 27), r"must be \(batch, 2, 6, 8, 27\)"),
        (FLOW, (1, 2, 6, 8, 26), r"must be \(batch, 2, 6, 8, 27\)"),
        (FLOW, (1, 2, 27, 6, 8), r"must be \(batch, 2, 6, 8, 27\).*channels last"),  # HF's layout
        (FLOW, (1, 6, 8, 54), r"must be \(batch, 2, 6, 8, 27\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(name, shape, message, small_hf):
    model, variables = from_pretrained(small_hf(name)[0])
    with pytest.raises(ValueError, match=message):
        model.apply(variables, jnp.zeros(shape, jnp.float32))


def test_bad_preprocessor_settings_raise():
    x = jnp.zeros((1, 8, 8, 3))
    positions = FourierPositionEncoding(index_dims=(8, 8), num_bands=2)
    with pytest.raises(ValueError, match="prep_type 'conv3x3' is not one of"):
        ImagePreprocessor(position_embeddings=positions, prep_type="conv3x3").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="power of 4"):
        ImagePreprocessor(position_embeddings=positions, spatial_downsample=2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="must divide"):
        space_to_depth(jnp.zeros((1, 5, 4, 3)), 1, 2)
    with pytest.raises(ValueError, match="flow_rescale_factor must be positive"):
        PerceiverConfig(flow_rescale_factor=0.0)
    with pytest.raises(ValueError, match="image_conv_max_resolution must hold positive integers"):
        PerceiverConfig(image_conv_max_resolution=(56, 0))


def test_hard_coded_fields_round_trip_and_stay_out_of_hf_config():
    config = PerceiverConfig.from_hf(PerceiverConfig().to_dict())
    assert config.image_fourier_max_resolution == (224, 224) and config.flow_rescale_factor == 100.0
    assert not any(
        k.startswith(("image_learned_", "image_fourier_", "image_conv_", "flow_"))
        for k in config.to_hf_dict()
    )
    with pytest.raises(ValueError, match="flow_patch_channels"):
        PerceiverConfig(flow_patch_channels=32).to_hf_dict()
    assert (
        math.prod(PerceiverForOpticalFlow(PerceiverConfig()).example_inputs()["inputs"].shape)
        == 2 * 368 * 496 * 27
    )


# case -> ((HF position kwargs, our position encoding), concat_or_add_pos); 8 tokens of 4 samples. HF's
# projection takes `out_channels` (64) inputs, so a projected encoding must be 64 wide.
AUDIO_CASES = {
    "trainable_concat": (_trainable(8, 6), "concat"),
    "trainable_projected_add": (_projected(_trainable(8, 64), 4), "add"),
    "fourier_concat": (_fourier_positions(3, (8,)), "concat"),
}


@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_audio_preprocessor_matches_hf(case):
    (hf_positions, positions), how = AUDIO_CASES[case]
    ours = AudioPreprocessor(samples_per_patch=4, position_embeddings=positions, concat_or_add_pos=how)
    hf_module = hf_perceiver.PerceiverAudioPreprocessor(
        _hf_config({}), samples_per_patch=4, concat_or_add_pos=how, **hf_positions
    )
    redraw_(hf_module.eval(), seed=8)
    x = _random_inputs((2, 32, 1), seed=8)
    with torch.no_grad():
        ref_tokens, _, ref_samples = hf_module(torch.tensor(x))
    variables = _variables_from_torch(hf_module, ours, jnp.asarray(x))
    tokens, modality_sizes, samples = ours.apply(variables, jnp.asarray(x))
    assert modality_sizes is None and tokens.shape == tuple(ref_tokens.shape) == (2, 8, ours.num_channels())
    assert max_rel_err(tokens, ref_tokens) <= RTOL
    assert max_rel_err(samples, ref_samples) <= RTOL


def test_audio_of_another_length_than_a_learned_table_says_so():
    ours = AudioPreprocessor(samples_per_patch=4, position_embeddings=_trainable(8, 6)[1])
    variables = ours.init(jax.random.key(0), jnp.zeros((1, 32, 1)))
    message = r"the audio gives 6 tokens of 4 samples: the grid \(6,\) .* table's \(8,\)"
    with pytest.raises(ValueError, match=message):
        ours.apply(variables, jnp.zeros((1, 24, 1)))
