"""Image classification on a CPU in a few minutes: a tiny Perceiver with the conv-stem head
(`PerceiverForImageClassificationConvProcessing`: conv, BatchNorm, max-pool, Fourier positions) on
scikit-learn's digits (1797 8x8 images of 10 digits, shipped with scikit-learn: no download), upscaled to
32 x 32 with DeepMind's augmentation (random resized crop, flip off: digits are not mirror-symmetric,
light RandAugment; no MixUp / CutMix at this size).

    python -m train --config configs/digits_tiny.py --workdir runs/digits_tiny

The same data trains the other image heads: --config.task=image_fourier --config.model.d_model=261, or
--config.task=image_learned --config.model.d_model=512. Expected on a 2-core CPU: 600 steps in about
3 minutes, eval top-1 accuracy about 0.9 against the majority-class baseline 0.10.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Tiny conv-stem image classifier on the digits."""
    config = default.demo(
        "image_conv", steps=600, batch=64, lr=2e-3, warmup=50, every=200,
        d_model=322, num_labels=10, image_size=32, initializer_range=0.05,
    )  # fmt: skip
    config.data.update(crop_area_min=0.5, flip=False, randaugment_layers=1, randaugment_magnitude=3)
    config.data.update(mixup_alpha=0.0, cutmix_alpha=0.0)
    return config
