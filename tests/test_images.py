"""Tests for `train.data.images`: image-folder and digits sources, splits, decoding, train / eval
transforms."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from perceiver_jax.image_processing import preprocess_images
from train.data import augment, images

RGB = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
COLUMNS, ROWS = np.meshgrid(np.arange(24) * 10, np.arange(20) * 12)
SMOOTH = np.stack([COLUMNS, ROWS, np.full_like(ROWS, 99)], axis=-1).astype(np.uint8)  # gradients, for JPEG


def write(path, image: Image.Image, fmt: str | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)
    return str(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    """root/cat: 3 images (PNG, upper-case .JPG, one in a sub-folder); root/dog: RGBA, palette and grey
    images; plus a text file and hidden entries that are not images."""
    root = tmp_path_factory.mktemp("tree") / "root"
    write(root / "cat" / "a.png", Image.fromarray(RGB))
    write(root / "cat" / "b.JPG", Image.fromarray(SMOOTH), "JPEG")
    write(root / "cat" / "sub" / "c.jpeg", Image.fromarray(RGB), "JPEG")
    write(root / "dog" / "d.png", Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])))
    write(root / "dog" / "e.png", Image.fromarray(RGB).convert("P"))
    write(root / "dog" / "f.png", Image.fromarray(RGB[..., 0]))  # grey "L"
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    os.makedirs(root / ".ipynb_checkpoints")
    return str(root)


def labels_by_key(source: images.ImageSource) -> dict[str, int]:
    return {record.key: record.label for record in source.records}


# ---------------------------------------------------------------------------------------------------------
# Image folders.


def test_image_folder_labels_sorted_classes(tree):
    source = images.image_folder(tree)
    assert source.class_names == ("cat", "dog")
    assert labels_by_key(source) == {
        "cat/a.png": 0, "cat/b.JPG": 0, "cat/sub/c.jpeg": 0, "dog/d.png": 1, "dog/e.png": 1, "dog/f.png": 1,
    }  # fmt: skip
    assert len(source) == 6 and source[0] == source.records[0]
    assert all(os.path.isfile(r.image) and r.image.startswith(tree) for r in source.records)


def test_load_image_converts_every_mode_to_rgb(tree):
    decoded = {r.key: images.load_image(r) for r in images.image_folder(tree).records}
    for key, image in decoded.items():
        assert image.dtype == np.uint8 and image.shape == (20, 24, 3), key
    np.testing.assert_array_equal(decoded["cat/a.png"], RGB)
    np.testing.assert_array_equal(decoded["dog/d.png"], RGB)  # alpha dropped
    np.testing.assert_array_equal(decoded["dog/f.png"], np.repeat(RGB[..., :1], 3, axis=-1))
    palette = Image.fromarray(RGB).convert("P")
    np.testing.assert_array_equal(decoded["dog/e.png"], np.asarray(palette.convert("RGB")))
    assert np.abs(decoded["cat/b.JPG"].astype(int) - SMOOTH).mean() < 3  # lossy JPEG


def test_holdout_split_is_stratified_and_by_key_hash(tree, tmp_path):
    source = images.image_folder(tree)
    train, held = images.holdout_split(source, 0.5)
    assert train.class_names == held.class_names == source.class_names
    assert sorted(labels_by_key(train) | labels_by_key(held)) == sorted(labels_by_key(source))
    assert not set(labels_by_key(train)) & set(labels_by_key(held))
    assert sorted(r.label for r in held.records) == [0, 0, 1, 1]  # round(0.5 * 3) = 2 per class
    # the same split wherever the tree lives
    moved = shutil.copytree(tree, tmp_path / "elsewhere")
    assert labels_by_key(images.holdout_split(images.image_folder(str(moved)), 0.5)[1]) == labels_by_key(held)


def test_holdout_split_keeps_a_train_image_per_class():
    records = tuple(
        images.ImageRecord(RGB, label, f"k/{label}/{i}") for label, n in ((0, 1), (1, 4)) for i in range(n)
    )
    train, held = images.holdout_split(images.ImageSource(records, ("a", "b")), 0.9)
    assert [r.label for r in train.records] == [0, 1]  # class 0 (1 image) all train; class 1: 4 - 1 held out
    assert [r.label for r in held.records] == [1, 1, 1]
    with pytest.raises(ValueError, match=r"eval_fraction must be in \(0, 1\)"):
        images.holdout_split(train, 1.0)


def test_image_folder_splits_from_two_folders(tree, tmp_path):
    write(tmp_path / "val" / "dog" / "x.png", Image.fromarray(RGB))
    train, held = images.image_folder_splits(tree, str(tmp_path / "val"))
    assert len(train) == 6 and labels_by_key(held) == {"dog/x.png": 1}  # the train classes' ids
    write(tmp_path / "val" / "cow" / "y.png", Image.fromarray(RGB))
    write(tmp_path / "val" / "ant" / "z.png", Image.fromarray(RGB))
    with pytest.raises(
        ValueError, match=r"not training classes: \['ant', 'cow'\] \(training has 2: cat, dog\)"
    ):
        images.image_folder_splits(tree, str(tmp_path / "val"))


def test_image_folder_splits_holds_out_a_fraction(tree):
    train, held = images.image_folder_splits(tree, eval_fraction=0.3)  # round(0.3 * 3) = 1 per class
    assert len(train) == 4 and sorted(r.label for r in held.records) == [0, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.image_folder(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no class folders \(found: a.png\)"):
        images.image_folder(str(tmp_path / "flat"))
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "a.gif").write_bytes(b"")
    (tmp_path / "noimg" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"no .jpg/.jpeg/.png images. Found cat/: a.gif; dog/: nothing"):
        images.image_folder(str(tmp_path / "noimg"))
    write(tmp_path / "noimg" / "cat" / "b.png", Image.fromarray(RGB))
    with pytest.raises(ValueError, match=r"Class folder\(s\) with no .jpg/.jpeg/.png images .*dog/: nothing"):
        images.image_folder(str(tmp_path / "noimg"))


def test_unreadable_image_fails_at_decode_naming_the_file(tmp_path):
    write(tmp_path / "root" / "cat" / "good.png", Image.fromarray(RGB))
    (tmp_path / "root" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    source = images.image_folder(str(tmp_path / "root"))  # listing does not decode
    broken = next(r for r in source.records if r.key == "cat/broken.jpg")
    with pytest.raises(ValueError, match=r"Cannot decode image .*broken\.jpg.*remove or replace this file"):
        images.load_image(broken)
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        images.ImageEvalTransform(16)(broken)


# ---------------------------------------------------------------------------------------------------------
# Digits.


@pytest.fixture(scope="module")
def digits() -> tuple[images.ImageSource, images.ImageSource]:
    return images.digits_splits()


def test_digits_split(digits):
    train, held = digits
    reference = load_digits()
    counts = np.bincount(reference.target)
    assert len(train) + len(held) == len(reference.target) == 1797
    assert np.array_equal(np.bincount([r.label for r in held.records]), np.round(0.2 * counts).astype(int))
    assert not {r.key for r in train.records} & {r.key for r in held.records}
    assert train.class_names == held.class_names == tuple("0123456789")
    for record in held.records[:50]:
        index = int(record.key.split("/")[1])
        assert record.label == reference.target[index]
        assert record.image.dtype == np.uint8 and record.image.shape == (8, 8, 3)
        np.testing.assert_array_equal(record.image[..., 1], np.round(reference.images[index] * 255 / 16))
    again = images.digits_splits()[1]
    assert [r.key for r in again.records] == [r.key for r in held.records]
    restored = pickle.loads(pickle.dumps(held))  # Grain workers receive a pickled copy of the source
    assert restored.class_names == held.class_names and [r.key for r in restored.records] == [
        r.key for r in held
    ]


def test_native_image_size(digits, tmp_path):
    assert images.native_image_size(*digits) == (8, 8)
    write(tmp_path / "mixed" / "a" / "small.png", Image.fromarray(RGB))
    write(tmp_path / "mixed" / "b" / "large.png", Image.fromarray(np.zeros((30, 10, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"small\.png is 24x20 \(WxH\) and .*large\.png is 10x30"):
        images.native_image_size(images.image_folder(str(tmp_path / "mixed")))


# ---------------------------------------------------------------------------------------------------------
# Transforms.


def check_example(example, shape, label):
    assert set(example) == {"inputs", "targets", "weights"}
    assert example["inputs"].shape == shape and example["inputs"].dtype == np.float32
    assert (
        example["targets"].shape == ()
        and example["targets"].dtype == np.int32
        and example["targets"] == label
    )
    assert (
        example["weights"].shape == () and example["weights"].dtype == np.float32 and example["weights"] == 1
    )


def test_train_transform_upsamples_digits_deterministically(digits):
    record = digits[0][0]
    transform = images.ImageTrainTransform(32)
    example = transform(record, np.random.default_rng(5))
    check_example(example, (32, 32, 3), record.label)
    np.testing.assert_array_equal(example["inputs"], transform(record, np.random.default_rng(5))["inputs"])
    assert not np.array_equal(example["inputs"], transform(record, np.random.default_rng(6))["inputs"])
    restored = pickle.loads(pickle.dumps(transform))  # Grain workers receive a pickled copy
    np.testing.assert_array_equal(restored(record, np.random.default_rng(5))["inputs"], example["inputs"])


def test_train_transform_steps(tree, digits):
    record = images.image_folder(tree).records[0]
    ours = images.ImageTrainTransform(16, randaugment_layers=2, randaugment_magnitude=9)(
        record, np.random.default_rng(1)
    )
    rng = np.random.default_rng(1)  # the same steps by hand
    image = augment.random_resized_crop(RGB, rng, 16)
    image = augment.rand_augment(augment.random_flip(image, rng), rng, num_layers=2, magnitude=9)
    check_example(ours, (16, 16, 3), 0)
    np.testing.assert_array_equal(ours["inputs"], augment.normalize(image))
    native = images.ImageTrainTransform(None, randaugment_layers=0)(digits[0][3], np.random.default_rng(0))
    pixels = digits[0][3].image
    assert any(np.array_equal(native["inputs"], augment.normalize(x)) for x in (pixels, pixels[:, ::-1]))


def test_eval_transform_is_hugging_face_preprocessing(tree, digits):
    for record in images.image_folder(tree).records:
        example = images.ImageEvalTransform(16, crop_size=18)(record)
        with Image.open(record.image) as file:
            reference = preprocess_images(file, size=16, crop_size=18)[0]
        check_example(example, (16, 16, 3), record.label)
        np.testing.assert_array_equal(example["inputs"], reference)
    record = digits[1][0]
    check_example(images.ImageEvalTransform(32)(record), (32, 32, 3), record.label)
    native = images.ImageEvalTransform(None)(record)
    np.testing.assert_array_equal(native["inputs"], augment.normalize(record.image))


def test_transforms_reject_bad_sizes():
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        images.ImageTrainTransform(0)
    with pytest.raises(ValueError, match="crop_size .* needs an image_size"):
        images.ImageEvalTransform(None, crop_size=10)
