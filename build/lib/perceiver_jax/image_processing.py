"""Image resizing and preprocessing matching Hugging Face's Perceiver.

* `bicubic_resize` reproduces `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
  (cubic coefficient A=-0.75, no antialiasing, clamped borders) for channels-last JAX arrays.
  `jax.image.resize(method="bicubic")` is a different function (Keys A=-0.5, antialiased when
  downsampling) and does not match it.
* `interpolate_position_table` is HF's `PerceiverTrainablePositionEncoding.interpolate_pos_encoding`.
* `preprocess_images` / `ImageProcessor` reproduce `transformers.PerceiverImageProcessor` as it
  resolves without torchvision (`PerceiverImageProcessorPil`): center crop to
  `int(size / crop_size * min(H, W))`, Pillow bicubic resize on uint8, rescale by 1/255, ImageNet
  normalisation. Pillow is imported only when images are preprocessed.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CUBIC_A = -0.75  # torch's (and OpenCV's) bicubic coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Torch's four cubic-convolution weights for fractional offsets `t` of shape (n,) -> (n, 4)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=None)
def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix M such that `M @ signal` is torch's 1-D bicubic resize."""
    # Torch works in float32: scale = float(in) / out, then the source index
    # `(dst + 0.5) * scale - 0.5` rounded once (a fused multiply-add). Reproducing that rounding
    # matters: for inputs of a few hundred pixels it moves the weights by ~1e-5.
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
    base = np.floor(src)
    weights = _cubic_weights((src - base).astype(np.float64))
    taps = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.arange(out_size)[:, None], taps), weights)
    return matrix.astype(np.float32)


def bicubic_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Torch's `F.interpolate(..., mode="bicubic", align_corners=False)`, to float32 rounding.

    Args:
      x: floating array of shape (..., H, W, C) (channels-last; any leading batch dims).
      size: static output size (new_H, new_W).

    Returns:
      Array of shape (..., new_H, new_W, C) with the dtype of `x`.
    """
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"bicubic_resize expects shape (..., H, W, C), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"bicubic_resize expects a floating array, got {x.dtype}")
    new_h, new_w = (int(s) for s in size)
    compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
    rows = jnp.asarray(_bicubic_matrix(x.shape[-3], new_h), compute_dtype)
    cols = jnp.asarray(_bicubic_matrix(x.shape[-2], new_w), compute_dtype)
    highest = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPU/TPU
    y = jnp.einsum("oh,...hwc->...owc", rows, x.astype(compute_dtype), precision=highest)
    y = jnp.einsum("pw,...owc->...opc", cols, y, precision=highest)
    return y.astype(x.dtype)


def interpolate_position_table(table: jax.Array, new_hw: tuple[int, int]) -> jax.Array:
    """Resize a learned square position table, as HF's `interpolate_pos_encoding`.

    Args:
      table: (N, C) table of a sqrt(N) x sqrt(N) grid stored row-major.
      new_hw: (new_H, new_W) target grid.

    Returns:
      (new_H * new_W, C) table, row-major; `table` itself when the grid size is unchanged.
    """
    if table.ndim != 2:
        raise ValueError(f"Position table must have shape (N, C), got {table.shape}")
    num_positions, channels = table.shape
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise ValueError(f"Position table has {num_positions} rows, which is not a square grid")
    new_h, new_w = new_hw
    if (new_h, new_w) == (side, side):
        return table
    grid = bicubic_resize(table.reshape(side, side, channels), (new_h, new_w))
    return grid.reshape(new_h * new_w, channels)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _as_uint8_rgb(image) -> np.ndarray:
    """PIL image or uint8 (H, W, 3) array -> uint8 (H, W, 3) array."""
    if not isinstance(image, np.ndarray):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image


def preprocess_images(
    images,
    size: int | tuple[int, int] = 224,
    crop_size: int | tuple[int, int] = 256,
    rescale_factor: float = 1 / 255,
    image_mean: tuple[float, ...] = IMAGENET_MEAN,
    image_std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """Preprocess RGB pictures exactly like `transformers.PerceiverImageProcessor()`.

    Each image is center-cropped to `int(size / crop_size * min(H, W))` per axis, resized to `size`
    with Pillow's bicubic filter (on uint8, as HF does), multiplied by `rescale_factor` and
    normalised with `image_mean` / `image_std`.

    Args:
      images: a uint8 (H, W, 3) array, a uint8 (B, H, W, 3) batch, a PIL image, or a list of
        these (images may differ in size).
      size: output (height, width), or one int for both.
      crop_size: reference size; the crop keeps `size / crop_size` of the shorter side.
      rescale_factor: scale applied to the uint8 pixel values.
      image_mean, image_std: per-channel normalisation, length 3.

    Returns:
      float32 array of shape (B, size_h, size_w, 3), channels-last (HF returns (B, 3, H, W)).
    """
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    size_h, size_w = _pair(size)
    crop_h, crop_w = _pair(crop_size)
    mean = np.asarray(image_mean, np.float32)
    std = np.asarray(image_std, np.float32)

    processed = []
    for image in images:
        image = _as_uint8_rgb(image)
        height, width = image.shape[:2]
        min_dim = min(height, width)
        new_h, new_w = int(size_h / crop_h * min_dim), int(size_w / crop_w * min_dim)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        crop = image[top : top + new_h, left : left + new_w]
        resized = np.asarray(Image.fromarray(crop).resize((size_w, size_h), Image.Resampling.BICUBIC))
        rescaled = (resized.astype(np.float64) * rescale_factor).astype(np.float32)
        processed.append((rescaled - mean) / std)
    return np.stack(processed)


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """Callable holder of `preprocess_images` settings; defaults are HF's `PerceiverImageProcessor()`.

    `ImageProcessor()(images)` maps images (see `preprocess_images`) to a float32
    (B, size, size, 3) array.
    """

    size: int | tuple[int, int] = 224
    crop_size: int | tuple[int, int] = 256
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, images) -> np.ndarray:
        """Preprocess `images` (see `preprocess_images`) -> float32 (B, size_h, size_w, 3)."""
        return preprocess_images(images, **dataclasses.asdict(self))
