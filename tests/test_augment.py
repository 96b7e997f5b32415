"""Tests for `train.data.augment`: DeepMind's crop / flip / RandAugment on the host, MixUp / CutMix on
device."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from perceiver_jax.image_processing import IMAGENET_MEAN, IMAGENET_STD, preprocess_images
from train.data import augment

# The op list of DeepMind's `distort_image_with_randaugment` (perceiver/train/autoaugment.py), in order.
DEEPMIND_OPS = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
]  # fmt: skip


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.chelsea()  # uint8 (300, 451, 3)


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """A 224x224 natural image (RandAugment's reference side)."""
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((224, 224)))


# ---------------------------------------------------------------------------------------------------------
# Crops, flip, normalisation.


@pytest.mark.parametrize("height, width", [(300, 451), (64, 64), (8, 8), (33, 20)])
def test_crop_box_inside_image_with_deepmind_area_and_aspect(height, width):
    for seed in range(200):
        top, left, crop_h, crop_w = augment.crop_box(height, width, np.random.default_rng(seed))
        assert 0 <= top and top + crop_h <= height and 0 <= left and left + crop_w <= width
        if (top, left, crop_h, crop_w) == augment.center_crop_box(height, width):
            continue  # the fallback
        assert (crop_h, crop_w) != (height, width)
        assert 0.1 <= crop_h * crop_w / (height * width) <= 1
        # width = round(height * aspect), aspect in [3/4, 4/3]; the area fix-up may move height by one
        assert 3 / 4 * (crop_h - 1) - 0.5 <= crop_w <= 4 / 3 * (crop_h + 1) + 0.5


def test_crop_box_samples_small_and_large_crops_deterministically():
    boxes = [augment.crop_box(300, 451, np.random.default_rng(seed)) for seed in range(200)]
    areas = np.array([h * w for _, _, h, w in boxes]) / (300 * 451)
    assert areas.min() < 0.2 and areas.max() > 0.7  # (the largest allowed: 300 x 400, 0.89)
    assert boxes == [augment.crop_box(300, 451, np.random.default_rng(seed)) for seed in range(200)]


def test_crop_box_falls_back_to_deepmind_centre_crop():
    # A 10x200 strip: any crop of >= 10% of the area would need aspect >= 2 > 4/3, so every attempt fails.
    # DeepMind's centre crop: side int(224 / 256 * 10) = 8 at offsets ((10 - 8 + 1) // 2, (200 - 8 + 1) // 2).
    for seed in range(20):
        assert augment.crop_box(10, 200, np.random.default_rng(seed)) == (1, 96, 8, 8)


def test_crop_box_rejects_bad_ranges():
    with pytest.raises(ValueError, match="area_range"):
        augment.crop_box(10, 10, np.random.default_rng(0), area_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="aspect_ratio_range"):
        augment.crop_box(10, 10, np.random.default_rng(0), aspect_ratio_range=(2.0, 1.0))


@pytest.mark.parametrize("shape, size", [((300, 451, 3), 224), ((8, 8, 3), 32)])
def test_random_resized_crop_is_a_crop_box_resized_bicubic(photo, shape, size):
    image = photo if shape == photo.shape else photo[::37, ::56][:8, :8]
    out = augment.random_resized_crop(image, np.random.default_rng(3), size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    top, left, h, w = augment.crop_box(*shape[:2], np.random.default_rng(3))
    expected = Image.fromarray(image[top : top + h, left : left + w]).resize((size, size), Image.BICUBIC)
    np.testing.assert_array_equal(out, np.asarray(expected))
    np.testing.assert_array_equal(out, augment.random_resized_crop(image, np.random.default_rng(3), size))


def test_random_resized_crop_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match=r"uint8 RGB image of shape \(H, W, 3\)"):
        augment.random_resized_crop(np.zeros((8, 8), np.uint8), np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="float32"):
        augment.random_resized_crop(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0), 4)


def test_random_flip_is_identity_or_exact_mirror(photo):
    flipped = 0
    for seed in range(20):
        out = augment.random_flip(photo, np.random.default_rng(seed))
        if np.array_equal(out, photo):
            continue
        np.testing.assert_array_equal(out, photo[:, ::-1])  # column j is column W-1-j
        assert out[0, 0].tolist() == photo[0, -1].tolist()
        flipped += 1
    assert 0 < flipped < 20


def test_normalize_is_image_processing_arithmetic(small):
    # On a square image resized to its own size the HF preprocessing is rescale + normalise only.
    np.testing.assert_array_equal(augment.normalize(small), preprocess_images(small, 224, 224)[0])
    reference = (small / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = augment.normalize(small)
    assert out.dtype == np.float32 and np.abs(out - reference).max() < 1e-5


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee"])
@pytest.mark.parametrize("size", [224, 32])
def test_center_crop_equals_image_processing(name, size):
    image = getattr(skimage.data, name)()
    out = augment.center_crop(image, size)
    crop_size = 256 if size == 224 else 37  # round(size * 256 / 224)
    np.testing.assert_array_equal(out, preprocess_images(image, size=size, crop_size=crop_size)[0])
    assert out.shape == (size, size, 3) and out.dtype == np.float32


# ---------------------------------------------------------------------------------------------------------
# RandAugment.


def apply(name: str, image: np.ndarray, magnitude: float, seed: int = 0) -> np.ndarray:
    return augment.RAND_AUGMENT_OPS[name](image, magnitude, np.random.default_rng(seed))


def test_op_list_is_deepminds():
    assert list(augment.RAND_AUGMENT_OPS) == DEEPMIND_OPS


@pytest.mark.parametrize("name", DEEPMIND_OPS)
def test_every_op_keeps_shape_and_dtype(photo, name):
    image = photo[:61, :90]
    for magnitude in (0, 5, 10):
        out = apply(name, image, magnitude)
        assert out.shape == image.shape and out.dtype == np.uint8


@pytest.mark.parametrize(
    "name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd"]
)
def test_ops_are_identity_at_magnitude_zero(small, name):
    for seed in range(4):
        np.testing.assert_array_equal(apply(name, small, 0, seed), small)


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhance_ops_are_identity_at_magnitude_five(small, name):
    # factor = 5 / 10 * 1.8 + 0.1 = 1.0: DeepMind's magnitude 5 leaves these four ops without effect
    np.testing.assert_array_equal(apply(name, small, 5), small)
    assert not np.array_equal(apply(name, small, 0), small)  # factor 0.1


def test_pixel_ops_follow_deepmind_levels(small):
    np.testing.assert_array_equal(apply("Invert", small, 5), 255 - small)
    np.testing.assert_array_equal(apply("Solarize", small, 10), small)  # threshold 256
    np.testing.assert_array_equal(apply("Solarize", small, 0), 255 - small)  # threshold 0
    half = apply("Solarize", small, 5)  # threshold 128
    np.testing.assert_array_equal(half, np.where(small < 128, small, 255 - small))
    np.testing.assert_array_equal(apply("Posterize", small, 5), small & 0b11000000)  # int(0.5 * 4) = 2 bits
    np.testing.assert_array_equal(apply("Posterize", small, 10), small & 0b11110000)
    added = apply("SolarizeAdd", small, 5)  # +int(0.5 * 110) = 55 below 128
    np.testing.assert_array_equal(
        added, np.where(small < 128, np.minimum(small.astype(int) + 55, 255), small)
    )


def test_autocontrast_stretches_each_channel(small):
    dull = (small // 4 + 60).astype(np.uint8)
    out = apply("AutoContrast", dull, 5)
    assert out.reshape(-1, 3).min(0).tolist() == [0, 0, 0] and out.reshape(-1, 3).max(0).tolist() == [255] * 3


def test_equalize_flattens_the_histogram(small):
    dull = (small // 4 + 60).astype(np.uint8)
    out = apply("Equalize", dull, 5)
    # equalised values spread over the range; the cumulative histogram then grows ~linearly
    assert out.max() >= 250 and out.min() <= 5
    for channel in range(3):
        assert abs(np.median(out[..., channel]) - 128) < 20


@pytest.mark.parametrize("name, axis", [("TranslateX", 1), ("TranslateY", 0)])
def test_translate_shifts_50_pixels_at_224_and_fills_grey(small, name, axis):
    # M=5: 5 / 10 * 100 = 50 pixels on a 224-pixel side, random sign
    signs = set()
    for seed in range(8):
        out = apply(name, small, 5, seed)
        for sign in (1, -1):
            expected = np.full_like(small, 128)
            src = [slice(None)] * 2
            dst = [slice(None)] * 2
            src[axis], dst[axis] = (
                (slice(50, None), slice(None, -50)) if sign == 1 else (slice(None, -50), slice(50, None))
            )
            expected[tuple(dst)] = small[tuple(src)]
            if np.array_equal(out, expected):
                signs.add(sign)
                break
        else:
            raise AssertionError(f"{name} (seed {seed}) is not a 50-pixel shift")
    assert signs == {1, -1}


def test_translate_scales_with_the_image_side(small):
    tiny = small[::7, ::7]  # 32x32: 50 * 32 / 224 = 7.14 pixels -> a 7-pixel shift
    out = apply("TranslateX", tiny, 5)
    shifted = [np.array_equal(out[:, :-7], tiny[:, 7:]), np.array_equal(out[:, 7:], tiny[:, :-7])]
    assert any(shifted)


def test_cutout_greys_a_box_of_half_side_20_at_224(small):
    image = np.maximum(small, 1)  # no pixel is grey 128 by accident below
    image[image == 128] = 129
    for seed in range(10):
        out = apply("Cutout", image, 5, seed)
        changed = np.any(out != image, axis=-1)
        assert np.all(out[changed] == 128)
        rows, cols = np.nonzero(changed)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert changed.sum() == h * w and h <= 40 and w <= 40  # one box, clipped at the borders


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY"])
def test_geometric_ops_move_pixels_and_fill_grey(small, name):
    out = apply(name, small, 10)
    assert not np.array_equal(out, small)
    assert np.all(out[0, 0] == 128) or np.all(out[-1, -1] == 128) or np.all(out[0, -1] == 128)


def test_rand_augment_applies_num_layers_ops(small, monkeypatch):
    calls = []

    def recorder(name):
        def op(image, magnitude, rng):
            calls.append((name, magnitude))
            return image + 1

        return op

    monkeypatch.setattr(augment, "RAND_AUGMENT_OPS", {name: recorder(name) for name in DEEPMIND_OPS})
    image = np.zeros((4, 4, 3), np.uint8)
    out = augment.rand_augment(image, np.random.default_rng(0), num_layers=4, magnitude=5)
    assert len(calls) == 4 and all(m == 5 for _, m in calls)
    np.testing.assert_array_equal(out, image + 4)
    chosen = set()
    for seed in range(100):
        calls.clear()
        augment.rand_augment(image, np.random.default_rng(seed), num_layers=4, magnitude=5)
        chosen.update(name for name, _ in calls)
    assert chosen == set(DEEPMIND_OPS)  # uniform over all 16
    calls.clear()
    np.testing.assert_array_equal(augment.rand_augment(image, np.random.default_rng(0), num_layers=0), image)
    assert calls == []


def test_rand_augment_is_deterministic_per_seed(small):
    outs = [augment.rand_augment(small, np.random.default_rng(seed)) for seed in (0, 0, 1)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0].dtype == np.uint8 and outs[0].shape == small.shape
    assert not np.array_equal(outs[0], outs[2])


def test_rand_augment_rejects_bad_settings(small):
    with pytest.raises(ValueError, match=r"magnitude must be in \[0, 10\]"):
        augment.rand_augment(small, np.random.default_rng(0), magnitude=11)
    with pytest.raises(ValueError, match="num_layers"):
        augment.rand_augment(small, np.random.default_rng(0), num_layers=-1)


# ---------------------------------------------------------------------------------------------------------
# Device side.

BATCH, SIDE, CLASSES = 8, 12, 10

# Jitted once and shared: eager Beta sampling dispatches op by op and is slow.
MIXUP = jax.jit(augment.mixup, static_argnums=3)
CUTMIX = jax.jit(augment.cutmix, static_argnums=3)
MIX_BATCH = jax.jit(augment.mix_batch, static_argnums=(3, 4))


def constant_batch() -> tuple[jax.Array, jax.Array]:
    """Example i: every pixel (i + 1), label i (one-hot), so a pixel's value tells whose it is."""
    values = jnp.arange(1, BATCH + 1, dtype=jnp.float32)
    images = jnp.broadcast_to(values[:, None, None, None], (BATCH, SIDE, SIDE, 3))
    return images, jax.nn.one_hot(jnp.arange(BATCH), CLASSES)


def own_and_partner(labels: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Label weight of each example's own class i and of its partner's class i - 1."""
    labels = np.asarray(labels)
    index = np.arange(BATCH)
    return labels[index, index], labels[index, (index - 1) % BATCH]


def check_mixup_rows(images, labels, rows):
    own, partner = own_and_partner(labels)
    values = np.arange(1, BATCH + 1, dtype=np.float32)
    for i in rows:
        expected = own[i] * values[i] + partner[i] * values[(i - 1) % BATCH]
        np.testing.assert_allclose(np.asarray(images[i]), expected, rtol=1e-6)


def check_cutmix_rows(images, labels, rows):
    own, partner = own_and_partner(labels)
    for i in rows:
        image = np.asarray(images[i, ..., 0])
        is_own, is_partner = image == i + 1, image == (i - 1) % BATCH + 1
        assert np.all(is_own | is_partner)
        assert own[i] == pytest.approx(is_own.mean(), abs=1e-6)
        rows_in, cols_in = np.nonzero(is_partner)
        if rows_in.size:  # the pasted region is one box
            box = (rows_in.max() - rows_in.min() + 1) * (cols_in.max() - cols_in.min() + 1)
            assert box == rows_in.size


def test_mixup_blends_images_and_labels_by_one_weight():
    images, labels = constant_batch()
    mixed, mixed_labels = MIXUP(jax.random.key(0), images, labels, 0.2)
    assert mixed.shape == images.shape and mixed.dtype == images.dtype and mixed_labels.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1, rtol=1e-6)
    check_mixup_rows(mixed, mixed_labels, range(BATCH))
    np.testing.assert_array_equal(np.asarray(MIXUP(jax.random.key(0), images, labels, 0.2)[0]), mixed)


def test_cutmix_label_weights_are_the_pixel_fractions():
    images, labels = constant_batch()
    for seed in range(5):
        mixed, mixed_labels = CUTMIX(jax.random.key(seed), images, labels, 1.0)
        assert mixed.shape == images.shape and mixed.dtype == images.dtype
        np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1, rtol=1e-6)
        check_cutmix_rows(mixed, mixed_labels, range(BATCH))


def test_mix_batch_is_half_mixup_half_cutmix():
    images, labels = constant_batch()
    for seed in range(5):
        mixed, mixed_labels = MIX_BATCH(jax.random.key(seed), images, labels, 0.2, 1.0)
        np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1, rtol=1e-6)
        check_mixup_rows(mixed, mixed_labels, range(BATCH // 2))
        check_cutmix_rows(mixed, mixed_labels, range(BATCH // 2, BATCH))
        assert np.all(np.ptp(np.asarray(mixed[: BATCH // 2]), axis=(1, 2, 3)) == 0)  # mixup: uniform blend


def test_mix_batch_with_one_method_or_none():
    images, labels = constant_batch()
    key = jax.random.key(1)

    def program(fn, **alphas) -> str:  # traced, not compiled (compiling Beta sampling takes seconds)
        return str(jax.make_jaxpr(functools.partial(fn, **alphas))(key, images, labels))

    assert program(augment.mix_batch, mixup_alpha=0.2, cutmix_alpha=None) == program(augment.mixup, alpha=0.2)
    assert program(augment.mix_batch, mixup_alpha=None, cutmix_alpha=1.0) == program(
        augment.cutmix, alpha=1.0
    )
    same = augment.mix_batch(key, images, labels, None, None)
    assert same[0] is images and same[1] is labels


def test_mixing_keeps_bfloat16_images():
    images, labels = constant_batch()
    mixed, mixed_labels = jax.eval_shape(
        MIX_BATCH, jax.random.key(0), images.astype(jnp.bfloat16), labels, 0.2, 1.0
    )
    assert mixed.dtype == jnp.bfloat16 and mixed_labels.dtype == jnp.float32


def test_mixing_rejects_integer_targets_and_bad_alpha():
    images, labels = constant_batch()
    with pytest.raises(ValueError, match="one-hot"):
        augment.mix_batch(jax.random.key(0), images, jnp.arange(BATCH))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        augment.mixup(jax.random.key(0), images, labels, 0.0)


def test_topk_correct_matches_argsort_reference():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((16, CLASSES)).astype(np.float32)
    targets = rng.integers(0, CLASSES, 16)
    for k in (1, 5):
        top = np.argsort(logits, axis=1)[:, -k:]
        reference = np.any(top == targets[:, None], axis=1).astype(np.float32)
        out = jax.jit(augment.topk_correct, static_argnums=2)(logits, targets, k)
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out), reference)
    # constant logits: the top k are classes 0..k-1, not every class
    np.testing.assert_array_equal(
        np.asarray(augment.topk_correct(jnp.zeros((CLASSES, CLASSES)), jnp.arange(CLASSES), 2)),
        (np.arange(CLASSES) < 2).astype(np.float32),
    )
    with pytest.raises(ValueError, match="k must be in"):
        augment.topk_correct(logits, targets, CLASSES + 1)
