"""deepmind/vision-perceiver-conv on ImageNet: a conv stem (7x7 conv, BatchNorm, max-pool:
56 x 56 -> 55 x 55 tokens) with Fourier features (d_model 322); 82.1% top-1 in the paper.

    python -m train --config configs/imagenet_conv.py --workdir DIR [--distributed]

DeepMind's recipe, the data flags and the expected result: `configs/_imagenet.py`.
"""

import ml_collections

from configs import _imagenet


def get_config() -> ml_collections.ConfigDict:
    return _imagenet.recipe("image_conv")
