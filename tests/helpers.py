"""Helpers shared by the tests: small model dimensions (`tiny_dims`), O(1) weights for HF torch models
(`redraw_`, `save_random_hf`) and for Flax models (`o1_variables`), padded token batches, the relative
error, parameter counts.

HF's own init (std 0.02) makes Perceiver outputs tiny, so any port looks "close"; both re-drawers draw every
parameter (and float buffer) at O(1) scale so that a relative error of 1e-5 actually means something.
"""

import math

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax.core import meta
from torch import nn

from perceiver_jax.parity import max_relative_error


# A small Perceiver (keyword arguments of PerceiverConfig and transformers.PerceiverConfig); tests override
# the dimensions they exercise.
TINY_DIMS = dict(
    num_latents=4, d_latents=16, d_model=16, num_self_attends_per_block=2, num_self_attention_heads=2,
    num_cross_attention_heads=1,
)  # fmt: skip


def tiny_dims(**overrides):
    """`TINY_DIMS` with `overrides`."""
    return {**TINY_DIMS, **overrides}


def _normal(generator, shape, std, mean=0.0):
    return torch.randn(shape, generator=generator, dtype=torch.float32) * std + mean


def _uniform(generator, shape, low, high):
    return torch.rand(shape, generator=generator, dtype=torch.float32) * (high - low) + low


def _draw_parameter(generator, module, name, shape):
    """A fresh O(1) value for parameter `name` of `module` (shape `shape`)."""
    is_bias = name == "bias"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return _normal(generator, shape, 0.2) if is_bias else _uniform(generator, shape, 0.9, 1.1)
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and not is_bias:
        fan_in = math.prod(shape[1:])  # Linear (out, in); conv (out, in / groups, *kernel)
        return _normal(generator, shape, 1.0 / math.sqrt(fan_in))
    if is_bias or len(shape) < 2:
        return _normal(generator, shape, 0.2)
    # Embedding tables, latents, trainable position tables, padding and mask vectors.
    return _normal(generator, shape, 1.0)


def _draw_buffer(generator, name, shape):
    """A fresh value for float buffer `name` (BatchNorm statistics or any other float buffer)."""
    if name == "running_mean":
        return _normal(generator, shape, 0.1)
    if name == "running_var":
        return _uniform(generator, shape, 0.5, 1.5)
    return _normal(generator, shape, 1.0)


@torch.no_grad()
def redraw_(torch_model, seed=0):
    """Re-draw, in place, every parameter and float buffer of a HF torch model at O(1) scale.

    Linear/conv weights: normal, std 1/sqrt(fan_in) (conv fan_in = in * kh * kw); LayerNorm/BatchNorm
    scales: uniform 1 +- 0.1; biases and other 1-D parameters: normal, std 0.2; embedding tables, latents,
    position tables, padding and mask vectors: normal, std 1; BatchNorm running_mean: normal, std 0.1;
    running_var: uniform 0.5..1.5. Integer buffers (num_batches_tracked) are left alone.

    Args:
      torch_model: a `torch.nn.Module` (any HF Perceiver model).
      seed: the draw is a deterministic function of `seed` and the model's structure.
    Returns:
      `torch_model`, for chaining.
    """
    generator = torch.Generator().manual_seed(seed)
    for _, module in torch_model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            param.copy_(_draw_parameter(generator, module, name, tuple(param.shape)))
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and buf.is_floating_point():
                buf.copy_(_draw_buffer(generator, name, tuple(buf.shape)))
    return torch_model


def save_random_hf(cls, hf_config, folder, seed=0, **save_kwargs):
    """Build `cls(hf_config)` in eval mode, `redraw_` it, `save_pretrained(folder)` and return it.

    Args:
      cls: a HF model class, e.g. `transformers.PerceiverForMaskedLM`.
      hf_config: a `transformers.PerceiverConfig`.
      folder: destination directory (str or path).
      seed: seed for `redraw_`.
      **save_kwargs: forwarded to `save_pretrained` (e.g. `max_shard_size`).
    Returns:
      The redrawn torch model (eval mode).
    """
    torch.manual_seed(seed)
    model = cls(hf_config).eval()
    redraw_(model, seed=seed)
    model.save_pretrained(str(folder), **save_kwargs)
    return model


def max_rel_err(a, b):
    """`perceiver_jax.parity.max_relative_error` of arrays that may also be torch tensors."""
    a, b = (x.detach().numpy() if isinstance(x, torch.Tensor) else x for x in (a, b))
    assert np.abs(np.asarray(b)).max() > 0, "the reference is all zeros: a relative error means nothing"
    return max_relative_error(a, b)


def count_params(tree):
    """Total number of elements in a Flax parameter tree (`nn.Partitioned` boxes are unboxed); leaves may be
    arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`, to count without allocating)."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(meta.unbox(tree))))


def o1_variables(model, seed=0, **init_kwargs):
    """O(1) Flax variables for `model` without running its initialisers (shapes from `eval_shape` of
    `model.init(key, **init_kwargs)`; host RNG, so no kernel is compiled): kernels std 1/sqrt(fan_in),
    norm scales 1 +- 0.1, 1-D parameters std 0.2, tables and latents std 1; integer variables 0."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if np.issubdtype(leaf.dtype, np.integer):
            return jnp.zeros(shape, leaf.dtype)
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * rng.uniform(-1, 1, shape), jnp.float32)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
        if name == "kernel":  # Dense (in, out), stacked (layers, in, out), conv (kh, kw, in, out)
            std = 1.0 / np.sqrt(np.prod(shape[:-1]) if len(shape) == 4 else shape[-2])
        else:
            std = 0.2 if len(shape) == 1 else 1.0
        return jnp.asarray(std * rng.standard_normal(shape, np.float32))

    shapes = flax_nn.unbox(jax.eval_shape(lambda key: model.init(key, **init_kwargs), jax.random.key(0)))
    return jax.tree_util.tree_map_with_path(draw, shapes)


def padded_batch(vocab_size, length, batch_size=4, seed=0):
    """Token ids and mask, int `(batch_size, length)`: rows keep `length`, ..., `length / (B - 1)` tokens
    in equal steps and the last row a single one; the rest is padding (id 0, mask 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, (batch_size, length))
    mask = np.zeros((batch_size, length), np.int64)
    for row in range(batch_size):
        last = row == batch_size - 1
        mask[row, : 1 if last else length * (batch_size - 1 - row) // (batch_size - 1)] = 1
    return np.where(mask == 1, ids, 0), mask
