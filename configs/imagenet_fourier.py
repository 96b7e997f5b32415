"""ImageNet classification with deepmind/vision-perceiver-fourier's architecture and DeepMind's recipe
(`configs/_imagenet.py`): raw pixels with 2-D Fourier features (64 bands; d_model 261); 79.0% top-1 in the paper.

    python -m train --config configs/imagenet_fourier.py --workdir DIR \\
        --config.data.train_dir=/data/imagenet/train --config.data.eval_dir=/data/imagenet/val [--distributed]

Expected result: not measured here (ImageNet is not available offline and a step is far beyond a 2-core
CPU); `configs/digits_tiny.py` trains the same task and head code on a CPU.
"""

import ml_collections

from configs import _imagenet


def get_config() -> ml_collections.ConfigDict:
    """vision-perceiver-fourier on ImageNet."""
    return _imagenet.recipe("image_fourier", d_model=261)
