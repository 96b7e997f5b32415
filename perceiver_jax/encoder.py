"""The Perceiver encoder: latents cross-attend to the inputs, then a weight-shared self-attention stack."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.attention import CrossAttention, SelfAttention
from perceiver_jax.config import PerceiverConfig
from perceiver_jax.sharding import EMBED, LATENTS, LAYERS, partitioned

Dtype = Any

# Activation rematerialisation of each self-attention layer: what the backward pass may keep.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections, recompute attention
}


class PerceiverEncoder(nn.Module):
    """Latents `(N, D)` cross-attend once to the inputs, then `num_blocks` x `num_self_attends_per_block`
    self-attention layers; the block's layers have their own weights, the blocks share them.

    The layer stack is an `nn.scan` (weights stacked on a leading 'layers' axis) inside an `nn.scan` over
    blocks with broadcast weights, so compile time does not grow with depth.

    Attributes:
      config: the model config (latent shape, heads, widths, dropout).
      remat: key of `REMAT_POLICIES` applied to each self-attention layer.
      attention_implementation: see `perceiver_jax.attention.ATTENTION_IMPLEMENTATIONS`.
    """

    config: PerceiverConfig
    remat: str = "none"
    attention_implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, inputs: jax.Array, inputs_mask: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        """`inputs` `(B, M, C)`, `inputs_mask` `(B, M)` (1 = real, 0 = padding) -> latents `(B, N, D)`."""
        cfg = self.config
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {sorted(REMAT_POLICIES)}.")
        common = dict(
            dropout_rate=cfg.attention_probs_dropout_prob,
            norm_eps=cfg.norm_eps,
            init_std=cfg.initializer_range,
            implementation=self.attention_implementation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        latents = self.param(
            "latents",
            partitioned(jax.nn.initializers.normal(cfg.initializer_range), LATENTS, EMBED),
            (cfg.num_latents, cfg.d_latents),
            self.param_dtype,
        )
        z = jnp.broadcast_to(latents.astype(self.dtype)[None], (inputs.shape[0],) + latents.shape)
        z = CrossAttention(
            num_heads=cfg.num_cross_attention_heads,
            qk_channels=cfg.qk_channels,
            v_channels=cfg.v_channels,
            widening_factor=cfg.cross_attention_widening_factor,
            use_query_residual=cfg.use_query_residual,
            shape_for_attention=cfg.cross_attention_shape_for_attention,
            name="cross_attention",
            **common,
        )(z, inputs.astype(self.dtype), inputs_mask, deterministic)

        def layer_step(layer, z, _):
            return layer(z, deterministic), None

        policy = REMAT_POLICIES[self.remat]
        if self.remat != "none":
            layer_step = nn.remat(layer_step, prevent_cse=False, policy=policy)
        layers = nn.scan(
            layer_step,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=cfg.num_self_attends_per_block,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )

        def block_step(layer, z, _):
            return layers(layer, z, None)[0], None

        blocks = nn.scan(
            block_step,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            length=cfg.num_blocks,
        )
        layer = SelfAttention(
            num_heads=cfg.num_self_attention_heads,
            qk_channels=cfg.qk_channels,
            v_channels=cfg.v_channels,
            widening_factor=cfg.self_attention_widening_factor,
            name="self_attends",
            **common,
        )
        z, _ = blocks(layer, z, None)
        return z
