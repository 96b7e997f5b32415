"""The Perceiver encoder: latents cross-attend to the inputs, then a weight-shared self-attention stack."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.attention import CrossAttention, SelfAttention
from perceiver_jax.config import PerceiverConfig
from perceiver_jax.outputs import PerceiverOutput
from perceiver_jax.settings import REMAT_POLICIES, Settings
from perceiver_jax.sharding import ACT_EMBED, BATCH, EMBED, LATENTS, LAYERS, LENGTH, constrain, partitioned


class PerceiverEncoder(nn.Module, kw_only=True):
    """Latents `(N, D)` cross-attend once to the inputs, then `num_blocks` x `num_self_attends_per_block`
    self-attention layers; the block's layers have their own weights, the blocks share them.

    The layer stack is an `nn.scan` (weights stacked on a leading 'layers' axis) inside an `nn.scan` over
    blocks with broadcast weights, so compile time does not grow with depth. `settings.remat` applies to
    each layer.

    Attributes:
      config: the model config (latent shape, heads, widths, dropout).
    """

    config: PerceiverConfig
    settings: Settings = Settings()

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        inputs_mask: jax.Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> PerceiverOutput:
        """`inputs` `(B, M, C)`, `inputs_mask` `(B, M)` (1 = real, 0 = padding) -> the final latents
        `(B, N, D)` as `last_hidden_state`, with HF's `hidden_states` (the latents entering each layer and
        leaving each block), `attentions` (each layer's `(B, H, N, N)`) and `cross_attentions` (the
        cross-attention's `(B, H, N, M)`) when asked for."""
        cfg = self.config
        common = dict(
            qk_channels=cfg.qk_channels,
            v_channels=cfg.v_channels,
            dropout_rate=cfg.attention_probs_dropout_prob,
            norm_eps=cfg.norm_eps,
            init_std=cfg.initializer_range,
            settings=self.settings,
        )
        latents = self.param(
            "latents",
            partitioned(jax.nn.initializers.normal(cfg.initializer_range), LATENTS, EMBED),
            (cfg.num_latents, cfg.d_latents),
            self.settings.param_dtype,
        )
        z = jnp.broadcast_to(latents.astype(self.settings.dtype)[None], (inputs.shape[0],) + latents.shape)
        z = constrain(z, BATCH, LENGTH, ACT_EMBED)
        cross_attention = CrossAttention(
            num_heads=cfg.num_cross_attention_heads,
            widening_factor=cfg.cross_attention_widening_factor,
            use_query_residual=cfg.use_query_residual,
            shape_for_attention=cfg.cross_attention_shape_for_attention,
            name="cross_attention",
            **common,
        )
        z, cross_probs = cross_attention(
            z, inputs.astype(self.settings.dtype), inputs_mask=inputs_mask, deterministic=deterministic
        )
        z = constrain(z, BATCH, LENGTH, ACT_EMBED)

        def layer_step(layer, z, _):
            out, probs = layer(z, deterministic=deterministic)
            return out, (z if output_hidden_states else None, probs if output_attentions else None)

        if self.settings.remat != "none":
            layer_step = nn.remat(layer_step, prevent_cse=False, policy=REMAT_POLICIES[self.settings.remat])
        layers = nn.scan(
            layer_step,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=cfg.num_self_attends_per_block,
            metadata_params={nn.PARTITION_NAME: LAYERS},
            unroll=self.settings.unroll_layers or 1,
        )

        def block_step(layer, z, _):
            z, per_layer = layers(layer, z, None)
            return z, (per_layer, z if output_hidden_states else None)

        blocks = nn.scan(
            block_step,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            length=cfg.num_blocks,
            unroll=self.settings.unroll_layers or 1,
        )
        layer = SelfAttention(
            num_heads=cfg.num_self_attention_heads,
            widening_factor=cfg.self_attention_widening_factor,
            use_query_residual=cfg.self_attention_use_query_residual,
            name="self_attends",
            **common,
        )
        z, ((layer_inputs, probs), block_outputs) = blocks(layer, z, None)
        hidden_states = attentions = None
        if output_hidden_states:  # HF's order: each layer's input, then the block's output, block by block
            hidden_states = tuple(
                h
                for b in range(cfg.num_blocks)
                for h in (
                    *(layer_inputs[b, i] for i in range(cfg.num_self_attends_per_block)),
                    block_outputs[b],
                )
            )
        if output_attentions:
            attentions = tuple(probs.reshape(-1, *probs.shape[2:]))
        return PerceiverOutput(
            last_hidden_state=z,
            hidden_states=hidden_states,
            attentions=attentions,
            cross_attentions=(cross_probs,) if output_attentions else None,
        )
