"""Image classification with the three HF image heads, on an image folder or the offline digits.

Tasks 'image_learned', 'image_fourier' and 'image_conv' train `PerceiverForImageClassification{Learned,
Fourier,ConvProcessing}` on `config.data.train_dir` (the image-folder layout, `root/<class>/<image>`;
`eval_dir` or a held-out `eval_fraction`), or, with an empty `train_dir`, on scikit-learn's digits (1797
8x8 digits, shipped with scikit-learn: the offline demo set). Images are cropped, augmented and resized
to `model.image_size` on the host (`train.data.images`: DeepMind's random resized crop, flip,
RandAugment); MixUp and CutMix mix the global batch on the device. Metrics: top-1 and top-5 accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax import PerceiverConfig
from train.data import augment, images
from train.tasks import TASKS, Config, Data, Task, classification_sums, classification_summary


def _image_size(model_config: PerceiverConfig) -> int:
    height, width = model_config.image_hw
    if height != width:
        raise ValueError(f"image training uses square images; model.image_size={model_config.image_size}.")
    return height


def _data(config: Config, model_config: PerceiverConfig, workdir: str) -> Data:
    size = _image_size(model_config)
    if config.data.train_dir:
        train, held_out = images.image_folder_splits(
            config.data.train_dir, config.data.eval_dir or None, config.data.eval_fraction
        )
    else:
        train, held_out = images.digits_splits()
    crop_area = (config.data.crop_area_min, 1.0)
    train_transform = images.ImageTrainTransform(
        size, config.data.randaugment_layers, config.data.randaugment_magnitude, crop_area, config.data.flip
    )
    return Data(train, held_out, train_transform, images.ImageEvalTransform(size), labels=train.class_names)


def _example(config: Config, model_config: PerceiverConfig) -> dict[str, np.ndarray]:
    size = _image_size(model_config)
    return dict(inputs=np.zeros((size, size, 3), np.float32), targets=np.int32(0), weights=np.float32(1))


def _prepare(batch, rng, config: Config, model_config: PerceiverConfig):
    """MixUp / CutMix of the (global) training batch into soft `labels` `(B, K)`; eval: unchanged."""
    if rng is not None and (config.data.mixup_alpha or config.data.cutmix_alpha):
        labels = jax.nn.one_hot(batch["targets"], model_config.num_labels)
        mixed, labels = augment.mix_batch(
            rng, batch["inputs"], labels, config.data.mixup_alpha or None, config.data.cutmix_alpha or None
        )
        batch = {**batch, "inputs": mixed, "labels": labels}
    return {"inputs": batch["inputs"]}, {}, batch


def _loss(logits, batch, config: Config, train: bool):
    sums = classification_sums(logits, batch, config.label_smoothing if train else 0.0, batch.get("labels"))
    top5 = augment.topk_correct(logits, batch["targets"], min(5, logits.shape[-1]))
    sums["correct_top5"] = jnp.sum(top5 * batch["weights"])
    return sums


for _name, _head in (
    ("image_learned", "PerceiverForImageClassificationLearned"),
    ("image_fourier", "PerceiverForImageClassificationFourier"),
    ("image_conv", "PerceiverForImageClassificationConvProcessing"),
):
    TASKS[_name] = Task(
        head=_head,
        data=_data,
        example=_example,
        prepare=_prepare,
        loss=_loss,
        summarize=classification_summary,
    )
