"""Analytic FLOP counts of Perceiver IO models (matrix multiplications only, 1 multiply-add = 2 FLOPs).

Counted: every projection (query, key, value, attention output, MLP, decoder projections, output
embedding), the attention products QK^T and PV, and convolutions. Not counted: embeddings (gathers),
layer norms, softmax, GELU, residual adds and the optimiser (O(activations) or O(params), not
O(tokens x params)). A training step is counted as 3x the forward pass (the backward pass has two
matrix products per forward product), the usual convention for MFU.

`tests/test_benchmarks.py` checks these counts against `torch.utils.flop_counter` run on the HF model.
"""

from __future__ import annotations

import dataclasses

from perceiver_jax.config import PerceiverConfig


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """Shape of one Perceiver attention layer (attention + MLP), per example.

    Attributes:
      num_queries: M, query positions.
      q_dim: Cq, query width (also the output and MLP width).
      num_inputs: N, key/value positions.
      kv_dim: Ckv, key/value input width.
      qk_channels: width of the query/key projections (all heads).
      v_channels: width of the value projection (all heads).
      widening_factor: MLP hidden width / Cq.
    """

    num_queries: int
    q_dim: int
    num_inputs: int
    kv_dim: int
    qk_channels: int
    v_channels: int
    widening_factor: int = 1


def attention_layer_flops(s: AttentionShape) -> dict[str, int]:
    """Forward FLOPs of one attention layer per example, by part (`projections`, `attention`, `mlp`)."""
    m, n = s.num_queries, s.num_inputs
    projections = 2 * m * s.q_dim * s.qk_channels  # query
    projections += 2 * n * s.kv_dim * (s.qk_channels + s.v_channels)  # key, value
    projections += 2 * m * s.v_channels * s.q_dim  # attention output
    attention = 2 * m * n * s.qk_channels + 2 * m * n * s.v_channels  # QK^T, PV (summed over heads)
    mlp = 2 * 2 * m * s.q_dim * (s.widening_factor * s.q_dim)
    return {"projections": projections, "attention": attention, "mlp": mlp}


def _total(parts: dict[str, int]) -> int:
    return sum(parts.values())


def _cross_qk(config: PerceiverConfig, q_dim: int, kv_dim: int, qk: int | None) -> int:
    """HF's default qk width of a cross-attention (`cross_attention_shape_for_attention`)."""
    if qk is not None:
        return qk
    return kv_dim if config.cross_attention_shape_for_attention == "kv" else q_dim


def encoder_flops(config: PerceiverConfig, num_inputs: int, input_dim: int) -> dict[str, int]:
    """Forward FLOPs per example of the encoder: `cross_attention` and `self_attention` (all layers)."""
    d = config.d_latents
    qk = _cross_qk(config, d, input_dim, config.qk_channels)
    cross = AttentionShape(
        config.num_latents,
        d,
        num_inputs,
        input_dim,
        qk,
        config.v_channels or qk,
        config.cross_attention_widening_factor,
    )
    self_qk = config.qk_channels or d
    layer = AttentionShape(
        config.num_latents,
        d,
        config.num_latents,
        d,
        self_qk,
        config.v_channels or self_qk,
        config.self_attention_widening_factor,
    )
    num_layers = config.num_blocks * config.num_self_attends_per_block
    return {
        "cross_attention": _total(attention_layer_flops(cross)),
        "self_attention": num_layers * _total(attention_layer_flops(layer)),
    }


def masked_lm_flops(config: PerceiverConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per example of `PerceiverForMaskedLM` on `seq_len` tokens, by part."""
    parts = encoder_flops(config, seq_len, config.d_model)
    decoder = AttentionShape(
        config.mlm_num_queries,
        config.d_model,
        config.num_latents,
        config.d_latents,
        config.mlm_decoder.qk_channels,
        config.mlm_decoder.v_channels or config.d_model,
        config.mlm_decoder.widening_factor,
    )
    parts["decoder"] = _total(attention_layer_flops(decoder))
    parts["output_embedding"] = 2 * config.mlm_num_queries * config.d_model * config.vocab_size
    return parts


def classification_decoder_flops(config: PerceiverConfig) -> int:
    """Forward FLOPs per example of HF's classification decoder (one query of width d_latents)."""
    d = config.d_latents
    qk = _cross_qk(config, d, d, None)
    shape = AttentionShape(1, d, config.num_latents, d, qk, qk, config.classification_decoder.widening_factor)
    return _total(attention_layer_flops(shape)) + 2 * d * config.num_labels


def image_fourier_flops(config: PerceiverConfig, height: int, width: int) -> dict[str, int]:
    """Forward FLOPs per example of `PerceiverForImageClassificationFourier` on `height x width` images
    (raw pixels + 2-D Fourier features: no projection before the encoder)."""
    channels = 3 + 2 * (2 * config.image_fourier_num_bands + 1)
    parts = encoder_flops(config, height * width, channels)
    parts["decoder"] = classification_decoder_flops(config)
    return parts


def forward_flops(head: str, config: PerceiverConfig, **dims: int) -> dict[str, int]:
    """Forward FLOPs per example of the HF head class named `head`, by part.

    `dims`: `seq_len` for text heads, `height`/`width` for image heads.
    """
    if head == "PerceiverForMaskedLM":
        return masked_lm_flops(config, dims["seq_len"])
    if head == "PerceiverForSequenceClassification":
        parts = encoder_flops(config, dims["seq_len"], config.d_model)
        parts["decoder"] = classification_decoder_flops(config)
        return parts
    if head == "PerceiverForImageClassificationFourier":
        return image_fourier_flops(config, dims["height"], dims["width"])
    raise NotImplementedError(f"no analytic FLOP count for {head}.")


def model_flops(head: str, config: PerceiverConfig, batch_size: int, training: bool = False, **dims) -> int:
    """Total FLOPs of one forward pass (or training step: 3x) of `batch_size` examples."""
    per_example = _total(forward_flops(head, config, **dims))
    return (3 if training else 1) * batch_size * per_example
