"""`Settings`: how a model computes (precision, attention kernel, rematerialisation), not what it computes.

One small frozen object reaches every module (flax's lm1b `TransformerConfig` idea: no kwarg plumbing).
The model's hyper-parameters are in `PerceiverConfig`; two models with the same config and different
settings hold the same parameters and compute the same function, up to rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

# Compute and parameter dtypes a Perceiver can use.
DTYPES = ("float32", "bfloat16", "float16")

# Implementations of the attention core: 'xla' is the explicit einsum/softmax (exact HF numerics, attention
# dropout supported); 'cudnn' is flash attention on NVIDIA GPUs through `jax.nn.dot_product_attention`,
# used by each attention whose inputs it takes (see `attention.cudnn_applies`) when there is no dropout;
# the others run 'xla'.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")

# Activation rematerialisation of each encoder self-attention layer: what the backward pass may keep.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections, recompute attention
}


def canonical_dtype(value: Any, name: str = "dtype") -> jnp.dtype:
    """`value` (a dtype, a scalar type such as `jnp.bfloat16`, or a name such as 'bfloat16') as a
    `jnp.dtype` from `DTYPES`; raises ValueError naming `name` and the choices otherwise."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in DTYPES:
        raise ValueError(
            f"{name}={value!r} is not a supported dtype; use one of {DTYPES} (a name or e.g. jnp.bfloat16)."
        )
    return dtype


@dataclasses.dataclass(frozen=True)
class Settings:
    """Computation settings shared by every module of a model.

    Attributes:
      dtype: compute dtype of activations and matrix products (products accumulate in float32).
      param_dtype: dtype parameters are created and stored in.
      attention_implementation: one of `ATTENTION_IMPLEMENTATIONS`.
      remat: a key of `REMAT_POLICIES`, applied to each encoder self-attention layer.
      unroll_layers: unroll the encoder's layer and block loops into straight-line code (compile time
        grows with depth; XLA's cost analysis, which counts a loop body once, then sees every layer).
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_implementation: str = "xla"
    remat: str = "none"
    unroll_layers: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, "Settings.dtype"))
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype, "Settings.param_dtype"))
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"Settings.attention_implementation={self.attention_implementation!r}; choose one of "
                f"{ATTENTION_IMPLEMENTATIONS}."
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"Settings.remat={self.remat!r}; choose one of {sorted(REMAT_POLICIES)}.")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with `changes` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)
