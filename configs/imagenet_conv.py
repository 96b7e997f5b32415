"""ImageNet classification with deepmind/vision-perceiver-conv's architecture and DeepMind's recipe
(`configs/_imagenet.py`): a conv stem (7x7 conv, BatchNorm, max-pool: 56 x 56 -> 55 x 55 tokens) with Fourier features (d_model 322); 82.1% top-1 in the paper.

    python -m train --config configs/imagenet_conv.py --workdir DIR \\
        --config.data.train_dir=/data/imagenet/train --config.data.eval_dir=/data/imagenet/val [--distributed]

Expected result: not measured here (ImageNet is not available offline and a step is far beyond a 2-core
CPU); `configs/digits_tiny.py` trains the same task and head code on a CPU.
"""

import ml_collections

from configs import _imagenet


def get_config() -> ml_collections.ConfigDict:
    """vision-perceiver-conv on ImageNet."""
    return _imagenet.recipe("image_conv", d_model=322)
