"""Shared by the three ImageNet configs (`imagenet_learned.py`, `imagenet_fourier.py`, `imagenet_conv.py`):
DeepMind's Perceiver IO ImageNet recipe, on an ImageNet folder in the image-folder layout.

Recipe (Perceiver IO, App. A.1; deepmind-research `perceiver/train/experiment.py`): 110 epochs of batch
1024 (1,281,167 images: 137,625 steps) on 64 TPUs; LAMB (clip 10, Adam(0.9, 0.999, 1e-6), weight decay
0.1 off biases and norm scales, trust ratio), learning rate 5e-4 x batch / 256 = 2e-3, constant for half
the steps then cosine to 0, no warmup; label smoothing 0.1; no dropout; random resized (Inception) crop
and flip, RandAugment (4 layers, magnitude 5), MixUp 0.2 on half of each batch and CutMix on the other
half; eval: centre crop of 224 / 256 of the shorter side (Hugging Face's `PerceiverImageProcessor`).

Point the data at your copy:
--config.data.train_dir=/data/imagenet/train --config.data.eval_dir=/data/imagenet/val.
Expected result: not measured here (ImageNet is not available offline and a step is far beyond a 2-core
CPU); `configs/digits_tiny.py` trains the same task and head code on a CPU.
"""

import ml_collections

from configs import default
from perceiver_jax.official import ARCHITECTURES

HUB_IDS = {
    "image_learned": "deepmind/vision-perceiver-learned",
    "image_fourier": "deepmind/vision-perceiver-fourier",
    "image_conv": "deepmind/vision-perceiver-conv",
}


def recipe(task: str) -> ml_collections.ConfigDict:
    """The recipe for `task` ('image_learned', 'image_fourier', 'image_conv') with its checkpoint's
    architecture."""
    config = default.get_config()
    config.task = task
    config.model = default.model(**ARCHITECTURES[HUB_IDS[task]], attention_probs_dropout_prob=0.0)
    config.dtype = "bfloat16"
    config.data.train_dir = "/data/imagenet/train"  # <class>/<image>.JPEG; point at your copy
    config.data.eval_dir = "/data/imagenet/val"
    config.data.num_workers = 16
    config.global_batch_size = 1024
    config.num_train_steps = 137_625
    config.lr_batch_scaling = True
    config.label_smoothing = 0.1
    return default.lamb(config, learning_rate=5e-4, weight_decay=0.1, schedule="constant_cosine")
