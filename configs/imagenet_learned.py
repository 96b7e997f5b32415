"""ImageNet classification with deepmind/vision-perceiver-learned's architecture and DeepMind's recipe
(`configs/_imagenet.py`): a 1x1 convolution to 256 channels concatenated with a learned 224 x 224 position table projected to 256 (d_model 512); 72.7% top-1 in the paper (Table 7).

    python -m train --config configs/imagenet_learned.py --workdir DIR \\
        --config.data.train_dir=/data/imagenet/train --config.data.eval_dir=/data/imagenet/val [--distributed]

Expected result: not measured here (ImageNet is not available offline and a step is far beyond a 2-core
CPU); `configs/digits_tiny.py` trains the same task and head code on a CPU.
"""

import ml_collections

from configs import _imagenet


def get_config() -> ml_collections.ConfigDict:
    """vision-perceiver-learned on ImageNet."""
    return _imagenet.recipe("image_learned", d_model=512)
