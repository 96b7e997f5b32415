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


class ProjectionPostprocessor(Postprocessor, kw_only=True):
    """Projects the channels of the decoder output with the Dense `classifier` (HF's name):
    `(B, M, C)` -> `(B, M, out_channels)`."""

    out_channels: int
    init_std: float = 0.02
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None) -> jax.Array:
        """`inputs` `(B, M, C)` -> `(B, M, out_channels)`."""
        common = dict(init_std=self.init_std, settings=self.settings)
        return dense(self.out_channels, in_axis=EMBED, out_axis=CLASSES, name="classifier", **common)(inputs)


class ClassificationPostprocessor(ProjectionPostprocessor, kw_only=True):
    """Class logits of the first query: `(B, M, C)` -> `(B, out_channels)`, `out_channels` = the labels."""

    def __call__(self, inputs: jax.Array, *, modality_sizes: Mapping[str, int] | None = None) -> jax.Array:
        """`inputs` `(B, M, C)` -> `(B, out_channels)`."""
        return super().__call__(inputs)[:, 0, :]
