"""Attention building blocks: multi-head attention, the MLP, and the cross-/self-attention layers.

Shapes use B batch, M queries, N keys/values, H heads. Numerics follow HF's torch Perceiver exactly:
LayerNorm eps 1e-5 with the two-pass variance, exact (erf) GELU, `softmax(q k^T / sqrt(d_head))` in
float32 with an additive `finfo(float32).min` on masked keys, dropout on the attention probabilities only.
Every layer returns `(output, attention probabilities)`; the probabilities `(B, H, M, N)` are what HF's
`output_attentions` reports (None under cuDNN attention, which never materialises them).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_jax.settings import Settings
from perceiver_jax.sharding import (
    ACT_EMBED,
    ACT_HEADS,
    ACT_MLP,
    BATCH,
    EMBED,
    HEADS,
    LENGTH,
    constrain,
    partitioned,
)
from perceiver_jax.sharding import MLP as MLP_AXIS  # `MLP` is the module class below


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


def einsum_f32_accumulation(subscripts: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """`jnp.einsum` accumulating in float32, its result cast to `dtype` (see
    `dot_general_f32_accumulation`)."""
    return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32).astype(dtype)


def dense(
    features: int,
    *,
    in_axis: str | None,
    out_axis: str | None,
    init_std: float,
    settings: Settings,
    name: str,
) -> nn.Dense:
    """A `nn.Dense` with HF's init (normal(init_std) kernel, zero bias), logical axis names and float32
    accumulation (`dot_general_f32_accumulation`)."""
    return nn.Dense(
        features,
        dtype=settings.dtype,
        param_dtype=settings.param_dtype,
        dot_general=dot_general_f32_accumulation,
        kernel_init=partitioned(jax.nn.initializers.normal(init_std), in_axis, out_axis),
        bias_init=partitioned(jax.nn.initializers.zeros, out_axis),
        name=name,
    )


def layer_norm(*, eps: float, settings: Settings, name: str) -> nn.LayerNorm:
    """torch-equivalent LayerNorm over the last axis (two-pass variance, statistics in float32)."""
    return nn.LayerNorm(
        epsilon=eps,
        use_fast_variance=False,
        dtype=settings.dtype,
        param_dtype=settings.param_dtype,
        scale_init=partitioned(jax.nn.initializers.ones, EMBED),
        bias_init=partitioned(jax.nn.initializers.zeros, EMBED),
        name=name,
    )


def key_padding_bias(mask: jax.Array) -> jax.Array:
    """`(B, N)` bool/int mask (1 = attend) -> `(B, 1, 1, N)` additive float32 bias, HF's `finfo.min` form."""
    return jnp.where(mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :].astype(jnp.float32)


class Attention(nn.Module, kw_only=True):
    """Multi-head attention with query/key/value/output projections (no norms, no residual).

    Attributes:
      num_heads: H; must divide `qk_channels` and `v_channels`.
      qk_channels: width of the query and key projections (all heads).
      v_channels: width of the value projection (all heads).
      output_channels: width of the output projection.
      dropout_rate: dropout on the attention probabilities when not deterministic.
      init_std: std of the kernel initialiser.
    """

    num_heads: int
    qk_channels: int
    v_channels: int
    output_channels: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    settings: Settings = Settings()

    def __post_init__(self):
        for name, width in (("qk_channels", self.qk_channels), ("v_channels", self.v_channels)):
            if width % self.num_heads:
                raise ValueError(f"{name}={width} is not divisible by num_heads={self.num_heads}.")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        *,
        kv_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Attends `(B, M, Cq)` queries to `(B, N, Ckv)` keys/values; `kv_mask` `(B, N)`, 1 = keep.

        Returns `(B, M, output_channels)` and the attention probabilities `(B, H, M, N)` (None on cuDNN).
        """

        def projection(width, in_axis, out_axis, name):
            common = dict(init_std=self.init_std, settings=self.settings, name=name)
            return dense(width, in_axis=in_axis, out_axis=out_axis, **common)

        def heads(x):  # (B, T, H * D) -> (B, T, H, D)
            x = x.reshape(x.shape[:-1] + (self.num_heads, x.shape[-1] // self.num_heads))
            return constrain(x, BATCH, LENGTH, ACT_HEADS, None)

        q = heads(projection(self.qk_channels, EMBED, HEADS, "query")(inputs_q))
        k = heads(projection(self.qk_channels, EMBED, HEADS, "key")(inputs_kv))
        v = heads(projection(self.v_channels, EMBED, HEADS, "value")(inputs_kv))

        use_dropout = not deterministic and self.dropout_rate > 0.0
        probs = None
        if self.settings.attention_implementation == "cudnn" and not use_dropout and cudnn_applies(q, k, v):
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
            probs = constrain(jax.nn.softmax(scores, axis=-1), BATCH, ACT_HEADS, LENGTH, None)
            weights = probs
            if use_dropout:
                keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, probs.shape)
                weights = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0)
            out = einsum_f32_accumulation("bhmn,bnhd->bmhd", weights.astype(v.dtype), v, v.dtype)
        out = constrain(out, BATCH, LENGTH, ACT_HEADS, None).reshape(out.shape[:-2] + (self.v_channels,))
        out = projection(self.output_channels, HEADS, EMBED, "output")(out)
        return constrain(out, BATCH, LENGTH, ACT_EMBED), probs


class MLP(nn.Module, kw_only=True):
    """Transformer MLP: Dense(widening * C) -> exact GELU -> Dense(C). Maps `(B, T, C)` to `(B, T, C)`."""

    widening_factor: int = 1
    init_std: float = 0.02
    settings: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`x` `(B, T, C)` -> `(B, T, C)`."""
        channels = x.shape[-1]
        common = dict(init_std=self.init_std, settings=self.settings)
        h = dense(self.widening_factor * channels, in_axis=EMBED, out_axis=MLP_AXIS, name="dense1", **common)(
            x
        )
        h = constrain(nn.gelu(h, approximate=False), BATCH, LENGTH, ACT_MLP)
        out = dense(channels, in_axis=MLP_AXIS, out_axis=EMBED, name="dense2", **common)(h)
        return constrain(out, BATCH, LENGTH, ACT_EMBED)


class _AttentionLayer(nn.Module, kw_only=True):
    """Fields and body shared by the cross- and self-attention layers: `out = a + MLP(LN(a))` with
    `a = Attention(queries', inputs') [+ queries]`, where the primes are the layers' normalised streams.

    Attributes:
      num_heads, qk_channels, v_channels: attention shape (None: see the subclass).
      use_query_residual: add the queries to the attention output.
      widening_factor: MLP hidden width / query width.
      dropout_rate: attention dropout; norm_eps: LayerNorm epsilon; init_std: kernel init std.
    """

    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    use_query_residual: bool = True
    widening_factor: int = 1
    dropout_rate: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    settings: Settings = Settings()

    def _norm(self, name: str) -> nn.LayerNorm:
        return layer_norm(eps=self.norm_eps, settings=self.settings, name=name)

    def _attend_then_mlp(self, queries, normed_queries, normed_inputs, qk, inputs_mask, deterministic):
        """`queries` `(B, M, Cq)` and their normalised form, normalised inputs `(B, N, Ckv)` -> `(B, M, Cq)`
        and the attention probabilities `(B, H, M, N)`; called from the subclasses' compact `__call__`."""
        attention = Attention(
            num_heads=self.num_heads,
            qk_channels=qk,
            v_channels=self.v_channels or qk,
            output_channels=queries.shape[-1],
            dropout_rate=self.dropout_rate,
            init_std=self.init_std,
            settings=self.settings,
            name="attention",
        )
        attended, probs = attention(
            normed_queries, normed_inputs, kv_mask=inputs_mask, deterministic=deterministic
        )
        if self.use_query_residual:
            attended = attended + queries
        mlp = MLP(
            widening_factor=self.widening_factor, init_std=self.init_std, settings=self.settings, name="mlp"
        )
        return attended + mlp(self._norm("mlp_norm")(attended)), probs


class CrossAttention(_AttentionLayer, kw_only=True):
    """Perceiver cross-attention layer: queries attend to normalised inputs, then an MLP.

    `out = a + MLP(LN(a))` with `a = Attention(LN(queries), LN(inputs)) [+ queries]`. The query residual
    adds the un-normalised queries (HF's `use_query_residual`); it is off in decoders whose queries are
    positions rather than features. `qk_channels=None` takes the width named by `shape_for_attention`
    ('kv' or 'q'), `v_channels=None` takes qk's, as in HF.
    """

    shape_for_attention: str = "kv"

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        inputs: jax.Array,
        *,
        inputs_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array | None]:
        """`queries` `(B, M, Cq)`, `inputs` `(B, N, Ckv)`, `inputs_mask` `(B, N)` -> `(B, M, Cq)` and the
        attention probabilities `(B, H, M, N)`."""
        width = inputs.shape[-1] if self.shape_for_attention == "kv" else queries.shape[-1]
        normed_queries, normed_inputs = self._norm("query_norm")(queries), self._norm("kv_norm")(inputs)
        return self._attend_then_mlp(
            queries, normed_queries, normed_inputs, self.qk_channels or width, inputs_mask, deterministic
        )


class SelfAttention(_AttentionLayer, kw_only=True):
    """Perceiver self-attention layer on the latents: `a = Attn(LN(z)) [+ z]`, `out = a + MLP(LN(a))`.

    `qk_channels=None` takes the latent width D; `v_channels` must equal D, as in HF where the output
    projection keeps the value width. HF always adds the query residual.
    """

    @nn.compact
    def __call__(
        self, latents: jax.Array, *, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array | None]:
        """`latents` `(B, N, D)` -> `(B, N, D)` and the attention probabilities `(B, H, N, N)`."""
        normed = self._norm("query_norm")(latents)
        qk = self.qk_channels or latents.shape[-1]
        out, probs = self._attend_then_mlp(latents, normed, normed, qk, None, deterministic)
        return constrain(out, BATCH, LENGTH, ACT_EMBED), probs
