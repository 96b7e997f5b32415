"""Attention building blocks: multi-head attention, the MLP, and the cross-/self-attention layers.

Shapes use B batch, M queries, N keys/values, H heads. Numerics follow HF's torch Perceiver exactly:
LayerNorm eps 1e-5 with the two-pass variance, exact (erf) GELU, `softmax(q k^T / sqrt(d_head))` in
float32 with an additive `finfo(float32).min` on masked keys, dropout on the attention probabilities only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.sharding import EMBED, HEADS, partitioned
from perceiver_jax.sharding import MLP as MLP_AXIS  # `MLP` is the module class below

Dtype = Any

# Implementations of the attention core: 'xla' is the explicit einsum/softmax (exact HF numerics, attention
# dropout supported); 'cudnn' is flash attention on NVIDIA GPUs through `jax.nn.dot_product_attention`,
# used by each attention whose inputs it takes (see `cudnn_applies`) when there is no dropout; the others
# run 'xla'.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def cudnn_applies(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether cuDNN flash attention takes these `(B, T, H, D)` queries/keys/values: a GPU backend, half
    precision, and one head width for all three (jax.nn.dot_product_attention requires it), a multiple of
    8 up to 128. language-perceiver's heads (32 wide for q/k, 160 for v) do not qualify."""
    width = q.shape[-1]
    return (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and k.shape[-1] == v.shape[-1] == width
        and width % 8 == 0
        and width <= 128
    )


def dot_general_f32_accumulation(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` accumulating in float32, its result cast back to the operands' dtype.

    The same as `lax.dot_general` for float32 operands. For bfloat16 it is the usual mixed-precision
    contract, and on XLA's CPU backend the fast one: a dot with a bf16 result takes a path at half the
    speed there (Zen 4, `(512, 1280) @ (1280, 1280)`: 410 GFLOP/s this way, 195 with a bf16 result).
    `preferred_element_type` is accepted for `nn.Dense`'s call signature and must be None.
    """
    if preferred_element_type is not None:
        raise ValueError("dot_general_f32_accumulation sets its own accumulation type.")
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32
    )
    return out.astype(jnp.result_type(lhs, rhs))


def dense(
    features: int, in_name: str, out_name: str, init_std: float, dtype: Dtype, param_dtype: Dtype, name: str
):
    """A `nn.Dense` with HF's init (normal(init_std) kernel, zero bias), logical axis names and float32
    accumulation (`dot_general_f32_accumulation`)."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        dot_general=dot_general_f32_accumulation,
        kernel_init=partitioned(jax.nn.initializers.normal(init_std), in_name, out_name),
        bias_init=partitioned(jax.nn.initializers.zeros, out_name),
        name=name,
    )


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """torch-equivalent LayerNorm over the last axis (two-pass variance, statistics in float32)."""
    return nn.LayerNorm(
        epsilon=eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(jax.nn.initializers.ones, EMBED),
        bias_init=partitioned(jax.nn.initializers.zeros, EMBED),
        name=name,
    )


def key_padding_bias(mask: jax.Array) -> jax.Array:
    """`(B, N)` bool/int mask (1 = attend) -> `(B, 1, 1, N)` additive float32 bias, HF's `finfo.min` form."""
    return jnp.where(mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :].astype(jnp.float32)


class Attention(nn.Module):
    """Multi-head attention with query/key/value/output projections (no norms, no residual).

    Attributes:
      num_heads: H; must divide `qk_channels` and `v_channels`.
      qk_channels: width of the query and key projections (all heads).
      v_channels: width of the value projection (all heads).
      output_channels: width of the output projection.
      dropout_rate: dropout on the attention probabilities when not deterministic.
      init_std: std of the kernel initialiser.
      implementation: one of `ATTENTION_IMPLEMENTATIONS`.
    """

    num_heads: int
    qk_channels: int
    v_channels: int
    output_channels: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        kv_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Attends `(B, M, Cq)` queries to `(B, N, Ckv)` keys/values; `kv_mask` `(B, N)`, 1 = keep.

        Returns `(B, M, output_channels)`.
        """
        for name, width in (("qk_channels", self.qk_channels), ("v_channels", self.v_channels)):
            if width % self.num_heads:
                raise ValueError(f"{name}={width} is not divisible by num_heads={self.num_heads}.")
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation {self.implementation!r} not in {ATTENTION_IMPLEMENTATIONS}."
            )
        args = (self.init_std, self.dtype, self.param_dtype)
        q = dense(self.qk_channels, EMBED, HEADS, *args, name="query")(inputs_q)
        k = dense(self.qk_channels, EMBED, HEADS, *args, name="key")(inputs_kv)
        v = dense(self.v_channels, EMBED, HEADS, *args, name="value")(inputs_kv)

        def split(x):  # (B, T, H * D) -> (B, T, H, D)
            return x.reshape(x.shape[:-1] + (self.num_heads, x.shape[-1] // self.num_heads))

        q, k, v = split(q), split(k), split(v)  # (B, M|N, H, D)

        use_dropout = not deterministic and self.dropout_rate > 0.0
        if self.implementation == "cudnn" and not use_dropout and cudnn_applies(q, k, v):
            bias = None
            if kv_mask is not None:  # cuDNN wants a (B, 1, M, N) bias
                shape = (q.shape[0], 1, q.shape[1], k.shape[1])
                bias = jnp.broadcast_to(key_padding_bias(kv_mask), shape).astype(q.dtype)
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")
        else:
            scores = jnp.einsum("bmhd,bnhd->bhmn", q, k, preferred_element_type=jnp.float32)
            scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
            if kv_mask is not None:
                scores = scores + key_padding_bias(kv_mask)
            probs = jax.nn.softmax(scores, axis=-1)
            if use_dropout:
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, probs.shape)
                probs = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0)
            probs = probs.astype(v.dtype)
            out = jnp.einsum("bhmn,bnhd->bmhd", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
        out = out.reshape(out.shape[:-2] + (self.v_channels,))
        return dense(self.output_channels, HEADS, EMBED, *args, name="output")(out)


class MLP(nn.Module):
    """Transformer MLP: Dense(widening * C) -> exact GELU -> Dense(C). Maps `(..., C)` to `(..., C)`."""

    widening_factor: int = 1
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`x` `(..., C)` -> `(..., C)`."""
        channels = x.shape[-1]
        args = (self.init_std, self.dtype, self.param_dtype)
        h = dense(self.widening_factor * channels, EMBED, MLP_AXIS, *args, name="dense1")(x)
        h = nn.gelu(h, approximate=False)
        return dense(channels, MLP_AXIS, EMBED, *args, name="dense2")(h)


class CrossAttention(nn.Module):
    """Perceiver cross-attention layer: queries attend to normalised inputs, then an MLP.

    `out = a + MLP(LN(a))` with `a = Attention(LN(queries), LN(inputs)) [+ queries]`. The query residual
    adds the un-normalised queries (HF's `use_query_residual`); it is off in decoders whose queries are
    positions rather than features.

    Attributes:
      num_heads, qk_channels, v_channels: attention shape (None: qk takes the width named by
        `shape_for_attention`, v takes qk's, as in HF).
      widening_factor: MLP hidden width / query width.
      use_query_residual: add the queries to the attention output.
      shape_for_attention: 'kv' or 'q', which width `qk_channels=None` defaults to.
    """

    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = True
    shape_for_attention: str = "kv"
    dropout_rate: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        inputs: jax.Array,
        inputs_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """`queries` `(B, M, Cq)`, `inputs` `(B, N, Ckv)`, `inputs_mask` `(B, N)` -> `(B, M, Cq)`."""
        q_dim, kv_dim = queries.shape[-1], inputs.shape[-1]
        default_qk = kv_dim if self.shape_for_attention == "kv" else q_dim
        qk = self.qk_channels or default_qk
        v = self.v_channels or qk

        def norm(name):
            return layer_norm(self.norm_eps, self.dtype, self.param_dtype, name)

        attended = Attention(
            self.num_heads,
            qk,
            v,
            q_dim,
            self.dropout_rate,
            self.init_std,
            self.implementation,
            self.dtype,
            self.param_dtype,
            name="attention",
        )(norm("query_norm")(queries), norm("kv_norm")(inputs), inputs_mask, deterministic)
        if self.use_query_residual:
            attended = attended + queries
        mlp = MLP(self.widening_factor, self.init_std, self.dtype, self.param_dtype, name="mlp")
        return attended + mlp(norm("mlp_norm")(attended))


class SelfAttention(nn.Module):
    """Perceiver self-attention layer on the latents: `a = z + Attn(LN(z))`, `out = a + MLP(LN(a))`.

    Attributes:
      num_heads, qk_channels, v_channels: attention shape (None: the latent width D; `v_channels` must
        equal D, as in HF where the output projection keeps the value width).
      widening_factor: MLP hidden width / D.
    """

    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    dropout_rate: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, latents: jax.Array, deterministic: bool = True) -> jax.Array:
        """`latents` `(B, N, D)` -> `(B, N, D)`."""
        width = latents.shape[-1]
        qk = self.qk_channels or width
        v = self.v_channels or qk
        if v != width:
            raise ValueError(
                f"self-attention value width {v} must equal the latent width {width} (HF's residual needs it); "
                "set v_channels to d_latents or None."
            )

        def norm(name):
            return layer_norm(self.norm_eps, self.dtype, self.param_dtype, name)

        normed = norm("query_norm")(latents)
        attended = Attention(
            self.num_heads,
            qk,
            v,
            width,
            self.dropout_rate,
            self.init_std,
            self.implementation,
            self.dtype,
            self.param_dtype,
            name="attention",
        )(normed, normed, None, deterministic)
        attended = attended + latents
        mlp = MLP(self.widening_factor, self.init_std, self.dtype, self.param_dtype, name="mlp")
        return attended + mlp(norm("mlp_norm")(attended))
