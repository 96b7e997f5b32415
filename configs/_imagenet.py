"""Shared by the three ImageNet configs (`imagenet_learned.py`, `imagenet_fourier.py`, `imagenet_conv.py`):
DeepMind's Perceiver IO ImageNet recipe, on an ImageNet folder in the image-folder layout.

Recipe (Perceiver IO, App. A.1; deepmind-research `perceiver/train/experiment.py`): 110 epochs of batch
1024 (1,281,167 images: 137,625 steps) on 64 TPUs; LAMB (clip 10, Adam(0.9, 0.999, 1e-6), weight decay
0.1 off biases and norm scales, trust ratio), learning rate 5e-4 x batch / 256 = 2e-3, constant for half
the steps then cosine to 0, no warmup; label smoothing 0.1; no dropout; random resized (Inception) crop
and flip, RandAugment (4 layers, magnitude 5), MixUp 0.2 on half of each batch and CutMix on the other
half; eval: centre crop of 224 / 256 of the shorter side (Hugging Face's `PerceiverImageProcessor`).
"""

import ml_collections

from configs import default

VISION = dict(
    num_latents=512,
    d_latents=1024,
    num_blocks=8,
    num_self_attends_per_block=6,
    num_self_attention_heads=8,
    num_cross_attention_heads=1,
    num_labels=1000,
    image_size=224,
    attention_probs_dropout_prob=0.0,
)


def recipe(task: str, d_model: int) -> ml_collections.ConfigDict:
    """The recipe for `task` ('image_learned', 'image_fourier', 'image_conv') at input width `d_model`."""
    config = default.get_config()
    config.task = task
    config.model = default.model(**VISION, d_model=d_model)
    config.dtype = "bfloat16"
    config.data.train_dir = "/data/imagenet/train"  # <class>/<image>.JPEG; point at your copy
    config.data.eval_dir = "/data/imagenet/val"
    config.data.num_workers = 16
    config.global_batch_size = 1024
    config.num_train_steps = 137_625
    config.optimizer = "lamb"
    config.learning_rate = 5e-4
    config.lr_batch_scaling = True
    config.schedule = "constant_cosine"
    config.b1, config.b2, config.eps = 0.9, 0.999, 1e-6
    config.weight_decay = 0.1
    config.clip_grad_norm = 10.0
    config.label_smoothing = 0.1
    config.log_every = 100
    config.eval_every = 5000
    config.checkpoint_every = 5000
    return config
