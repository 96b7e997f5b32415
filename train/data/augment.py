"""Image augmentation of DeepMind's Perceiver IO ImageNet recipe.

Host side (numpy / Pillow, run in input worker processes): uint8 (H, W, 3) RGB images in, every random
draw from a `np.random.Generator`. Device side (jax.numpy, jit-able, on the global batch inside the train
step): MixUp / CutMix and top-k accuracy.

What DeepMind does (deepmind-research `perceiver/train/`, files `dataset.py`, `autoaugment.py`,
`experiment.py`, `utils.py`) and how this module follows it:

* Train crop (`dataset._decode_and_random_crop`): `tf.image.sample_distorted_bounding_box` over the whole
  image with area_range (0.08, 1), aspect_ratio_range (3/4, 4/3), min_object_covered 0.1 (so crops keep at
  least 10% of the image) and 10 attempts. TF draws the aspect ratio (width / height) uniformly, then the
  crop *height* uniformly between the heights of the smallest and largest allowed area (not the area
  uniformly, as torchvision does), width = round(height * aspect). When every attempt fails, or the crop
  is the whole image, DeepMind falls back to the evaluation centre crop (224/256 of the shorter side).
  `crop_box` / `random_resized_crop` reproduce this (positions are drawn over every offset that fits;
  TF's `Uniform(H - h)` never picks the last one).
* `tf.image.random_flip_left_right`: mirror with probability 1/2 (`random_flip`).
* RandAugment(num_layers=4, magnitude=5) (`autoaugment.distort_image_with_randaugment`, the TPU
  EfficientNet code): each layer picks one of 16 ops uniformly and always applies it (the sampled `prob`
  is unused). Magnitude M (0..10) maps to: Rotate M/10*30 degrees, ShearX/Y M/10*0.3, TranslateX/Y
  M/10*100 pixels (each with a random sign), Posterize int(M/10*4) bits kept, Solarize threshold
  int(M/10*256), SolarizeAdd +int(M/10*110) below 128, Color / Contrast / Brightness / Sharpness factor
  M/10*1.8 + 0.1, Cutout a square of half-side int(M/10*40) pixels; AutoContrast, Equalize and Invert take
  no magnitude. Geometric ops use nearest-neighbour sampling and fill with grey 128, as does Cutout.
  At M=5 the four enhance ops have factor 1.0, i.e. they leave the image unchanged.
* Order and resize: DeepMind crops, flips, applies RandAugment to the crop at its original resolution,
  then resizes (TF bicubic on float, no clamping) and normalises with the ImageNet mean/std. Here the crop
  is resized first (Pillow bicubic on uint8, as the evaluation preprocessing does) so RandAugment runs at
  the training resolution. Its two pixel constants (translate 100, cutout 40) are therefore read as pixels
  of a 224-pixel side and scaled to the image side: at 224 they are DeepMind's numbers, and tiny images
  (8x8 digits) are shifted by the same fraction instead of being shifted out of the frame.
  Contrast uses Pillow's mean grey level (TF's port uses pixel count / 256, a known slip; it does not
  matter at M=5, where the factor is 1).
* MixUp / CutMix (`dataset.my_mixup_cutmix`): with both on, half of every mixed batch is MixUp with
  lambda ~ Beta(0.2, 0.2) per example and the other half CutMix with a per-example box of area fraction
  ~ U(0, 1) = Beta(1, 1), centre uniform, clipped to the image; the mixed label weight is the box area
  actually pasted. DeepMind draws the partners from a second batch (2x the data); `mix_batch` pairs each
  example with its neighbour in the same (shuffled) batch.
* Loss (`experiment._loss_fn`): labels mixed first, then label smoothing 0.1 as
  `(1 - 0.1) * labels + 0.1 / K` (that is `optax.smooth_labels`). Training top-1/top-5 count the first
  (unmixed) label of each example (`utils.topk_correct`); `topk_correct` here is that metric.
* Evaluation (`dataset._decode_and_center_crop`): centre crop of 224/256 of the shorter side, resize to
  224, normalise. `center_crop` is Hugging Face's `PerceiverImageProcessor` instead (same crop fraction,
  Pillow bicubic on uint8), i.e. `perceiver_jax.image_processing.preprocess_images`, so evaluation matches
  the released checkpoints' preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from perceiver_jax.image_processing import IMAGENET_MEAN, IMAGENET_STD, preprocess_images

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_MAX_ATTEMPTS = 10
MIN_CROP_COVERED = 0.1  # DeepMind's min_object_covered over the whole-image box
CENTER_CROP_FRACTION = 224 / 256

MAX_MAGNITUDE = 10  # RandAugment levels run 0..10
FILL = (128, 128, 128)  # grey left behind by geometric ops and Cutout
REFERENCE_SIDE = 224  # the side RandAugment's pixel constants were set for


# ---------------------------------------------------------------------------------------------------------
# Host side: crops, flip, normalisation.


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"Expected a uint8 RGB image of shape (H, W, 3), got {desc}.")


def _sample_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    area_range: tuple[float, float],
    aspect_ratio_range: tuple[float, float],
) -> tuple[int, int, int, int] | None:
    """One attempt of TF's `sample_distorted_bounding_box`: (top, left, h, w), or None if it fails."""
    aspect = rng.uniform(*aspect_ratio_range)  # width / height
    min_area, max_area = area_range[0] * height * width, area_range[1] * height * width
    crop_h = round(math.sqrt(min_area / aspect))
    max_h = round(math.sqrt(max_area / aspect))
    if round(max_h * aspect) > width:  # the tallest crop must still fit in width
        max_h = int((width + 0.5 - 1e-7) / aspect)
        if round(max_h * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    crop_h = min(crop_h, max_h)
    crop_h += int(rng.integers(max_h - crop_h + 1))
    crop_w = round(crop_h * aspect)
    if crop_w * crop_h < min_area:  # absorb rounding: one row taller, then one shorter
        crop_h += 1
        crop_w = round(crop_h * aspect)
    if crop_w * crop_h > max_area:
        crop_h -= 1
        crop_w = round(crop_h * aspect)
    area = crop_w * crop_h
    if not (min_area <= area <= max_area and 0 < crop_h <= height and 0 < crop_w <= width):
        return None
    if area < MIN_CROP_COVERED * height * width:
        return None
    top = int(rng.integers(height - crop_h + 1))
    left = int(rng.integers(width - crop_w + 1))
    return top, left, crop_h, crop_w


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """DeepMind's centre square, (top, left, side, side), side = 224/256 of the shorter side (>= 1)."""
    side = max(1, int(CENTER_CROP_FRACTION * min(height, width)))
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = CROP_ASPECT_RATIO_RANGE,
    max_attempts: int = CROP_MAX_ATTEMPTS,
) -> tuple[int, int, int, int]:
    """Inception-style random crop box (top, left, crop_h, crop_w) of a `height` x `width` image.

    Up to `max_attempts` draws of an aspect ratio (width / height) in `aspect_ratio_range` and an area
    fraction in `area_range` (crops under 10% of the image are rejected); `center_crop_box` when all fail
    or the crop is the whole image.
    """
    if not 0 < area_range[0] <= area_range[1] <= 1:
        raise ValueError(f"Crop area_range must satisfy 0 < low <= high <= 1, got {area_range}.")
    if not 0 < aspect_ratio_range[0] <= aspect_ratio_range[1]:
        raise ValueError(f"Crop aspect_ratio_range must satisfy 0 < low <= high, got {aspect_ratio_range}.")
    for _ in range(max_attempts):
        box = _sample_crop(height, width, rng, area_range, aspect_ratio_range)
        if box is not None:
            return box if box[2:] != (height, width) else center_crop_box(height, width)
    return center_crop_box(height, width)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (size, size, 3), Pillow bicubic (as the evaluation preprocessing)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = CROP_ASPECT_RATIO_RANGE,
) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3): a `crop_box` crop, resized with Pillow bicubic.

    Works for any input size, including upsampling tiny images (8x8 -> 32x32).
    """
    _check_image(image)
    top, left, crop_h, crop_w = crop_box(*image.shape[:2], rng, area_range, aspect_ratio_range)
    return _resize(image[top : top + crop_h, left : left + crop_w], size)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-right mirror of a (H, W, C) image with probability 1/2 (the image itself otherwise)."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (H, W, 3): x / 255, then ImageNet mean / std, with the arithmetic of
    `perceiver_jax.image_processing.preprocess_images` (so equal to it bit for bit)."""
    _check_image(image)
    rescaled = (image.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (rescaled - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def default_crop_size(size: int) -> int:
    """Hugging Face's reference `crop_size` for an output `size`: round(size * 256 / 224), 256 at 224,
    so the centre crop keeps ~224/256 of the shorter side at any resolution."""
    return round(size * 256 / 224)


def center_crop(image: np.ndarray, size: int, crop_size: int | None = None) -> np.ndarray:
    """Evaluation preprocessing, exactly `preprocess_images(image, size, crop_size)`: centre crop of
    `int(size / crop_size * min(H, W))` pixels, Pillow bicubic resize to (size, size), rescale, normalise.

    Args:
      image: uint8 (H, W, 3).
      size: output side.
      crop_size: Hugging Face's reference size; default `default_crop_size(size)` (256 for 224).

    Returns:
      float32 (size, size, 3).
    """
    _check_image(image)
    crop_size = default_crop_size(size) if crop_size is None else crop_size
    return preprocess_images(image, size=size, crop_size=crop_size)[0]


# ---------------------------------------------------------------------------------------------------------
# Host side: RandAugment. Every op maps (uint8 (H, W, 3), magnitude, rng) -> uint8 (H, W, 3).


def _fraction(magnitude: float) -> float:
    return magnitude / MAX_MAGNITUDE


def _signed(value: float, rng: np.random.Generator) -> float:
    """`value` with a random sign (DeepMind's `_randomly_negate_tensor`)."""
    return -value if rng.random() < 0.5 else value


def _affine(image: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """Pillow affine warp (output pixel (x, y) samples input (a x + b y + c, d x + e y + f)), nearest
    neighbour, grey outside the image."""
    warped = Image.fromarray(image).transform(
        (image.shape[1], image.shape[0]),
        Image.Transform.AFFINE,
        coefficients,
        resample=Image.Resampling.NEAREST,
        fillcolor=FILL,
    )
    return np.asarray(warped)


def _enhance(enhancer: type, image: np.ndarray, magnitude: float) -> np.ndarray:
    """Pillow `ImageEnhance` with factor M/10 * 1.8 + 0.1 (1.0, the identity, at M=5)."""
    return np.asarray(enhancer(Image.fromarray(image)).enhance(_fraction(magnitude) * 1.8 + 0.1))


def auto_contrast(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.autocontrast(Image.fromarray(image)))


def equalize(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.equalize(Image.fromarray(image)))


def invert(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return 255 - image


def rotate(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    angle = _signed(_fraction(magnitude) * 30, rng)
    return np.asarray(Image.fromarray(image).rotate(angle, Image.Resampling.NEAREST, fillcolor=FILL))


def posterize(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    bits = int(_fraction(magnitude) * 4)  # 0 bits (black) at M=0, as DeepMind's mapping gives
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    threshold = int(_fraction(magnitude) * 256)  # 0 at M=0 inverts everything; 256 at M=10 is a no-op
    return np.where(image < threshold, image, 255 - image)


def color(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return _enhance(ImageEnhance.Color, image, magnitude)


def contrast(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return _enhance(ImageEnhance.Contrast, image, magnitude)


def brightness(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return _enhance(ImageEnhance.Brightness, image, magnitude)


def sharpness(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return _enhance(ImageEnhance.Sharpness, image, magnitude)


def shear_x(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return _affine(image, (1, _signed(_fraction(magnitude) * 0.3, rng), 0, 0, 1, 0))


def shear_y(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    return _affine(image, (1, 0, 0, _signed(_fraction(magnitude) * 0.3, rng), 1, 0))


def translate_x(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    pixels = _fraction(magnitude) * 100 * image.shape[1] / REFERENCE_SIDE
    return _affine(image, (1, 0, _signed(pixels, rng), 0, 1, 0))


def translate_y(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    pixels = _fraction(magnitude) * 100 * image.shape[0] / REFERENCE_SIDE
    return _affine(image, (1, 0, 0, 0, 1, _signed(pixels, rng)))


def cutout(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """Grey box of half-side int(M/10 * 40) (per 224 pixels of each side) around a uniform centre."""
    height, width = image.shape[:2]
    pad_y = int(_fraction(magnitude) * 40 * height / REFERENCE_SIDE)
    pad_x = int(_fraction(magnitude) * 40 * width / REFERENCE_SIDE)
    center_y, center_x = int(rng.integers(height)), int(rng.integers(width))
    out = image.copy()
    out[max(0, center_y - pad_y) : center_y + pad_y, max(0, center_x - pad_x) : center_x + pad_x] = FILL
    return out


def solarize_add(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    added = np.clip(image.astype(np.int16) + int(_fraction(magnitude) * 110), 0, 255).astype(np.uint8)
    return np.where(image < 128, added, image)


RandAugmentOp = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

# DeepMind's op list, in its order (`available_ops` of `distort_image_with_randaugment`).
RAND_AUGMENT_OPS: dict[str, RandAugmentOp] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}


def rand_augment(
    image: np.ndarray, rng: np.random.Generator, num_layers: int = 4, magnitude: float = 5
) -> np.ndarray:
    """RandAugment: `num_layers` times, apply one op of `RAND_AUGMENT_OPS` drawn uniformly.

    Args:
      image: uint8 (H, W, 3).
      rng: source of the op choices and of each op's own draws (sign, Cutout position).
      num_layers: ops applied in sequence (N in the paper); 0 returns the image.
      magnitude: shared strength M in [0, 10].

    Returns:
      uint8 (H, W, 3).
    """
    _check_image(image)
    if not (isinstance(num_layers, int) and num_layers >= 0):
        raise ValueError(f"RandAugment num_layers must be an int >= 0, got {num_layers!r}.")
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE}], got {magnitude}.")
    ops = list(RAND_AUGMENT_OPS.values())
    for _ in range(num_layers):
        image = ops[int(rng.integers(len(ops)))](image, magnitude, rng)
    return image


# ---------------------------------------------------------------------------------------------------------
# Device side: MixUp, CutMix, top-k accuracy. Partners: example i is mixed with example i - 1 (rolled).


def _check_batch(images: jax.Array, labels: jax.Array) -> None:
    if images.ndim != 4 or labels.ndim != 2 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Expected images (B, H, W, C) and labels (B, K) with the same B, got {images.shape} and "
            f"{labels.shape}; one-hot the integer targets first (jax.nn.one_hot)."
        )


def _check_alpha(name: str, alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"{name} alpha must be > 0, got {alpha}.")


def _mixup_weights(rng: jax.Array, batch: int, alpha: float) -> jax.Array:
    """Per-example weight of the example's own image, lambda ~ Beta(alpha, alpha): float32 (B, 1, 1, 1)."""
    return jax.random.beta(rng, alpha, alpha, (batch, 1, 1, 1))


def _cutmix_weights(rng: jax.Array, batch: int, height: int, width: int, alpha: float) -> jax.Array:
    """Per-pixel weight of the example's own image: 0 inside the pasted box, else 1: float32 (B, H, W, 1).

    The box (DeepMind's `cutmix_padding`) has sides sqrt(1 - lambda) * (H, W) rounded down to even
    numbers, lambda ~ Beta(alpha, alpha), a centre uniform over the pixels, and is clipped to the image.
    """
    rng_lambda, rng_y, rng_x = jax.random.split(rng, 3)
    side = jnp.sqrt(1 - jax.random.beta(rng_lambda, alpha, alpha, (batch,)))
    half_h = (side * height).astype(jnp.int32) // 2
    half_w = (side * width).astype(jnp.int32) // 2
    center_y = jax.random.randint(rng_y, (batch,), 0, height)
    center_x = jax.random.randint(rng_x, (batch,), 0, width)
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= (center_y - half_h)[:, None]) & (rows < (center_y + half_h)[:, None])
    in_cols = (cols >= (center_x - half_w)[:, None]) & (cols < (center_x + half_w)[:, None])
    in_box = in_rows[:, :, None] & in_cols[:, None, :]
    return jnp.where(in_box, 0.0, 1.0)[..., None]


def _blend(
    images: jax.Array, labels: jax.Array, own: jax.Array, own_label: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """own * x + (1 - own) * partner, for images (`own` (B, H|1, W|1, 1)) and labels (`own_label` (B,))."""
    partner_images, partner_labels = jnp.roll(images, 1, axis=0), jnp.roll(labels, 1, axis=0)
    own = own.astype(images.dtype)
    mixed_images = own * images + (1 - own) * partner_images
    own_label = own_label[:, None].astype(labels.dtype)
    return mixed_images, own_label * labels + (1 - own_label) * partner_labels


def mixup(rng: jax.Array, images: jax.Array, labels: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """MixUp: each example blended with its partner by lambda ~ Beta(alpha, alpha), labels likewise.

    Args:
      rng: PRNG key.
      images: (B, H, W, C) float.
      labels: (B, K) float, one-hot or soft.
      alpha: Beta parameter (DeepMind: 0.2).

    Returns:
      (images (B, H, W, C), labels (B, K)), dtypes kept.
    """
    _check_batch(images, labels)
    _check_alpha("MixUp", alpha)
    own = _mixup_weights(rng, images.shape[0], alpha)
    return _blend(images, labels, own, own[:, 0, 0, 0])


def _cutmix_own(rng: jax.Array, images: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """CutMix pixel weights (B, H, W, 1) and the own-label weight (B,) = the fraction of pixels kept."""
    batch, height, width = images.shape[:3]
    own = _cutmix_weights(rng, batch, height, width, alpha)
    return own, jnp.mean(own, axis=(1, 2, 3))


def cutmix(
    rng: jax.Array, images: jax.Array, labels: jax.Array, alpha: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """CutMix: a box of each example's partner pasted into it; labels weighted by the pixels pasted.

    Args and returns as `mixup`; `alpha` is the Beta parameter of the box area (DeepMind: 1, uniform).
    """
    _check_batch(images, labels)
    _check_alpha("CutMix", alpha)
    return _blend(images, labels, *_cutmix_own(rng, images, alpha))


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    mixup_alpha: float | None = 0.2,
    cutmix_alpha: float | None = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """DeepMind's combination: with both on, MixUp on the first B // 2 examples and CutMix on the rest;
    with one on, that one on the whole batch; with neither (both None), the batch unchanged.

    Args:
      rng: PRNG key.
      images: (B, H, W, C) float.
      labels: (B, K) float one-hot (e.g. `jax.nn.one_hot(targets, K)`); smooth them afterwards.
      mixup_alpha: MixUp's Beta parameter, or None for no MixUp.
      cutmix_alpha: CutMix's Beta parameter, or None for no CutMix.

    Returns:
      (images (B, H, W, C), labels (B, K)), dtypes kept.
    """
    _check_batch(images, labels)
    if mixup_alpha is None and cutmix_alpha is None:
        return images, labels
    if cutmix_alpha is None:
        return mixup(rng, images, labels, mixup_alpha)
    if mixup_alpha is None:
        return cutmix(rng, images, labels, cutmix_alpha)
    _check_alpha("MixUp", mixup_alpha)
    _check_alpha("CutMix", cutmix_alpha)
    batch, height, width = images.shape[:3]
    rng_mixup, rng_cutmix = jax.random.split(rng)
    num_mixup = batch // 2
    mixup_own = _mixup_weights(rng_mixup, num_mixup, mixup_alpha)
    cutmix_own, cutmix_label = _cutmix_own(rng_cutmix, images[num_mixup:], cutmix_alpha)
    own = jnp.concatenate([jnp.broadcast_to(mixup_own, (num_mixup, height, width, 1)), cutmix_own])
    return _blend(images, labels, own, jnp.concatenate([mixup_own[:, 0, 0, 0], cutmix_label]))


def topk_correct(logits: jax.Array, targets: jax.Array, k: int) -> jax.Array:
    """Whether each target is among its row's `k` largest logits (ties go to the lower class id, as
    `jax.lax.top_k` orders them, so constant logits do not count as correct everywhere). Computed as the
    target's rank with elementwise ops, which stay local to each example under a batch-sharded mesh
    (`top_k` would gather the batch).

    Args:
      logits: (B, K) float.
      targets: (B,) int class ids.
      k: 1 <= k <= K.

    Returns:
      float32 (B,), 1.0 where correct.
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"Expected logits (B, K) and targets (B,), got {logits.shape} and {targets.shape}.")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, {logits.shape[1]}] (the number of classes), got {k}.")
    target = jnp.take_along_axis(logits, targets[:, None], axis=-1)
    classes = jnp.arange(logits.shape[1])
    ahead = (logits > target) | ((logits == target) & (classes < targets[:, None]))
    return (jnp.sum(ahead, axis=-1) < k).astype(jnp.float32)
