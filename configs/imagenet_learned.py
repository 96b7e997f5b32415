"""deepmind/vision-perceiver-learned on ImageNet: a 1x1 convolution to 256 channels concatenated
with a learned 224 x 224 position table projected to 256 (d_model 512); 72.7% top-1 in the paper
(Table 7).

    python -m train --config configs/imagenet_learned.py --workdir DIR [--distributed]

DeepMind's recipe, the data flags and the expected result: `configs/_imagenet.py`.
"""

import ml_collections

from configs import _imagenet


def get_config() -> ml_collections.ConfigDict:
    return _imagenet.recipe("image_learned")
