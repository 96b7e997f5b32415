"""Parity tests for `perceiver_jax.image_processing` against torch and Hugging Face transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers.models.perceiver.modeling_perceiver import PerceiverTrainablePositionEncoding

from perceiver_jax.image_processing import (
    ImageProcessor,
    bicubic_resize,
    interpolate_position_table,
    preprocess_images,
)

TOL = 1e-5

RESIZE_CASES = [  # (in_hw, out_hw, channels)
    ((7, 9), (20, 15), 1),  # upsample, non-square
    ((7, 9), (20, 15), 17),
    ((32, 32), (8, 5), 3),  # downsample
    ((10, 3), (4, 13), 3),  # down in H, up in W
    ((1, 5), (3, 3), 2),  # degenerate axis: every tap clamps
    ((50, 50), (64, 48), 8),  # position-table sized
    ((224, 224), (384, 160), 2),  # large: float32 source-index rounding matters
]


def torch_bicubic(x: np.ndarray, size) -> np.ndarray:
    """Reference: (B, H, W, C) numpy -> torch NCHW bicubic -> (B, h, w, C)."""
    y = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bicubic", align_corners=False)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("in_hw, out_hw, channels", RESIZE_CASES)
def test_bicubic_resize_matches_torch(in_hw, out_hw, channels):
    x = np.random.default_rng(0).standard_normal((2, *in_hw, channels)).astype(np.float32)
    ours = np.asarray(bicubic_resize(x, out_hw))
    assert ours.shape == (2, *out_hw, channels) and ours.dtype == np.float32
    assert np.abs(ours - torch_bicubic(x, out_hw)).max() <= TOL


@pytest.mark.parametrize("in_hw, out_hw, channels", RESIZE_CASES)
def test_jax_image_resize_is_not_torch_bicubic(in_hw, out_hw, channels):
    """`jax.image.resize` (Keys A=-0.5, antialiased) misses torch's bicubic by far more than TOL."""
    x = np.random.default_rng(0).standard_normal((2, *in_hw, channels)).astype(np.float32)
    theirs = np.asarray(jax.image.resize(x, (2, *out_hw, channels), method="bicubic"))
    assert np.abs(theirs - torch_bicubic(x, out_hw)).max() > 100 * TOL


def test_bicubic_resize_identity_leading_dims_and_jit():
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(bicubic_resize(x, (6, 5))), x)
    resize = jax.jit(bicubic_resize, static_argnums=1)
    ours = np.asarray(resize(x, (11, 4)))
    ref = torch_bicubic(x.reshape(6, 6, 5, 4), (11, 4)).reshape(2, 3, 11, 4, 4)
    assert np.abs(ours - ref).max() <= TOL


def test_bicubic_resize_errors():
    with pytest.raises(ValueError, match="H, W, C"):
        bicubic_resize(jnp.zeros((4, 4)), (8, 8))
    with pytest.raises(TypeError, match="floating"):
        bicubic_resize(jnp.zeros((4, 4, 1), jnp.int32), (8, 8))


@pytest.mark.parametrize("side, new_hw", [(8, (12, 12)), (8, (5, 7)), (28, (40, 36)), (7, (7, 7))])
def test_interpolate_position_table_matches_hf(side, new_hw):
    torch.manual_seed(0)
    encoding = PerceiverTrainablePositionEncoding(index_dims=(side, side), num_channels=16)
    with torch.no_grad():
        ref = encoding.interpolate_pos_encoding(encoding.position_embeddings, *new_hw).numpy()
    ours = np.asarray(
        interpolate_position_table(jnp.asarray(encoding.position_embeddings.detach().numpy()), new_hw)
    )
    assert ours.shape == ref.shape == (new_hw[0] * new_hw[1], 16)
    assert np.abs(ours - ref).max() <= TOL


def test_interpolate_position_table_errors():
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_position_table(jnp.zeros((10, 4)), (4, 4))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        interpolate_position_table(jnp.zeros((4, 4, 4)), (4, 4))


# --- PerceiverImageProcessor parity -----------------------------------------------------------


@pytest.fixture(scope="module")
def hf_processor():
    # Without torchvision this resolves to `PerceiverImageProcessorPil` (Pillow bicubic on uint8).
    return transformers.PerceiverImageProcessor()


def hf_preprocess(processor, images) -> np.ndarray:
    """HF output (B, 3, H, W) transposed to our channels-last (B, H, W, 3)."""
    return processor(images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)


def noise_image(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_image(h, w) -> np.ndarray:
    """Photo-like content: gradients and sinusoids, uint8 (h, w, 3)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [
        0.5 + 0.5 * np.sin(2 * np.pi * (3 * x + y)),
        0.2 + 0.6 * x * y + 0.2 * np.cos(5 * np.pi * y) ** 2,
        np.clip(1 - x + 0.1 * np.sin(17 * np.pi * x * y), 0, 1),
    ]
    return np.round(255 * np.stack(channels, axis=-1)).astype(np.uint8)


SHAPES = [(300, 400), (400, 300), (256, 256), (224, 224), (97, 513), (50, 60), (641, 479)]


@pytest.mark.parametrize("make", [noise_image, smooth_image])
@pytest.mark.parametrize("hw", SHAPES)
def test_preprocess_matches_hf(hf_processor, make, hw):
    image = make(*hw)
    ours = preprocess_images(image)
    assert ours.shape == (1, 224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, hf_preprocess(hf_processor, image))


def test_preprocess_photograph_batch_and_pil_inputs(hf_processor):
    matplotlib_cbook = pytest.importorskip("matplotlib.cbook")
    with Image.open(matplotlib_cbook.get_sample_data("grace_hopper.jpg")) as photo:
        photo = photo.convert("RGB")
    images = [np.asarray(photo), smooth_image(333, 222), noise_image(120, 90)]
    ref = hf_preprocess(hf_processor, images)
    np.testing.assert_array_equal(preprocess_images(images), ref)
    np.testing.assert_array_equal(preprocess_images([Image.fromarray(im) for im in images]), ref)
    np.testing.assert_array_equal(ImageProcessor()(images), ref)
    batch = np.stack([noise_image(64, 80, seed) for seed in range(3)])
    np.testing.assert_array_equal(preprocess_images(batch), hf_preprocess(hf_processor, list(batch)))


def test_image_processor_defaults_match_hf(hf_processor):
    ours = ImageProcessor()
    assert (ours.size, ours.size) == (hf_processor.size["height"], hf_processor.size["width"])
    assert (ours.crop_size, ours.crop_size) == (
        hf_processor.crop_size["height"],
        hf_processor.crop_size["width"],
    )
    assert ours.rescale_factor == hf_processor.rescale_factor
    np.testing.assert_array_equal(ours.image_mean, hf_processor.image_mean)
    np.testing.assert_array_equal(ours.image_std, hf_processor.image_std)


def test_preprocess_errors():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(np.zeros((64, 64), np.uint8))
