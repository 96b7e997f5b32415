"""deepmind/vision-perceiver-fourier on ImageNet: raw pixels with 2-D Fourier features (64 bands,
d_model 261); 79.0% top-1 in the paper.

    python -m train --config configs/imagenet_fourier.py --workdir DIR [--distributed]

DeepMind's recipe, the data flags and the expected result: `configs/_imagenet.py`.
"""

import ml_collections

from configs import _imagenet


def get_config() -> ml_collections.ConfigDict:
    return _imagenet.recipe("image_fourier")
