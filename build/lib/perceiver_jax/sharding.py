"""Logical axis names of parameters and activations, the default rules mapping them onto a mesh, and
`constrain`, the activation sharding constraint every module applies at its boundaries.

Modules never see the mesh. Every parameter is created with `nn.with_logical_partitioning` and every
activation at a module boundary passes through `constrain(x, *names)`; a trainer maps the names onto
its mesh with `nn.logical_axis_rules(rules)` inside `jax.set_mesh(mesh)`. Outside such a context
`constrain` does nothing, so a model computes exactly the same function with and without a mesh.

The mesh has three axes:
- `data`: pure data parallelism (parameters replicated);
- `fsdp`: data parallelism with parameters, gradients and optimiser state sharded over their `embed`
  dimension (ZeRO-3: a layer's parameters are gathered when it runs, gradients reduce-scattered);
- `tensor`: tensor (model) parallelism over attention heads, MLP hidden units and the vocabulary.

Activations are split over `data` x `fsdp` along the batch and over `tensor` along heads / MLP units /
vocabulary; parameters are split over `fsdp` along `embed` and over `tensor` along the same channels.
Constraining activations is what keeps the batch split: without it GSPMD lets a broadcast parameter
(the latents, a learned query table) decide the layout of everything downstream, so every product is
contraction-sharded and all-reduces whole-batch activations.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

# Logical names of parameter dimensions.
EMBED = "embed"  # a model width: d_model, d_latents, query/input channels
HEADS = "heads"  # query/key/value channels (all heads side by side)
MLP = "mlp"  # MLP hidden units
VOCAB = "vocab"  # token vocabulary
LATENTS = "latents"  # the N latent vectors
POSITIONS = "positions"  # rows of a learned position table or decoder queries
CLASSES = "classes"  # classifier outputs
LAYERS = "layers"  # stacked (scanned) layers
CONV_HEIGHT = "conv_height"  # convolution kernel height
CONV_WIDTH = "conv_width"  # convolution kernel width

# Logical names of activation dimensions.
BATCH = "batch"
LENGTH = "length"  # tokens, latents, queries or pixels: the sequence-like dimensions
ACT_EMBED = "activation_embed"  # channels of the residual stream, inputs and queries
ACT_HEADS = "activation_heads"  # attention heads (in (B, T, H, D) and (B, H, M, N) arrays)
ACT_MLP = "activation_mlp"  # MLP hidden units
ACT_VOCAB = "activation_vocab"  # vocabulary logits

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (MLP, "tensor"),
    (VOCAB, "tensor"),
    (LATENTS, None),
    (POSITIONS, None),
    (CLASSES, None),
    (LAYERS, None),
    (CONV_HEIGHT, None),
    (CONV_WIDTH, None),
)


def partitioned(init, *names: str | None):
    """Wraps an initialiser so the created parameter carries logical axis `names` (one per dimension)."""
    return nn.with_logical_partitioning(init, names)


def mesh_size(shape: dict[str, int], axes: str | tuple[str, ...] | None) -> int:
    """Number of devices along mesh `axes` (a PartitionSpec entry) of a mesh with axis sizes `shape`."""
    return math.prod(shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))


def fit_spec(
    names: tuple[str | None, ...], dims: tuple[int, ...], mesh_shape: dict[str, int], rules: Rules
) -> tuple[PartitionSpec, list[str]]:
    """The mesh spec of logical `names` for an array of shape `dims`, each entry that names no axis of the
    mesh or whose mesh size does not divide its dimension replaced by None (replicated).

    Returns the spec and one note per replaced entry.
    """
    spec = nn.logical_to_mesh_axes(names, rules)
    fitted, notes = [], []
    for i, (dim, axes) in enumerate(zip(dims, tuple(spec) + (None,) * (len(dims) - len(spec)))):
        named = (axes,) if isinstance(axes, str) else axes if isinstance(axes, tuple) else ()
        if axes is not None and not set(named) <= set(mesh_shape):
            notes.append(f"dimension {i} ({dim}) has logical name {names[i]!r}, which is no mesh axis")
            axes = None
        elif dim % mesh_size(mesh_shape, axes):
            notes.append(
                f"dimension {i} ({dim}) is not divisible by mesh axes {axes} "
                f"(size {mesh_size(mesh_shape, axes)})"
            )
            axes = None
        fitted.append(axes)
    return PartitionSpec(*fitted), notes


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Constrains activation `x`'s sharding to logical axis `names` (one per dimension).

    Active only inside `nn.logical_axis_rules(...)` and a mesh context (`jax.set_mesh`); elsewhere it
    returns `x` unchanged. Like `nn.with_logical_constraint`, but a mesh axis that does not divide its
    dimension (a batch of 3 on 8 devices, 2 heads on 4 tensor shards) is dropped from the constraint
    instead of failing, so any model runs on any mesh.
    """
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {names} for an array of shape {x.shape}.")
    spec, _ = fit_spec(names, x.shape, dict(mesh.shape), rules)
    return jax.lax.with_sharding_constraint(x, spec)
