"""Tests of `perceiver_jax.flow`: patches against torch/HF layouts, tiling and blending, colours, errors."""

import itertools

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers.models.perceiver.modeling_perceiver import space_to_depth

from helpers import redraw_, tiny_dims

from perceiver_jax.flow import (
    blend_weights,
    compute_optical_flow,
    extract_patches,
    flow_to_color,
    normalize_frames,
    predict_flow,
    save_flow_png,
    tile_origins,
)
from perceiver_jax.heads import PerceiverForOpticalFlow
from perceiver_jax.hf import from_pretrained

TRAIN = (24, 32)  # a small window keeps the tiling tests fast
OVERLAP = 6
SIZES = [(61, 83), TRAIN, (10, 17), (10, 70), (53, 20)]  # larger, equal, smaller, mixed


def hf_unfold_patches(pairs: np.ndarray) -> np.ndarray:
    """Independent reference: `(B, 2, H, W, 3)` -> HF's `(B, 2, 27, H, W)` via torch's unfold (zero pad 1),
    reordered from unfold's `(c, dy, dx)` to DeepMind's `(dy, dx, c)` channel order."""
    b, t, h, w, c = pairs.shape
    x = torch.from_numpy(pairs).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    cols = F.unfold(x, kernel_size=3, padding=1).reshape(b * t, c, 3, 3, h, w)
    return cols.permute(0, 2, 3, 1, 4, 5).reshape(b, t, 9 * c, h, w).numpy()


def coordinate_frames(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose pixels hold their own global (y, x): frame1 `(y, x, 0)`, frame2
    `(y + 500, x + 1000, 1)`."""
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frame1 = np.stack([y, x, np.zeros_like(y)], axis=-1).astype(np.float32)
    return frame1, frame1 + np.float32([500, 1000, 1])


def texture(height: int, width: int, dy: int = 0, dx: int = 0) -> np.ndarray:
    """A smooth RGB texture in [0, 255] sampled at `(y - dy, x - dx)`: its content moves by `(dx, dy)`."""
    y, x = np.meshgrid(np.arange(height) - dy, np.arange(width) - dx, indexing="ij")
    channels = [
        np.sin(0.31 * x + 0.17 * y) + np.cos(0.23 * y - 0.11 * x + 1.0),
        np.sin(0.19 * x * 0.7 + 0.29 * y + 2.0) * np.cos(0.13 * x),
        np.cos(0.27 * x - 0.21 * y + 0.5) + 0.5 * np.sin(0.37 * y),
    ]
    return (127.5 + 60.0 * np.stack(channels, axis=-1)).astype(np.float32)


def flow_shape(patches) -> tuple[int, int, int, int]:
    """`(B, h, w, 2)` for patches `(B, 2, h, w, 27)`."""
    return (patches.shape[0], *patches.shape[2:4], 2)


# --- Patch extraction.


def test_extract_patches_matches_torch_unfold_in_hf_layout():
    pairs = np.random.default_rng(0).standard_normal((3, 2, 7, 9, 3)).astype(np.float32)
    ours = np.asarray(extract_patches(pairs))
    assert ours.shape == (3, 2, 7, 9, 27) and ours.dtype == np.float32
    reference = hf_unfold_patches(pairs)
    np.testing.assert_array_equal(ours.transpose(0, 1, 4, 2, 3), reference)
    np.testing.assert_array_equal(np.asarray(extract_patches(pairs[1])), ours[1])  # unbatched pair
    # HF's preprocessor reads the two frames' 27 channels as 54 per pixel: frame 1 first.
    hf_features = space_to_depth(torch.from_numpy(reference), temporal_block_size=2, spatial_block_size=1)
    np.testing.assert_array_equal(hf_features[:, 0].numpy(), np.concatenate([ours[:, 0], ours[:, 1]], -1))
    # The convention spelled out: channel (dy * 3 + dx) * 3 + c is pixel (y + dy - 1, x + dx - 1),
    # zeros outside.
    np.testing.assert_array_equal(ours[0, 1, 3, 4, 12:15], pairs[0, 1, 3, 4])
    np.testing.assert_array_equal(ours[0, 0, 3, 4, 0:3], pairs[0, 0, 2, 3])
    np.testing.assert_array_equal(ours[0, 0, 3, 4, 24:27], pairs[0, 0, 4, 5])
    np.testing.assert_array_equal(ours[0, 0, 0, 0, :12], 0.0)


def test_extract_patches_uint8_and_jit():
    frames = np.random.default_rng(1).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    ours = np.asarray(jax.jit(extract_patches)(frames))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(
        ours.transpose(0, 3, 1, 2), hf_unfold_patches(frames[None].astype(np.float32))[0]
    )


def test_normalize_frames_maps_to_minus_one_one():
    frames = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3)
    np.testing.assert_allclose(normalize_frames(np.broadcast_to(frames, (3, 3, 3)))[0, 0], [-1.0, -0.6, 1.0])


# --- Tiling and blending.


@pytest.mark.parametrize("train_size, min_overlap", [(TRAIN, OVERLAP), ((368, 496), 20), ((5, 7), 0)])
def test_tile_origins_cover_every_pixel_inside_the_image(train_size, min_overlap):
    th, tw = train_size
    for height, width in itertools.product(range(th, 4 * th + 7, max(th // 5, 1)), (tw, tw + 1, 3 * tw - 2)):
        origins = tile_origins((height, width), train_size, min_overlap)
        covered = np.zeros((height, width), int)
        for y, x in origins:
            assert 0 <= y <= height - th and 0 <= x <= width - tw
            covered[y : y + th, x : x + tw] += 1
        assert covered.min() >= 1
        ys, xs = sorted({y for y, _ in origins}), sorted({x for _, x in origins})
        assert ys[0] == 0 and ys[-1] == height - th and xs[0] == 0 and xs[-1] == width - tw
        assert all(b - a <= th - min_overlap for a, b in zip(ys, ys[1:]))
        assert all(b - a <= tw - min_overlap for a, b in zip(xs, xs[1:]))
        assert len(origins) == len(ys) * len(xs)


def test_tile_origins_agree_with_the_colab_where_its_windows_fit():
    def colab(image_shape, patch_size, min_overlap):  # DeepMind's compute_grid_indices
        ys = list(range(0, image_shape[0], patch_size[0] - min_overlap))
        xs = list(range(0, image_shape[1], patch_size[1] - min_overlap))
        ys[-1] = image_shape[0] - patch_size[0]
        xs[-1] = image_shape[1] - patch_size[1]
        return set(itertools.product(ys, xs))

    assert tile_origins((368, 496)) == [(0, 0)]
    assert tile_origins((436, 1024)) == [(0, 0), (0, 476), (0, 528), (68, 0), (68, 476), (68, 528)]
    assert set(tile_origins((436, 1024))) == colab((436, 1024), (368, 496), 20)
    assert tile_origins((61, 83), TRAIN, OVERLAP) == list(itertools.product([0, 18, 36, 37], [0, 26, 51]))
    # Height 700: the colab keeps a window at y=348 that runs past the border (348 + 368 > 700).
    assert max(y for y, _ in colab((700, 496), (368, 496), 20)) + 368 > 700
    assert tile_origins((700, 496)) == [(0, 0), (332, 0)]


@pytest.mark.parametrize("size", SIZES)
def test_constant_flow_is_returned_everywhere(size):
    calls = []

    def flow_fn(patches):
        calls.append(patches.shape)
        return np.broadcast_to(np.float32([1.5, -2.25]), flow_shape(patches))

    frames = texture(*size)
    flow = compute_optical_flow(flow_fn, frames, frames, TRAIN, OVERLAP, batch_size=4)
    assert flow.shape == (*size, 2) and flow.dtype == np.float32
    np.testing.assert_array_equal(flow, np.broadcast_to(np.float32([1.5, -2.25]), flow.shape))
    assert len(set(calls)) == 1 and calls[0][1:] == (2, *TRAIN, 27)  # fixed batch shape: one compile


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_function_of_global_coordinates_is_reconstructed_exactly(size, batch_size):
    def flow_fn(patches):  # frame 1's y (centre pixel), frame 2's x + 1000
        patches = np.asarray(patches)
        return np.stack([patches[:, 0, :, :, 12], patches[:, 1, :, :, 13]], axis=-1)

    frame1, frame2 = coordinate_frames(*size)
    flow = compute_optical_flow(flow_fn, frame1, frame2, TRAIN, OVERLAP, batch_size, normalize=False)
    np.testing.assert_array_equal(flow[..., 0], frame1[..., 0])
    np.testing.assert_array_equal(flow[..., 1], frame1[..., 1] + 1000)


def test_blending_weights_match_the_colab():
    """Each window returns its own origin; the blend must equal the colab's weighted average."""

    def flow_fn(patches):  # the (y, x) of the window's top-left pixel, constant over the window
        origin = np.asarray(patches)[:, 0, 0, 0, 12:14]
        return np.broadcast_to(origin[:, None, None, :], flow_shape(patches))

    height, width = 61, 83
    frame1, frame2 = coordinate_frames(height, width)
    flow = compute_optical_flow(flow_fn, frame1, frame2, TRAIN, OVERLAP, batch_size=5, normalize=False)

    th, tw = TRAIN
    weights_x, weights_y = np.meshgrid(np.arange(tw), np.arange(th))
    weights = np.minimum(np.minimum(weights_x + 1, tw - weights_x), np.minimum(weights_y + 1, th - weights_y))
    np.testing.assert_array_equal(blend_weights(TRAIN), weights)
    flows, counts = 0.0, 0.0
    for y, x in itertools.product([0, 18, 36, 37], [0, 26, 51]):
        padding = [(y, height - y - th), (x, width - x - tw)]
        flows += np.pad(weights[..., None] * np.float64([y, x]), padding + [(0, 0)])
        counts += np.pad(weights, padding)[..., None]
    np.testing.assert_allclose(flow, flows / counts, rtol=1e-6)
    assert len(np.unique(flow[..., 0])) > 10  # windows do disagree: the weights matter


@pytest.mark.parametrize("size, shift", [((53, 75), (2, -3)), ((20, 45), (-1, 4))])
def test_translation_is_recovered_with_a_block_matching_stub(size, shift):
    """A stub network finds each window's integer shift by exhaustive matching of the patch centres."""
    margin = 4

    def flow_fn(patches):
        patches = np.asarray(patches)
        first, second = patches[:, 0, ..., 12:15], patches[:, 1, ..., 12:15]
        h, w = first.shape[1:3]
        inner = first[:, margin : h - margin, margin : w - margin]
        best = []
        for b in range(len(patches)):
            errors = {
                (u, v): np.sum(
                    (second[b, margin + v : h - margin + v, margin + u : w - margin + u] - inner[b]) ** 2
                )
                for u in range(-margin, margin + 1)
                for v in range(-margin, margin + 1)
            }
            best.append(min(errors, key=errors.get))
        return np.broadcast_to(np.float32(best)[:, None, None, :], flow_shape(patches))

    dy, dx = shift
    frame1, frame2 = texture(*size), texture(*size, dy=dy, dx=dx)
    flow = compute_optical_flow(flow_fn, frame1, frame2, TRAIN, OVERLAP, batch_size=2)
    np.testing.assert_array_equal(flow, np.broadcast_to(np.float32([dx, dy]), flow.shape))


# --- With the optical-flow head.


def test_predict_flow_with_the_head_matches_hf_through_the_colab_pipeline(tmp_path):
    """Ours end to end (frames of another size than train_size) against HF's torch model run through the
    colab's loop: per-window unfold patches, logits * 20, weighted blend."""
    hf_config = transformers.PerceiverConfig(
        **tiny_dims(num_latents=8, num_self_attends_per_block=1, d_model=322, train_size=[16, 24])
    )
    hf = transformers.PerceiverForOpticalFlow(hf_config).eval()
    redraw_(hf, seed=0)
    hf.save_pretrained(tmp_path)
    model, variables = from_pretrained(str(tmp_path))
    assert isinstance(model, PerceiverForOpticalFlow)

    height, width = 37, 29
    frame1 = np.clip(texture(height, width), 0, 255).astype(np.uint8)
    frame2 = np.clip(texture(height, width, dy=1, dx=2), 0, 255).astype(np.uint8)
    flow = predict_flow(model, variables, frame1, frame2, min_overlap=4, batch_size=2)
    assert flow.shape == (height, width, 2) and flow.dtype == np.float32 and np.all(np.isfinite(flow))

    frames = np.stack([frame1, frame2]).astype(np.float32) / 255.0 * 2 - 1  # the colab's normalize
    th, tw = 16, 24
    weights_x, weights_y = np.meshgrid(np.arange(tw), np.arange(th))
    weights = np.minimum(np.minimum(weights_x + 1, tw - weights_x), np.minimum(weights_y + 1, th - weights_y))
    flows, counts = 0.0, 0.0
    for y, x in itertools.product([0, 12, 21], [0, 5]):
        patches = hf_unfold_patches(frames[None, :, y : y + th, x : x + tw])
        with torch.no_grad():
            piece = hf(inputs=torch.from_numpy(patches)).logits[0].numpy() * 20.0
        padding = [(y, height - y - th), (x, width - x - tw)]
        flows += np.pad(weights[..., None] * piece, padding + [(0, 0)])
        counts += np.pad(weights, padding)[..., None]
    expected = flows / counts
    assert np.all(np.std(expected, axis=(0, 1)) > 0.05 * np.abs(expected).max())  # varies per pixel
    assert np.abs(flow - expected).max() <= 1e-5 * np.abs(expected).max()


# --- Colours.


def test_flow_to_color_known_colours_of_the_middlebury_wheel():
    directions = np.float32([[0, 0], [3, 0], [0, 3], [-3, 0], [0, -3], [1.5, 0]]).reshape(1, 6, 2)
    colors = flow_to_color(directions)
    assert colors.shape == (1, 6, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[0, 0], [255, 255, 255])  # no motion: white
    np.testing.assert_array_equal(colors[0, 1], [255, 0, 0])  # right: wheel index 0, red
    # Down: a = -1/2, wheel position 13.5 in red->yellow (G = floor(255*13/15), floor(255*14/15) = 221, 238).
    np.testing.assert_array_equal(colors[0, 2], [255, 229, 0])
    # Left: position 27 = cyan->blue hue 2 of 11 (G = 255 - floor(255*2/11) = 209).
    np.testing.assert_array_equal(colors[0, 3], [0, 209, 255])
    # Up: position 40.5 = blue->magenta hues 4, 5 of 13 (R = floor(255*4/13), floor(255*5/13) = 78, 98).
    np.testing.assert_array_equal(colors[0, 4], [88, 0, 255])
    np.testing.assert_array_equal(colors[0, 5], [255, 127, 127])  # half the largest magnitude: half saturated
    np.testing.assert_array_equal(flow_to_color(directions * 7.0), colors)  # normalised by the max magnitude
    fixed = flow_to_color(directions, max_magnitude=1.5)  # beyond max_magnitude: darkened to 75%
    np.testing.assert_array_equal(fixed[0, 1], [191, 0, 0])
    np.testing.assert_array_equal(fixed[0, 5], [255, 0, 0])
    np.testing.assert_array_equal(flow_to_color(np.zeros((2, 3, 2))), np.full((2, 3, 3), 255))


def test_save_flow_png_round_trips(tmp_path):
    flow = np.random.default_rng(2).standard_normal((13, 21, 2)).astype(np.float32)
    path = tmp_path / "flow.png"
    save_flow_png(flow, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (21, 13)
        np.testing.assert_array_equal(np.asarray(image), flow_to_color(flow))


# --- Bad inputs.


def test_bad_inputs_raise_clear_errors():
    rgb = np.zeros((8, 9, 3), np.float32)
    flow_fn = lambda p: np.zeros(flow_shape(p), np.float32)  # noqa: E731
    cases = [
        (lambda: extract_patches(rgb), "pair"),
        (lambda: extract_patches(np.zeros((3, 8, 9, 3))), "pair"),
        (lambda: extract_patches(np.zeros((2, 8, 9, 4))), "RGB"),
        (lambda: extract_patches(np.zeros((2, 2, 9, 3))), "at least 3x3"),
        (lambda: compute_optical_flow(flow_fn, rgb, rgb[:, :8], TRAIN), "same shape"),
        (lambda: compute_optical_flow(flow_fn, rgb[None], rgb[None], TRAIN), r"\(height, width, 3\)"),
        (lambda: compute_optical_flow(flow_fn, rgb[..., 0], rgb[..., 0], TRAIN), r"\(height, width, 3\)"),
        (lambda: compute_optical_flow(flow_fn, rgb[..., :1], rgb[..., :1], TRAIN), "RGB"),
        (lambda: compute_optical_flow(flow_fn, rgb[:2], rgb[:2], TRAIN), "at least 3x3"),
        (lambda: compute_optical_flow(flow_fn, rgb, rgb, TRAIN, batch_size=0), "batch_size"),
        (lambda: compute_optical_flow(flow_fn, rgb, rgb, TRAIN, min_overlap=24), "min_overlap"),
        (lambda: compute_optical_flow(flow_fn, rgb, rgb, (24,)), "train_size"),
        (lambda: compute_optical_flow(lambda p: np.zeros((1, 2)), rgb, rgb, TRAIN), "flow_fn returned shape"),
        (lambda: tile_origins((20, 40), TRAIN), "at least train_size"),
        (lambda: flow_to_color(np.zeros((4, 4, 3))), r"\(height, width, 2\)"),
        (lambda: flow_to_color(np.full((4, 4, 2), np.nan)), "NaN"),
        (lambda: flow_to_color(np.ones((4, 4, 2)), max_magnitude=0.0), "max_magnitude"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="callable"):
        compute_optical_flow("model", rgb, rgb, TRAIN)
    with pytest.raises(TypeError, match="dtype"):
        compute_optical_flow(flow_fn, rgb.astype(bool), rgb.astype(bool), TRAIN)
