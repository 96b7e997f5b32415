"""Image-classification data: random-access sources of `ImageRecord`s and the train / eval transforms.

Sources (`ImageSource`: `len(source)`, `source[i] -> ImageRecord`, `class_names`):

* `image_folder(root)`: the torchvision / TFDS `image_folder` layout, `root/<class>/<image>` (images may
  sit in sub-folders of a class folder; names starting with "." are skipped). Images are the files ending
  in .jpg, .jpeg or .png (any case); classes are the class folders sorted by name, label = position.
  `image_folder_splits` gives train / eval from two folders, or holds out a fraction of one folder.
* `digits_splits()`: the offline demo set, scikit-learn's `load_digits` (1797 8x8 grey digits, 10 classes,
  shipped inside scikit-learn, no download), as uint8 RGB with a fixed train / eval split.

Held-out splits (`holdout_split`) are stratified and deterministic: within each class, records are ordered
by the SHA-256 of their key (the path relative to the root, e.g. "cat/001.jpg") and the first
round(fraction * n) of them (at most n - 1) go to eval. A file keeps its split whatever the machine, the
root's location or the order of listing.

Transforms turn a record into an example `{'inputs': float32 (H, W, 3), 'targets': int32 (),
'weights': float32 ()}`: `ImageTrainTransform(record, rng)` (decode, random resized crop, flip,
RandAugment, normalise; see `train.data.augment` for DeepMind's recipe) and
`ImageEvalTransform(record)` (Hugging Face's centre crop). With `image_size=None` both keep every
image at its own size (no crop, no resize), which needs all images of one size: check with
`native_image_size(train, eval)` first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from train.data import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DIGITS_EVAL_FRACTION = 0.2

Example = dict[str, np.ndarray]


class ImageRecord(NamedTuple):
    """One labelled image: `image` is a file path or a uint8 (H, W, 3) array; `key` names it (the path
    relative to the dataset root, or e.g. "digits/17") in splits and error messages."""

    image: str | np.ndarray
    label: int
    key: str

    @property
    def name(self) -> str:
        """The file path, or the key of an in-memory image."""
        return self.image if isinstance(self.image, str) else self.key


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """Random-access image-classification source: `records[i]` has a label in [0, len(class_names))."""

    records: tuple[ImageRecord, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]


# ---------------------------------------------------------------------------------------------------------
# Image folders.


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_images(class_dir: str) -> tuple[list[str], list[str]]:
    """(image paths, other file names) under `class_dir`, recursively, sorted; hidden entries skipped."""
    images, others = [], []
    for directory, subdirs, files in os.walk(class_dir, followlinks=True):
        subdirs[:] = _visible(subdirs)
        for name in _visible(files):
            (images if _is_image(name) else others).append(os.path.join(directory, name))
    return images, [os.path.relpath(p, class_dir) for p in others]


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown or "nothing"


def _scan(root: str) -> dict[str, list[str]]:
    """Class name -> sorted image paths of the folder `root`; raises on a folder not in the layout."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root!r} does not exist (or is not a folder); expected {root}/<class>/<image>."
        )
    entries = _visible(os.listdir(root))
    class_names = [n for n in entries if os.path.isdir(os.path.join(root, n))]
    if not class_names:
        raise ValueError(
            f"Image folder {root!r} has no class folders (found: {_preview(entries)}); expected one folder "
            f"per class holding its images: {root}/<class>/<image>.jpg|.jpeg|.png."
        )
    found = {name: _class_images(os.path.join(root, name)) for name in class_names}
    if not any(images for images, _ in found.values()):
        listing = "; ".join(f"{name}/: {_preview(others)}" for name, (_, others) in found.items())
        raise ValueError(
            f"Image folder {root!r} holds no .jpg/.jpeg/.png images. Found {listing}. "
            f"Expected {root}/<class>/<image>."
        )
    empty = [name for name, (images, _) in found.items() if not images]
    if empty:
        details = "; ".join(f"{name}/: {_preview(found[name][1])}" for name in empty)
        raise ValueError(
            f"Class folder(s) with no .jpg/.jpeg/.png images in {root!r}: {details}. Add images to them "
            f"or remove them (every class folder is a class)."
        )
    return {name: images for name, (images, _) in found.items()}


def image_folder(root: str, class_names: tuple[str, ...] | None = None) -> ImageSource:
    """The images of `root/<class>/...` as a source.

    Args:
      root: dataset folder.
      class_names: the label ids to use (e.g. the train folder's, for an eval folder); every class folder
        of `root` must be one of them. Default: `root`'s class folders, sorted by name.

    Raises:
      FileNotFoundError: `root` is missing.
      ValueError: no class folders, no images at all, a class folder without images, or (with
        `class_names`) class folders that are not among `class_names`.
    """
    images = _scan(root)
    if class_names is None:
        class_names = tuple(images)
    unknown = sorted(set(images) - set(class_names))
    if unknown:
        raise ValueError(
            f"Image folder {root!r} has class folders that are not training classes: {unknown} (training "
            f"has {len(class_names)}: {_preview(list(class_names))}). Remove them, or add them to training."
        )
    label = {name: i for i, name in enumerate(class_names)}
    records = tuple(
        ImageRecord(path, label[name], os.path.relpath(path, root).replace(os.sep, "/"))
        for name, paths in images.items()
        for path in paths
    )
    return ImageSource(records, tuple(class_names))


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def holdout_split(source: ImageSource, eval_fraction: float) -> tuple[ImageSource, ImageSource]:
    """(train, eval): per class, the round(eval_fraction * n) records (at most n - 1) with the smallest
    SHA-256 of their key go to eval. Both keep the record order of `source` and its class names."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    by_class: dict[int, list[int]] = {}
    for i, record in enumerate(source.records):
        by_class.setdefault(record.label, []).append(i)
    held_out = set()
    for indices in by_class.values():
        count = min(round(eval_fraction * len(indices)), len(indices) - 1)
        held_out.update(sorted(indices, key=lambda i: _hash(source.records[i].key))[:count])
    train = tuple(r for i, r in enumerate(source.records) if i not in held_out)
    held = tuple(r for i, r in enumerate(source.records) if i in held_out)
    return ImageSource(train, source.class_names), ImageSource(held, source.class_names)


def image_folder_splits(
    train_root: str, eval_root: str | None = None, eval_fraction: float = 0.1
) -> tuple[ImageSource, ImageSource]:
    """(train, eval) sources: `eval_root`'s images labelled with `train_root`'s classes, or, without
    `eval_root`, a `holdout_split` of `train_root` keeping `eval_fraction` of each class for eval."""
    train = image_folder(train_root)
    if eval_root is None:
        return holdout_split(train, eval_fraction)
    return train, image_folder(eval_root, train.class_names)


# ---------------------------------------------------------------------------------------------------------
# Offline demo set.


def digits_to_rgb(images: np.ndarray) -> np.ndarray:
    """scikit-learn digits (N, 8, 8) float in [0, 16] -> uint8 (N, 8, 8, 3), ink bright, grey as R=G=B."""
    grey = np.round(np.asarray(images, np.float64) * (255 / 16)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def digits_splits() -> tuple[ImageSource, ImageSource]:
    """The offline demo set: scikit-learn's `load_digits` (1797 8x8 digits, classes "0".."9", no network)
    as uint8 (8, 8, 3) images, split by `holdout_split` with `DIGITS_EVAL_FRACTION` held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits_to_rgb(digits.images)
    records = tuple(
        ImageRecord(image, int(label), f"digits/{i}")
        for i, (image, label) in enumerate(zip(images, digits.target, strict=True))
    )
    class_names = tuple(str(name) for name in digits.target_names)
    return holdout_split(ImageSource(records, class_names), DIGITS_EVAL_FRACTION)


# ---------------------------------------------------------------------------------------------------------
# Decoding and transforms.


# What Pillow raises on a missing, truncated or corrupt file.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _decode_error(path: str, error: Exception) -> ValueError:
    return ValueError(f"Cannot decode image {path!r} ({error}); remove or replace this file.")


def load_image(record: ImageRecord) -> np.ndarray:
    """The record's image as uint8 (H, W, 3) RGB; files in grey, grey+alpha, RGBA (alpha dropped), palette
    or CMYK are converted. Raises ValueError naming a file that cannot be decoded."""
    if not isinstance(record.image, str):
        image = record.image
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Image {record.key} must be uint8 (H, W, 3), got {image.dtype} {image.shape}.")
        return image
    try:
        with Image.open(record.image) as file:
            return np.asarray(file.convert("RGB"))
    except _DECODE_ERRORS as error:
        raise _decode_error(record.image, error) from error


def _image_hw(record: ImageRecord) -> tuple[int, int]:
    """(H, W) of a record, from the file header only."""
    if not isinstance(record.image, str):
        return record.image.shape[:2]
    try:
        with Image.open(record.image) as file:
            return file.height, file.width
    except _DECODE_ERRORS as error:
        raise _decode_error(record.image, error) from error


def native_image_size(*sources: ImageSource) -> tuple[int, int]:
    """The (H, W) that every image of `sources` has, for `image_size=None` (native-size) transforms.

    Reads each file's header. Raises ValueError naming two images of different sizes.
    """
    first, size = None, None
    for source in sources:
        for record in source.records:
            hw = _image_hw(record)
            if first is None:
                first, size = record, hw
            elif hw != size:
                raise ValueError(
                    f"image_size=None keeps images at their own size, which needs them all the same size, "
                    f"but {first.name} is {size[1]}x{size[0]} (WxH) and {record.name} is {hw[1]}x{hw[0]}. "
                    f"Set image_size to crop and resize them, or resize the files."
                )
    if size is None:
        raise ValueError("native_image_size got no images.")
    return size


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and not (isinstance(image_size, int) and image_size >= 1):
        raise ValueError(f"image_size must be a positive int, or None for native size; got {image_size!r}.")


def _example(inputs: np.ndarray, label: int) -> Example:
    return {
        "inputs": inputs,
        "targets": np.asarray(label, np.int32),
        "weights": np.asarray(1.0, np.float32),
    }


class ImageTrainTransform:
    """`(record, rng) -> example`: decode -> random resized crop to `image_size` (skipped when None) ->
    flip (unless `flip` is False) -> RandAugment(`randaugment_layers`, `randaugment_magnitude`) -> normalise.

    `crop_area_range` is the crop's area fraction range (DeepMind: (0.08, 1)); crops keep at least 10% of
    the image. Set `randaugment_layers=0` for no RandAugment.
    """

    def __init__(
        self,
        image_size: int | None,
        randaugment_layers: int = 4,
        randaugment_magnitude: float = 5,
        crop_area_range: tuple[float, float] = augment.CROP_AREA_RANGE,
        flip: bool = True,
    ):
        _check_image_size(image_size)
        self.image_size, self.flip = image_size, flip
        self.randaugment_layers = randaugment_layers
        self.randaugment_magnitude = randaugment_magnitude
        self.crop_area_range = tuple(crop_area_range)

    def __call__(self, record: ImageRecord, rng: np.random.Generator) -> Example:
        image = load_image(record)
        if self.image_size is not None:
            image = augment.random_resized_crop(image, rng, self.image_size, self.crop_area_range)
        if self.flip:
            image = augment.random_flip(image, rng)
        image = augment.rand_augment(image, rng, self.randaugment_layers, self.randaugment_magnitude)
        return _example(augment.normalize(image), record.label)


class ImageEvalTransform:
    """`record -> example`: decode -> `augment.center_crop` (Hugging Face's preprocessing) to
    `image_size` with reference `crop_size` (default `augment.default_crop_size`), or, with
    `image_size=None`, the image at its own size, normalised."""

    def __init__(self, image_size: int | None, crop_size: int | None = None):
        _check_image_size(image_size)
        if image_size is None and crop_size is not None:
            raise ValueError("crop_size applies to centre crops; it needs an image_size (got None).")
        self.image_size = image_size
        self.crop_size = crop_size

    def __call__(self, record: ImageRecord, rng: np.random.Generator | None = None) -> Example:
        del rng  # deterministic
        image = load_image(record)
        if self.image_size is None:
            return _example(augment.normalize(image), record.label)
        return _example(augment.center_crop(image, self.image_size, self.crop_size), record.label)
