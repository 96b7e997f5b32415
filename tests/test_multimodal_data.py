"""Multimodal autoencoding data: synthetic clips, .npz / .npy clip folders, PSNR, output subsampling."""

from __future__ import annotations

import colorsys
import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_dims

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.heads import PerceiverForMultimodalAutoencoding
from train.data.multimodal import (
    ClipSpec,
    MAX_BACKGROUND,
    ClipTransform,
    SyntheticClips,
    clip_folder,
    output_grids,
    psnr,
    subsampled_targets,
)

SPEC = ClipSpec(num_frames=4, image_size=(32, 40), audio_samples_per_frame=32, num_classes=5)
NUM_SAMPLES = 4 * 32
TRANSFORM = ClipTransform(SPEC)
# A model of SPEC's clips: 4 x 32 x 40 video, 128 audio samples in tokens of 16, 5 classes.
CONFIG = PerceiverConfig(**tiny_dims(
    num_latents=8, d_model=32, num_self_attends_per_block=1, num_labels=5, num_frames=4,
    audio_samples_per_frame=32, samples_per_patch=16, image_size=(32, 40), output_shape=(1, 4, 32, 40),
    output_num_channels=16, _label_trainable_num_channels=16,
))  # fmt: skip


def _clip(label: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid raw arrays of a SPEC clip: uint8 video, int16 audio (N,), an int label."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (4, 32, 40, 3), dtype=np.uint8),
        "audio": rng.integers(-(2**15), 2**15, NUM_SAMPLES, dtype=np.int16),
        "label": np.asarray(label),
    }


def _write_npy_layout(root, clips: dict[str, dict[str, np.ndarray]]) -> None:
    for name, arrays in clips.items():
        for modality, array in arrays.items():
            path = os.path.join(root, modality, f"{name}.npy")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, array)


# --- Synthetic clips.


def test_synthetic_clips_are_deterministic_and_well_formed():
    source = SyntheticClips(SPEC, num_clips=10, seed=3)
    examples = [TRANSFORM(source[i]) for i in range(len(source))]
    again = TRANSFORM(SyntheticClips(SPEC, num_clips=10, seed=3)[7])
    for key, value in examples[7].items():
        np.testing.assert_array_equal(value, again[key])
    assert not np.array_equal(TRANSFORM(SyntheticClips(SPEC, 10, seed=4)[7])["image"], examples[7]["image"])
    assert not np.array_equal(examples[7]["image"], examples[2]["image"])  # same class, another clip
    expected = {
        "image": ((4, 32, 40, 3), np.float32),
        "audio": ((NUM_SAMPLES, 1), np.float32),
        "label": ((5,), np.float32),
        "targets": ((), np.int32),
        "weights": ((), np.float32),
    }
    for i, example in enumerate(examples):
        assert {k: (v.shape, v.dtype) for k, v in example.items()} == expected
        assert example["targets"] == i % 5
        np.testing.assert_array_equal(example["label"], np.eye(5)[i % 5])
        assert example["weights"] == 1.0
        assert 0 <= example["image"].min() and example["image"].max() <= 1
        assert np.abs(example["audio"]).max() <= 1
    assert source[-1] == source[9]
    with pytest.raises(IndexError):
        source[10]


def test_synthetic_class_is_recoverable_and_the_shape_moves():
    source = SyntheticClips(SPEC, num_clips=10, seed=0)
    # 128 samples, 5 classes: tones at (class + 1) * (128 // 20) = 6, 12, 18, 24, 30 cycles per clip.
    tone_bins = [6, 12, 18, 24, 30]
    for i in range(len(source)):
        example = TRANSFORM(source[i])
        label = int(example["targets"])
        spectrum = np.abs(np.fft.rfft(example["audio"][:, 0]))
        assert np.argmax(spectrum) == tone_bins[label]
        video = example["image"]
        lit = video.max(axis=-1) > video.min(axis=-1)  # the colours are saturated, the background grey
        assert 0 <= video[~lit].min() == video[~lit].max() < MAX_BACKGROUND
        assert lit.reshape(4, -1).sum(axis=1).min() > 0, "the shape is in every frame"
        np.testing.assert_allclose(
            video[lit], np.broadcast_to(colorsys.hsv_to_rgb(label / 5, 1, 1), (lit.sum(), 3))
        )
        ys, xs = np.mgrid[0:32, 0:40]
        centroids = np.array([[ys[frame].mean(), xs[frame].mean()] for frame in lit])
        assert np.linalg.norm(np.diff(centroids, axis=0), axis=1).min() > 0.25


def test_synthetic_clips_reject_impossible_settings():
    with pytest.raises(ValueError, match="distinct tones"):
        SyntheticClips(ClipSpec(4, (32, 40), 32, 33), 10)
    with pytest.raises(ValueError, match="at least 8x8"):
        SyntheticClips(ClipSpec(4, (4, 40), 32, 5), 10)
    with pytest.raises(ValueError, match="num_clips"):
        SyntheticClips(SPEC, 0)


def test_sources_records_and_transform_are_picklable(tmp_path):
    np.savez(tmp_path / "a.npz", **_clip())
    for source in (SyntheticClips(SPEC, 4, seed=1), clip_folder(str(tmp_path))):
        source_copy, transform_copy = pickle.loads(pickle.dumps((source, TRANSFORM)))
        record = pickle.loads(pickle.dumps(source[0]))
        for key, value in TRANSFORM(source[0]).items():
            np.testing.assert_array_equal(transform_copy(source_copy[0])[key], value)
            np.testing.assert_array_equal(TRANSFORM(record)[key], value)


# --- Clip folders.


def _expected_example(arrays):
    return {
        "image": arrays["image"].astype(np.float32) / 255,
        "audio": arrays["audio"].astype(np.float32)[:, None] / 32768,
        "label": np.eye(5, dtype=np.float32)[int(arrays["label"])],
        "targets": np.int32(arrays["label"]),
        "weights": np.float32(1),
    }


def test_npz_and_npy_layouts_read_the_same_examples(tmp_path):
    clips = {"b": _clip(label=1, seed=1), "a": _clip(label=4, seed=2), "sub/c": _clip(label=0, seed=3)}
    npz_root, npy_root = tmp_path / "npz", tmp_path / "npy"
    for name, arrays in clips.items():
        os.makedirs(os.path.dirname(npz_root / f"{name}.npz"), exist_ok=True)
        np.savez_compressed(npz_root / f"{name}.npz", **arrays)
    _write_npy_layout(str(npy_root), clips)
    for root in (npz_root, npy_root):
        source = clip_folder(str(root))
        assert len(source) == 3
        for record, name in zip(source.records, ["a", "b", "sub/c"]):  # name order
            example, expected = TRANSFORM(record, np.random.default_rng(0)), _expected_example(clips[name])
            assert example.keys() == expected.keys()
            for key in expected:
                assert example[key].dtype == expected[key].dtype
                np.testing.assert_array_equal(example[key], expected[key])


def test_float_video_and_audio_pass_through(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (4, 32, 40, 3)).astype(np.float32)
    audio = rng.uniform(-1, 1, (NUM_SAMPLES, 1))
    np.savez(tmp_path / "clip.npz", image=image, audio=audio, label=np.array([2]))
    example = TRANSFORM(clip_folder(str(tmp_path))[0])
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["audio"], audio.astype(np.float32))
    assert example["targets"] == 2


@pytest.mark.parametrize(
    "modality, value, error, message",
    [
        ("image", np.zeros((3, 32, 40, 3), np.uint8), ValueError, "3 frames.*num_frames=4"),
        ("image", np.zeros((4, 32, 32, 3), np.uint8), ValueError, "32x32.*image_size=\\(32, 40\\)"),
        ("image", np.zeros((4, 32, 40, 4), np.uint8), ValueError, "RGB"),
        ("image", np.full((4, 32, 40, 3), 1.5, np.float32), ValueError, "\\[0, 1\\]"),
        ("image", np.zeros((4, 32, 40, 3), np.int32), TypeError, "int32"),
        ("audio", np.zeros((NUM_SAMPLES, 2), np.int16), ValueError, "mono"),
        ("audio", np.zeros(120, np.int16), ValueError, "lengths do not match.*128.*has 120"),
        ("audio", np.full(NUM_SAMPLES, 1.5), ValueError, "\\[-1, 1\\]"),
        ("audio", np.zeros(NUM_SAMPLES, np.int32), TypeError, "int32"),
        ("label", np.asarray(5), ValueError, "label 5 is out of range \\[0, 5\\)"),
        ("label", np.asarray(-1), ValueError, "label -1 is out of range"),
        ("label", np.asarray(2.0), TypeError, "integer"),
        ("label", np.asarray([1, 2]), TypeError, "integer"),
    ],
)
def test_clip_arrays_that_do_not_fit_the_model_are_named(tmp_path, modality, value, error, message):
    arrays = {**_clip(), modality: value}
    np.savez(tmp_path / "clip.npz", **arrays)
    _write_npy_layout(str(tmp_path / "npy"), {"clip": arrays})
    for root, where in (
        (tmp_path, f"clip.npz (array '{modality}')"),
        (tmp_path / "npy", f"{modality}/clip.npy"),
    ):
        with pytest.raises(error, match=message) as info:
            TRANSFORM(clip_folder(str(root))[0])
        assert where in str(info.value)


def test_npz_clip_missing_a_modality_names_file_and_key(tmp_path):
    arrays = _clip()
    del arrays["audio"]
    np.savez(tmp_path / "clip.npz", **arrays)
    with pytest.raises(ValueError, match=r"clip\.npz lacks the array\(s\) \['audio'\]"):
        TRANSFORM(clip_folder(str(tmp_path))[0])


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="broken.npz is not a readable .npz file"):
        TRANSFORM(clip_folder(str(tmp_path))[0])
    _write_npy_layout(str(tmp_path / "npy"), {"clip": _clip()})
    (tmp_path / "npy" / "audio" / "clip.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="audio/clip.npy is not a readable .npy file"):
        TRANSFORM(clip_folder(str(tmp_path / "npy"))[0])


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_folder(str(tmp_path / "nowhere"))
    (tmp_path / "README.txt").write_text("no clips here")
    with pytest.raises(ValueError, match="No clips"):
        clip_folder(str(tmp_path))
    npy = tmp_path / "npy"
    for modality in ("image", "audio", "label"):
        os.makedirs(npy / modality)
    with pytest.raises(ValueError, match="No clips"):
        clip_folder(str(npy))
    _write_npy_layout(str(npy), {"a": _clip(), "b": _clip()})
    os.remove(npy / "audio" / "b.npy")
    with pytest.raises(ValueError, match=r"lack a modality: there is no .*audio/b\.npy") as info:
        clip_folder(str(npy))
    assert "a.npy" not in str(info.value)
    os.rename(npy / "label", tmp_path / "labels")
    with pytest.raises(ValueError, match=r"no folder .*npy/label"):
        clip_folder(str(npy))


# --- The model config and training helpers.


def test_spec_and_output_grids_follow_the_config():
    assert ClipSpec.from_config(CONFIG) == SPEC
    assert ClipSpec.from_config(CONFIG.replace(image_size=32, output_shape=(1, 4, 32, 32))).image_size == (
        32,
        32,
    )
    assert output_grids(CONFIG) == {"image": (4, 32, 40), "audio": (8,)}
    with pytest.raises(ValueError, match="output_shape"):
        ClipSpec.from_config(CONFIG.replace(output_shape=(1, 4, 16, 40)))
    with pytest.raises(ValueError, match="samples_per_patch=48"):
        output_grids(CONFIG.replace(samples_per_patch=48))


def test_psnr_against_hand_computation():
    target = np.zeros((3, 4, 2), np.float32)
    prediction = np.stack([np.full((4, 2), 0.1), np.full((4, 2), 0.5), np.zeros((4, 2))])
    # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB; MSE 0.25 -> 10 log10(4) = 6.0206 dB; no error -> inf.
    np.testing.assert_allclose(psnr(prediction, target, 1.0), [20.0, 10 * math.log10(4), np.inf], rtol=1e-5)
    # Peak 2: +20 log10(2) dB.
    np.testing.assert_allclose(psnr(prediction[:2], target[:2], 2.0), [26.0206, 12.0412], rtol=1e-5)
    jitted = jax.jit(psnr, static_argnums=2)(jnp.asarray(prediction), jnp.asarray(target), 1.0)
    np.testing.assert_allclose(jitted, [20.0, 10 * math.log10(4), np.inf], rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        psnr(prediction.reshape(3, 8), target, 1.0)
    with pytest.raises(ValueError, match="positive"):
        psnr(prediction, target, 0.0)


def test_subsampled_targets_match_the_models_outputs():
    """Targets gathered by hand (unravelled (T, H, W) pixels, 16-sample audio tokens) line up with the
    model's outputs for the same points."""
    rng = np.random.default_rng(0)
    batch = [TRANSFORM(r) for r in SyntheticClips(SPEC, 2, seed=5)]
    inputs = {k: jnp.asarray(np.stack([e[k] for e in batch])) for k in ("image", "audio", "label")}
    grids = output_grids(CONFIG)
    points = {
        name: np.sort(rng.choice(int(np.prod(grids[name])), count, replace=False)).astype(np.int32)
        for name, count in (("image", 7), ("audio", 3))
    }
    targets = subsampled_targets(inputs["image"], inputs["audio"], points, CONFIG.samples_per_patch)
    video, audio = np.asarray(inputs["image"]), np.asarray(inputs["audio"])
    for b in range(2):
        for j, index in enumerate(points["image"]):
            t, y, x = np.unravel_index(index, (4, 32, 40))
            np.testing.assert_array_equal(targets["image"][b, j], video[b, t, y, x])
        expected_audio = np.concatenate([audio[b, 16 * i : 16 * (i + 1), 0] for i in points["audio"]])
        np.testing.assert_array_equal(targets["audio"][b], expected_audio)
    model = PerceiverForMultimodalAutoencoding(CONFIG)
    outputs = jax.eval_shape(
        lambda: model.apply(
            model.init(jax.random.key(0), inputs, subsampled_output_points=points),
            inputs,
            subsampled_output_points=points,
        )
    )
    for name in ("image", "audio"):
        assert outputs[name].shape == targets[name].shape
