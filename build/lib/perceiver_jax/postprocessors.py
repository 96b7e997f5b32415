"""Output postprocessors: decoder outputs -> task outputs.

`Postprocessor` is the interface: `__call__(outputs, *, modality_sizes=None)`, where `modality_sizes`
{name: count} tells a multimodal postprocessor how to split its inputs. The audio and multimodal ones are
in `perceiver_jax.multimodal`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax

from perceiver_jax.attention import dense
from perceiver_jax.settings import Settings
from perceiver_jax.sharding import CLASSES, EMBED


class Postprocessor(nn.Module):
    """Interface of output postprocessors (abstract); see the module docstring."""

    def __call__(self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None) -> Any:
        """Decoder outputs `(B, O, C)` -> task outputs."""
        raise NotImplementedError


def classifier_dense(module: nn.Module, features: int) -> nn.Dense:
    """The Dense `classifier` (HF's name) of a postprocessor with `init_std` and `settings`."""
    return dense(
        features,
        in_axis=EMBED,
        out_axis=CLASSES,
        init_std=module.init_std,
        settings=module.settings,
        name="classifier",
    )


class ClassificationPostprocessor(Postprocessor, kw_only=True):
    """Decoder output `(B, M, C)` -> class logits of the first query `(B, num_labels)` (Dense `classifier`)."""

    num_labels: int
    init_std: float = 0.02
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None) -> jax.Array:
        """`inputs` `(B, M, C)` -> `(B, num_labels)`."""
        return classifier_dense(self, self.num_labels)(inputs)[:, 0, :]


class ProjectionPostprocessor(Postprocessor, kw_only=True):
    """Projects the channels of the decoder output: `(B, M, C)` -> `(B, M, out_channels)`."""

    out_channels: int
    init_std: float = 0.02
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None) -> jax.Array:
        """`inputs` `(B, M, C)` -> `(B, M, out_channels)`."""
        return classifier_dense(self, self.out_channels)(inputs)
