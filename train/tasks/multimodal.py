"""Multimodal autoencoding, the training DeepMind never released: `PerceiverForMultimodalAutoencoding` on
clips of video, audio and a label, each reconstructed.

Recipe (Perceiver IO, Sec. 4.3 and App. I; see `train.data.multimodal`): loss 0.03 x L1(video) + 1 x
L1(audio) + 0.0001 x cross-entropy(label) (`config.data.loss_weights`), on 512 video pixels and 512
audio tokens sampled per step (`config.data.num_points`; one set for the whole batch, as the decoder
takes it), the label input masked half the time in training (`config.data.label_mask_prob`; the model
config keeps HF's 1.0, so evaluation and the exported model classify from video and audio alone).

Data: `config.data.root` empty: synthetic clips (moving shapes whose class sets the shape, colour and the
pitch of a tone; offline), else a clip folder (`train.data.multimodal.clip_folder`: .npz per clip, or
.npy per modality) and `config.data.eval_root`. Metrics: L1s, label top-1 and video / audio PSNR on
the decoded points, against the PSNR of the mean frame of the batch's clips (the baseline, which does not
see the clip, like zero flow for optical flow; `clip_mean_psnr` is that of each clip's own mean frame, an
oracle that does); at each eval `report`
reconstructs `config.data.num_report_clips` clips at full resolution, streamed in chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from perceiver_jax import PerceiverConfig
from train.data import multimodal
from train.tasks import TASKS, Config, Data, Task

MODALITIES = ("image", "audio")


def _data(config: Config, model_config: PerceiverConfig, workdir: str) -> Data:
    spec = multimodal.ClipSpec.from_config(model_config)
    if config.data.root:
        train = multimodal.clip_folder(config.data.root)
        held_out = multimodal.clip_folder(config.data.eval_root or config.data.root)
    else:
        train = multimodal.SyntheticClips(spec, config.data.num_train_clips, seed=1)
        held_out = multimodal.SyntheticClips(spec, config.data.num_eval_clips, seed=2)
    transform = multimodal.ClipTransform(spec)
    return Data(train, held_out, transform, transform)


def _example(config: Config, model_config: PerceiverConfig) -> dict[str, np.ndarray]:
    spec = multimodal.ClipSpec.from_config(model_config)
    return dict(
        image=np.zeros((spec.num_frames, *spec.image_size, 3), np.float32),
        audio=np.zeros((spec.num_samples, 1), np.float32),
        label=np.zeros((spec.num_classes,), np.float32),
        targets=np.int32(0),
        weights=np.float32(1),
    )


def _points(rng: jax.Array, config: Config, model_config: PerceiverConfig) -> dict[str, jax.Array]:
    """`config.data.num_points` distinct flat indices per modality's output grid, drawn with `rng`."""
    grids, points = multimodal.output_grids(model_config), {}
    for name, key in zip(MODALITIES, jax.random.split(rng)):
        size = int(np.prod(grids[name]))
        count = min(config.data.num_points[name], size)
        points[name] = jax.random.choice(key, size, (count,), replace=False).astype(jnp.int32)
    return points


def _prepare(batch, rng, config: Config, model_config: PerceiverConfig):
    """The clip's modalities and a set of output points (training: drawn with `rng`; eval: a fixed set);
    the targets at those points, and at the video points the mean frame of the batch's clips (the
    baseline) and each clip's own mean frame."""
    points = _points(jax.random.key(0) if rng is None else rng, config, model_config)
    targets = multimodal.subsampled_targets(
        batch["image"], batch["audio"], points, model_config.samples_per_patch
    )
    video, weights = batch["image"], batch["weights"].reshape(-1, 1, 1, 1, 1)
    batch_mean = jnp.sum(video * weights, axis=(0, 1), keepdims=True) / jnp.maximum(
        jnp.sum(weights) * video.shape[1], 1e-6
    )
    frame_points = points["image"] % (video.shape[2] * video.shape[3])  # a point's pixel in its frame

    def frame_at_points(frames):  # (b, 1, H, W, C) -> (B, O_image, C)
        pixels = jnp.take(frames.reshape(frames.shape[0], -1, video.shape[-1]), frame_points, axis=1)
        return jnp.broadcast_to(pixels, targets["image"].shape)

    batch = {**batch, "image_targets": targets["image"], "audio_targets": targets["audio"]}
    batch["image_baseline"] = frame_at_points(batch_mean)
    batch["image_clip_mean"] = frame_at_points(video.mean(axis=1, keepdims=True))
    kwargs = {
        "inputs": {name: batch[name] for name in ("image", "audio", "label")},
        "subsampled_output_points": points,
    }
    return kwargs, {} if rng is None else {"masking": rng}, batch


def _loss(outputs, batch, config: Config, train: bool):
    weights, w = batch["weights"], config.data.loss_weights
    l1_image = jnp.abs(outputs["image"] - batch["image_targets"]).mean(axis=(1, 2))
    l1_audio = jnp.abs(outputs["audio"] - batch["audio_targets"]).mean(axis=1)
    cross_entropy = optax.softmax_cross_entropy(outputs["label"], batch["label"])
    loss = w["image"] * l1_image + w["audio"] * l1_audio + w["label"] * cross_entropy
    correct = jnp.argmax(outputs["label"], -1) == batch["targets"]
    return dict(
        loss=jnp.sum(loss * weights),
        weight=jnp.sum(weights),
        image_l1=jnp.sum(l1_image * weights),
        audio_l1=jnp.sum(l1_audio * weights),
        correct=jnp.sum(correct * weights),
        image_psnr=jnp.sum(multimodal.psnr(outputs["image"], batch["image_targets"], 1.0) * weights),
        audio_psnr=jnp.sum(multimodal.psnr(outputs["audio"], batch["audio_targets"], 1.0) * weights),
        baseline_psnr=jnp.sum(
            multimodal.psnr(batch["image_baseline"], batch["image_targets"], 1.0) * weights
        ),
        clip_mean_psnr=jnp.sum(
            multimodal.psnr(batch["image_clip_mean"], batch["image_targets"], 1.0) * weights
        ),
    )


def _summarize(sums) -> dict[str, float]:
    weight = max(float(sums["weight"]), 1.0)
    summary = {name: float(value) / weight for name, value in sums.items() if name != "weight"}
    summary["accuracy"] = summary.pop("correct")
    summary["baseline"] = summary.pop("baseline_psnr")
    return summary


def _train_model_config(config: Config, model_config: PerceiverConfig) -> PerceiverConfig:
    """Training masks the label input with `config.data.label_mask_prob` (the paper's 0.5)."""
    return model_config.replace(multimodal_label_mask_prob=config.data.label_mask_prob)


def _report(
    model, variables, data: Data, config: Config, model_config: PerceiverConfig, workdir: str, step: int
):
    """Full-resolution reconstruction (every point, streamed in chunks) of the first eval clips: video and
    audio PSNR, label accuracy, and the video PSNR of the mean frame of these clips (the baseline)."""
    apply = jax.jit(lambda v, inputs: model.apply(v, inputs))
    count = min(config.data.num_report_clips, len(data.eval))
    examples = [
        jax.tree.map(lambda x: x[None], data.eval_transform(data.eval[i], None)) for i in range(count)
    ]
    if not examples:
        return {}
    mean_frame = np.mean([e["image"].mean(axis=(0, 1)) for e in examples], axis=0)  # (H, W, C)
    totals = {}
    for example in examples:
        inputs = {name: jnp.asarray(example[name]) for name in ("image", "audio", "label")}
        outputs = apply(variables, inputs)
        video = outputs["image"].reshape(example["image"].shape)
        values = {
            "full_video_psnr": multimodal.psnr(video, example["image"], 1.0),
            "full_audio_psnr": multimodal.psnr(outputs["audio"], example["audio"][..., 0], 1.0),
            "full_label_accuracy": jnp.argmax(outputs["label"], -1) == example["targets"],
            "full_mean_frame_psnr": multimodal.psnr(
                np.broadcast_to(mean_frame, video.shape), example["image"], 1.0
            ),
        }
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + float(value[0])
    return {name: value / count for name, value in totals.items()}


TASKS["multimodal_autoencoding"] = Task(
    "PerceiverForMultimodalAutoencoding", _data, _example, _prepare, _loss, _summarize, headline="image_psnr",
    headline_name="video PSNR (dB)", baseline_name="mean-frame PSNR", report=_report,
    train_model_config=_train_model_config,
)  # fmt: skip
