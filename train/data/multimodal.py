"""Multimodal (video, audio, label) autoencoding data: clip sources, the example transform, training helpers.

What the sources say. Perceiver IO (Jaegle et al., arXiv:2107.14795v3: Sec. 4.3, Tables 4 and 17, App. I)
and DeepMind's colab `perceiver/colabs/video_autoencoding.ipynb` (google-deepmind/deepmind-research):
- Data: Kinetics-700-2020; 16 frames at 224 x 224, audio at 48 kHz = 1920 samples per frame (30,720 per
  clip), a 700-way one-hot label. Patches: 1 x 4 x 4 for video, 16 samples for audio.
- Value ranges (colab): frames are RGB / 255, in [0, 1]; audio samples lie in [-1, 1] (int16 / 2**15);
  one channel (the colab keeps channel 0); the first 16 frames of a centre-cropped, resized video.
- Loss (App. I): 0.03 * L1(video) + 1 * L1(audio) + 0.0001 * cross-entropy(label); a 0.03 / 1 / 1 variant
  trades video PSNR for accuracy (Sec. 4.3: 45% top-1 at 20.7 dB video PSNR).
- Output subsampling (Sec. 4.3): training decodes "512 audio samples and 512 pixels and the class label for
  every training example"; testing decodes every point.
- Label masking (Sec. 4.3): the label input is masked 50% of the time in training; masked at evaluation,
  the autoencoder is a classifier (the colab's inference model masks it always).
- Optimisation (App. I): batch size 1024, learning rate 1e-3. The optimiser and the number of steps are
  not given for this task (the paper trains ImageNet, optical flow and language with LAMB). Table 17:
  20.0M parameters, 4.4 train steps/s.
- Metrics (Table 4): audio PSNR, video PSNR, top-1; at 88x compression 26.97 dB, 24.37 dB, 10.2%. PSNR
  is not defined further.
- GitHub: deepmind-research #362 (asks for the loss code) and #401 (asks why audio uses 192 Fourier
  bands) have no maintainer answer; App. I gives the loss above and the audio position features as
  385 = 2 * 192 + 1 "to ensure the input dimensions ... match". krasserm/perceiver-io #52 (implementing
  this autoencoder) was closed without an implementation.

Our interpretation (not stated by the sources):
- Output points are the model's queries: pixels of the (T, H, W) video grid and audio *tokens* (16
  samples each), so "512 audio samples" is read as 512 audio points (8,192 samples; the other reading, 512
  raw samples, is 32 points). The model takes one 1-D set of points for the whole batch (as DeepMind's
  decoder), so the task draws a fresh set per step, uniformly without replacement (`train.tasks.multimodal`).
- L1 is the mean absolute error over the decoded values. PSNR is 10 log10(max_value**2 / MSE) per clip
  over its fully decoded values, with max_value 1 for video in [0, 1] and 1 (the peak amplitude) for audio
  in [-1, 1], averaged over clips.
- Label masking belongs to the model: `PerceiverConfig.multimodal_label_mask_prob=0.5` in training.

Examples (`ClipTransform`): {'image': float32 (T, H, W, 3) in [0, 1], 'audio': float32 (T * S_f, 1) in
[-1, 1] (S_f = audio_samples_per_frame), 'label': float32 (num_classes,) one-hot, 'targets': int32 () the
class, 'weights': float32 () 1}. No augmentation (the paper lists none for this task).

Sources (`len(source)`, `source[i] -> record`):
- `SyntheticClips`: offline clips with structure to learn; see `render_synthetic_clip`.
- `clip_folder(root)`: users' clips in one of two layouts, each clip exactly the model's size:
  * .npz, one file per clip: `root/**/<clip>.npz` holding arrays `image`, `audio` and `label`.
  * .npy, one folder per modality: `root/image/<clip>.npy`, `root/audio/<clip>.npy`,
    `root/label/<clip>.npy` (same names; <clip> may contain sub-folders). Chosen when `root` has any of the
    folders image/, audio/, label/.
  Arrays: image (T, H, W, 3) RGB, channels last, uint8 in [0, 255] or float in [0, 1]; audio (N,) or (N, 1)
  mono, N = T * audio_samples_per_frame, int16 (divided by 2**15) or float in [-1, 1]; label one integer in
  [0, num_classes) (a 0-d or one-element integer array). Folders are checked when listed; each clip's
  arrays when the transform reads it (errors name the file and the array).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import zipfile
import zlib
from typing import Callable, Mapping, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.config import PerceiverConfig

MODALITIES = ("image", "audio", "label")
# App. I: loss = 0.03 * L1(video) + 1 * L1(audio) + 0.0001 * cross-entropy(label).
PAPER_LOSS_WEIGHTS = types.MappingProxyType({"image": 0.03, "audio": 1.0, "label": 1e-4})
INT16_SCALE = 2.0**15

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """The clips a model takes: `num_frames` RGB frames of `image_size` (height, width), with
    `audio_samples_per_frame` mono audio samples per frame, labelled with one of `num_classes` classes."""

    num_frames: int
    image_size: tuple[int, int]
    audio_samples_per_frame: int
    num_classes: int

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(self.image_size))
        for name in ("num_frames", "audio_samples_per_frame", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ClipSpec.{name} must be a positive integer, got {value!r}.")
        if len(self.image_size) != 2 or any(not isinstance(d, int) or d <= 0 for d in self.image_size):
            raise ValueError(f"ClipSpec.image_size must be (height, width) > 0, got {self.image_size!r}.")

    @property
    def num_samples(self) -> int:
        """Audio samples per clip."""
        return self.num_frames * self.audio_samples_per_frame

    @classmethod
    def from_config(cls, config: PerceiverConfig) -> ClipSpec:
        """The clips `PerceiverForMultimodalAutoencoding(config)` autoencodes.

        Raises ValueError when the decoded video grid `output_shape[1:]` is not the clip's (T, H, W): the
        reconstruction would not line up with the input it is compared with.
        """
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        grid = (config.num_frames, height, width)
        if tuple(config.output_shape[1:]) != grid:
            raise ValueError(
                f"PerceiverConfig.output_shape[1:]={tuple(config.output_shape[1:])} must equal (num_frames, "
                f"*image_size)={grid} to autoencode: the decoded video is compared with the input clip."
            )
        return cls(config.num_frames, (height, width), config.audio_samples_per_frame, config.num_labels)


# ---------------------------------------------------------------------------------------------------------
# Records: a clip's location; `load()` reads its raw arrays, `origin(modality)` names them in errors.


class ClipRecord(Protocol):
    """What `ClipTransform` reads: `load()` -> raw arrays {'image', 'audio', 'label'}; `origin(m)` names
    where modality m's array comes from."""

    def load(self) -> dict[str, np.ndarray]: ...

    def origin(self, modality: str) -> str: ...


# What `np.load` raises for a file that is not valid NumPy data (after FileNotFoundError, an OSError too).
_CORRUPT = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class NpzClip(NamedTuple):
    """A clip stored as one .npz file holding the arrays 'image', 'audio' and 'label'."""

    path: str

    def origin(self, modality: str) -> str:
        return f"{self.path} (array {modality!r})"

    def load(self) -> dict[str, np.ndarray]:
        try:
            npz = np.load(self.path, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("it holds one array (.npy data), not named arrays")
            with npz:
                names = sorted(npz.files)
                arrays = {m: npz[m] for m in MODALITIES if m in names}
        except FileNotFoundError:
            raise
        except _CORRUPT as e:
            raise ValueError(f"{self.path} is not a readable .npz file: {e}.") from e
        missing = [m for m in MODALITIES if m not in arrays]
        if missing:
            raise ValueError(
                f"{self.path} lacks the array(s) {missing} (it has {names}); every .npz clip needs the "
                f"arrays {list(MODALITIES)}."
            )
        return arrays


class NpyClip(NamedTuple):
    """A clip stored as `root/image/<name>.npy`, `root/audio/<name>.npy` and `root/label/<name>.npy`."""

    root: str
    name: str

    def origin(self, modality: str) -> str:
        return os.path.join(self.root, modality, f"{self.name}.npy")

    def load(self) -> dict[str, np.ndarray]:
        return {m: _read_npy(self.origin(m)) for m in MODALITIES}


def _read_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except _CORRUPT as e:
        raise ValueError(f"{path} is not a readable .npy file: {e}.") from e
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} is an .npz archive; the .npy layout needs one array per file.")
    return array


class SyntheticClip(NamedTuple):
    """Clip `index` of the synthetic set `seed` (see `render_synthetic_clip`)."""

    spec: ClipSpec
    seed: int
    index: int

    def origin(self, modality: str) -> str:
        return f"synthetic clip {self.index} (seed {self.seed}) {modality}"

    def load(self) -> dict[str, np.ndarray]:
        return render_synthetic_clip(self.spec, self.seed, self.index)


# ---------------------------------------------------------------------------------------------------------
# Raw arrays -> example.


def _video(image: np.ndarray, spec: ClipSpec, where: str) -> np.ndarray:
    """(T, H, W, 3) uint8 or float in [0, 1] -> float32 in [0, 1]; raises unless the shape is spec's."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(
            f"{where}: the video must be (frames, height, width, 3) RGB, channels last; got shape "
            f"{image.shape}."
        )
    if image.shape[0] != spec.num_frames:
        raise ValueError(
            f"{where}: the video has {image.shape[0]} frames, but the model takes num_frames="
            f"{spec.num_frames}; cut clips to {spec.num_frames} frames."
        )
    if image.shape[1:3] != spec.image_size:
        raise ValueError(
            f"{where}: frames are {image.shape[1]}x{image.shape[2]} (height x width), but the model takes "
            f"image_size={spec.image_size}; resize the frames."
        )
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"{where}: video dtype {image.dtype} is not uint8 (0..255) or float (0..1).")
    low, high = float(image.min()), float(image.max())
    if not (low >= 0 and high <= 1):
        raise ValueError(
            f"{where}: float video values must lie in [0, 1], got [{low}, {high}]; store uint8 or divide "
            "by 255."
        )
    return image.astype(np.float32)


def _audio(audio: np.ndarray, spec: ClipSpec, where: str) -> np.ndarray:
    """(N,) or (N, 1) int16 or float in [-1, 1] -> float32 (N, 1) in [-1, 1]; N must be spec.num_samples."""
    if audio.ndim == 2 and audio.shape[1] == 1:
        audio = audio[:, 0]
    elif audio.ndim != 1:
        raise ValueError(
            f"{where}: audio must be mono, (samples,) or (samples, 1); got shape {audio.shape} (of stereo, "
            "keep one channel: DeepMind's colab keeps channel 0)."
        )
    if len(audio) != spec.num_samples:
        raise ValueError(
            f"{where}: the clip lengths do not match: the video's {spec.num_frames} frames need "
            f"{spec.num_samples} audio samples ({spec.audio_samples_per_frame} per frame), the audio has "
            f"{len(audio)}."
        )
    if audio.dtype == np.int16:
        return (audio.astype(np.float32) / INT16_SCALE)[:, None]
    if not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"{where}: audio dtype {audio.dtype} is not int16 or float (-1..1).")
    low, high = float(audio.min()), float(audio.max())
    if not (low >= -1 and high <= 1):
        raise ValueError(
            f"{where}: float audio samples must lie in [-1, 1], got [{low}, {high}]; store int16 or rescale."
        )
    return audio.astype(np.float32)[:, None]


def _label(label: np.ndarray, num_classes: int, where: str) -> int:
    """One integer class id in [0, num_classes)."""
    label = np.asarray(label)
    if label.size != 1 or not np.issubdtype(label.dtype, np.integer):
        raise TypeError(
            f"{where}: the label must be one integer class id; got a {label.dtype} array of shape "
            f"{label.shape}."
        )
    value = int(label.reshape(()))
    if not 0 <= value < num_classes:
        raise ValueError(
            f"{where}: label {value} is out of range [0, {num_classes}) (num_labels={num_classes})."
        )
    return value


def to_example(arrays: Mapping[str, np.ndarray], spec: ClipSpec, origin: Callable[[str], str]) -> Example:
    """A clip's raw arrays {'image', 'audio', 'label'} (shapes and ranges in the module docstring) ->
    example; raises ValueError / TypeError naming `origin(modality)` for an array that does not fit spec."""
    image = _video(arrays["image"], spec, origin("image"))
    audio = _audio(arrays["audio"], spec, origin("audio"))
    label = _label(arrays["label"], spec.num_classes, origin("label"))
    return {
        "image": image,
        "audio": audio,
        "label": np.eye(spec.num_classes, dtype=np.float32)[label],
        "targets": np.asarray(label, np.int32),
        "weights": np.asarray(1.0, np.float32),
    }


@dataclasses.dataclass(frozen=True)
class ClipTransform:
    """record -> example (module docstring), the train and the eval transform alike: there is no
    augmentation, so `rng` (the train-transform interface) is unused."""

    spec: ClipSpec

    def __call__(self, record: ClipRecord, rng: np.random.Generator | None = None) -> Example:
        return to_example(record.load(), self.spec, record.origin)


# ---------------------------------------------------------------------------------------------------------
# Sources.


@dataclasses.dataclass(frozen=True)
class ClipSource:
    """Random-access source of clip files (`NpzClip` or `NpyClip` records), in name order."""

    records: tuple[NpzClip | NpyClip, ...]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> NpzClip | NpyClip:
        return self.records[index]


def _files(folder: str, extension: str) -> dict[str, str]:
    """Name (path relative to `folder` without `extension`, '/'-separated) -> path of every file ending in
    `extension` under `folder`, recursively, sorted by name; hidden files and folders are skipped."""
    found = {}
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in names:
            if name.endswith(extension) and not name.startswith("."):
                path = os.path.join(directory, name)
                found[os.path.relpath(path, folder)[: -len(extension)].replace(os.sep, "/")] = path
    return dict(sorted(found.items()))


def _preview(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > limit else shown


def _npz_clips(root: str) -> ClipSource:
    paths = _files(root, ".npz")
    if not paths:
        raise ValueError(
            f"No clips in {root!r}: expected {root}/<clip>.npz files (arrays image, audio, label) or the "
            f".npy layout {root}/image/<clip>.npy, {root}/audio/<clip>.npy, {root}/label/<clip>.npy."
        )
    return ClipSource(tuple(NpzClip(path) for path in paths.values()))


def _npy_clips(root: str) -> ClipSource:
    folders = {m: os.path.join(root, m) for m in MODALITIES}
    absent = [f for f in folders.values() if not os.path.isdir(f)]
    if absent:
        raise ValueError(
            f"{root!r} has the .npy layout but no folder {_preview(absent)}; the layout needs "
            f"{root}/image, {root}/audio and {root}/label, each holding <clip>.npy files."
        )
    names = {m: _files(folder, ".npy") for m, folder in folders.items()}
    clips = sorted(set().union(*names.values()))
    if not clips:
        raise ValueError(f"No clips in {root!r}: its image/, audio/ and label/ folders hold no .npy files.")
    missing = [os.path.join(folders[m], f"{c}.npy") for c in clips for m in MODALITIES if c not in names[m]]
    if missing:
        raise ValueError(
            f"Clips in {root!r} lack a modality: there is no {_preview(missing)}. Every clip needs "
            "image/<clip>.npy, audio/<clip>.npy and label/<clip>.npy."
        )
    return ClipSource(tuple(NpyClip(root, c) for c in clips))


def clip_folder(root: str) -> ClipSource:
    """The clips under `root`, in the .npy layout when `root` has a folder image/, audio/ or label/, else
    in the .npz layout (module docstring).

    Raises:
      FileNotFoundError: `root` is not a folder.
      ValueError: no clips; in the .npy layout, a modality folder missing or a clip lacking a file.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Clip folder {root!r} does not exist (or is not a folder).")
    if any(os.path.isdir(os.path.join(root, m)) for m in MODALITIES):
        return _npy_clips(root)
    return _npz_clips(root)


# ---------------------------------------------------------------------------------------------------------
# Synthetic clips.

SHAPES = ("disc", "square", "triangle", "ring", "plus", "diamond")
SHAPE_SIZE = 0.15  # half-size of a shape / the shorter image side
MIN_IMAGE_SIDE = 8  # a shape covers at least one pixel
TONE_AMPLITUDE = 0.5
MAX_BACKGROUND = 0.6  # a clip's background is grey, of a level uniform in [0, MAX_BACKGROUND)


def tone_cycles(spec: ClipSpec, label: int) -> int:
    """Whole cycles of class `label`'s tone per clip: (label + 1) * (num_samples // (4 * num_classes)),
    distinct FFT bins for all classes, all below half the Nyquist bin."""
    return (label + 1) * (spec.num_samples // (4 * spec.num_classes))


def class_colour(label: int, num_classes: int) -> np.ndarray:
    """float32 (3,) RGB of full saturation and value at hue label / num_classes (class 0: red)."""
    hue = label / num_classes
    return np.clip(np.abs((6 * hue + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1).astype(np.float32)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, size: float) -> np.ndarray:
    """Pixels whose offsets (dy, dx) from a shape's centre fall in the shape of half-size `size`."""
    ady, adx, r = np.abs(dy), np.abs(dx), np.hypot(dy, dx)
    if shape == "disc":
        return r <= size
    if shape == "square":
        return np.maximum(ady, adx) <= 0.8 * size
    if shape == "triangle":  # equilateral, apex up, inscribed in the disc
        return (dy <= 0.5 * size) & (adx <= (dy + size) / math.sqrt(3))
    if shape == "ring":
        return (r <= size) & (r >= 0.5 * size)
    if shape == "plus":
        return (np.minimum(ady, adx) <= size / 3) & (np.maximum(ady, adx) <= size)
    return ady + adx <= size  # diamond


def render_synthetic_clip(spec: ClipSpec, seed: int, index: int) -> dict[str, np.ndarray]:
    """Clip `index` of synthetic set `seed`, deterministic given (seed, index).

    Its class is `index % num_classes`. The class fixes the shape (`SHAPES[class % 6]`), its colour
    (`class_colour`) and the pitch of a sine tone (`tone_cycles`). Random per clip: the shape circles an
    orbit (centre, radius, start angle, direction; less than half a turn per clip, so it is somewhere else
    in every frame) on a grey background of random level, and the tone's phase.

    Returns raw arrays: 'image' float32 (T, H, W, 3) in [0, 1], 'audio' float32 (T * S_f,) in [-0.5, 0.5],
    'label' int64 ().
    """
    label = index % spec.num_classes
    rng = np.random.default_rng([seed, index])
    extent = np.array(spec.image_size, np.float64)
    side = extent.min()
    size, radius = SHAPE_SIZE * side, rng.uniform(0.1, 0.25) * side
    centre = extent / 2 + rng.uniform(-1, 1, 2) * np.maximum(0, extent / 2 - radius - size)
    step = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1) * np.pi / spec.num_frames  # radians per frame
    angles = rng.uniform(0, 2 * np.pi) + step * np.arange(spec.num_frames)
    cy, cx = centre[0] + radius * np.sin(angles), centre[1] + radius * np.cos(angles)
    dy = (np.arange(spec.image_size[0]) + 0.5)[None, :, None] - cy[:, None, None]
    dx = (np.arange(spec.image_size[1]) + 0.5)[None, None, :] - cx[:, None, None]
    mask = _shape_mask(SHAPES[label % len(SHAPES)], dy, dx, size)
    background = rng.uniform(0, MAX_BACKGROUND)
    image = np.where(mask[..., None], class_colour(label, spec.num_classes), background)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(spec.num_samples) / spec.num_samples
    audio = TONE_AMPLITUDE * np.sin(2 * np.pi * tone_cycles(spec, label) * t + phase)
    return {"image": image.astype(np.float32), "audio": audio.astype(np.float32), "label": np.asarray(label)}


@dataclasses.dataclass(frozen=True)
class SyntheticClips:
    """Random-access source of `num_clips` synthetic clips of shape `spec` (`SyntheticClip` records)."""

    spec: ClipSpec
    num_clips: int
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.num_clips, int) or self.num_clips <= 0:
            raise ValueError(f"SyntheticClips.num_clips must be a positive integer, got {self.num_clips!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"SyntheticClips.seed must be a non-negative integer, got {self.seed!r}.")
        if self.spec.num_samples < 4 * self.spec.num_classes:
            raise ValueError(
                f"Synthetic clips of {self.spec.num_samples} audio samples cannot give "
                f"{self.spec.num_classes} classes distinct tones: they need num_samples >= 4 * num_classes "
                f"= {4 * self.spec.num_classes}."
            )
        if min(self.spec.image_size) < MIN_IMAGE_SIDE:
            raise ValueError(
                f"Synthetic clips need frames of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got "
                f"image_size={self.spec.image_size}."
            )

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> SyntheticClip:
        return SyntheticClip(self.spec, self.seed, range(self.num_clips)[index])


# ---------------------------------------------------------------------------------------------------------
# Training helpers.


def output_grids(config: PerceiverConfig) -> dict[str, tuple[int, ...]]:
    """The decoder's output grids that subsampled points index: 'image' (T, H, W) = output_shape[1:],
    'audio' (number of audio tokens,) = (num_frames * audio_samples_per_frame / samples_per_patch,)."""
    tokens, rest = divmod(config.num_frames * config.audio_samples_per_frame, config.samples_per_patch)
    if rest:
        raise ValueError(
            f"num_frames * audio_samples_per_frame = {config.num_frames * config.audio_samples_per_frame} "
            f"is not a multiple of samples_per_patch={config.samples_per_patch}."
        )
    return {"image": tuple(config.output_shape[1:]), "audio": (tokens,)}


def subsampled_targets(
    image: jax.Array, audio: jax.Array, points: Mapping[str, jax.Array], samples_per_patch: int
) -> dict[str, jax.Array]:
    """The input values at the decoded points, laid out as `PerceiverForMultimodalAutoencoding`'s outputs.

    Args:
      image: video (B, T, H, W, C); audio: (B, N, 1); points: {'image': (O_image,) flat indices into
        (T, H, W), 'audio': (O_audio,) indices of audio tokens of `samples_per_patch` samples}.

    Returns:
      {'image': (B, O_image, C), 'audio': (B, O_audio * samples_per_patch)}.
    """
    batch = image.shape[0]
    if audio.shape[1] % samples_per_patch:
        raise ValueError(
            f"audio length {audio.shape[1]} is not a multiple of samples_per_patch={samples_per_patch}."
        )
    pixels = jnp.reshape(image, (batch, -1, image.shape[-1]))
    tokens = jnp.reshape(audio, (batch, -1, samples_per_patch))
    return {
        "image": jnp.take(pixels, points["image"], axis=1),
        "audio": jnp.reshape(jnp.take(tokens, points["audio"], axis=1), (batch, -1)),
    }


def psnr(prediction: jax.Array | np.ndarray, target: jax.Array | np.ndarray, max_value: float) -> jax.Array:
    """Peak signal-to-noise ratio per example in dB, 10 log10(max_value**2 / MSE), the mean squared error
    over all but the first (batch) axis; +inf where prediction equals target.

    Args:
      prediction, target: (B, ...) arrays (numpy or jax) of the same shape.
      max_value: the signal's peak value (module docstring: 1 for video in [0, 1] and audio in [-1, 1]).

    Returns:
      float32 (B,).
    """
    prediction, target = jnp.asarray(prediction, jnp.float32), jnp.asarray(target, jnp.float32)
    if prediction.shape != target.shape or prediction.ndim == 0:
        raise ValueError(
            f"psnr needs prediction and target of one shape (batch, ...); got {prediction.shape} and "
            f"{target.shape} (reshape the model's output to the target's shape)."
        )
    if not max_value > 0:
        raise ValueError(f"psnr max_value must be positive, got {max_value!r}.")
    mse = jnp.mean(jnp.square(prediction - target), axis=tuple(range(1, prediction.ndim)))
    return 10 * jnp.log10(max_value**2 / mse)
