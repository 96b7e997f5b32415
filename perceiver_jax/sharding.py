"""Logical axis names carried by every parameter, and the default rules mapping them onto a mesh.

Each parameter is created with `nn.with_logical_partitioning`, so its metadata names what each of its
dimensions is. A trainer turns those names into mesh axes with `logical_axis_rules` (see
`train/`); models stay unaware of the mesh. The mesh has three axes:

- `data`: pure data parallelism (parameters replicated);
- `fsdp`: data parallelism with parameters and optimiser state sharded over their `embed` dimension;
- `tensor`: tensor (model) parallelism over attention channels, MLP hidden units and the vocabulary.
"""

import flax.linen as nn
import jax

# Logical names of parameter dimensions.
EMBED = "embed"  # a model width: d_model, d_latents, query/input channels
HEADS = "heads"  # query/key/value channels (all heads side by side)
MLP = "mlp"  # MLP hidden units
VOCAB = "vocab"  # token vocabulary
LATENTS = "latents"  # the N latent vectors
POSITIONS = "positions"  # rows of a learned position table or decoder queries
CLASSES = "classes"  # classifier outputs
LAYERS = "layers"  # stacked (scanned) layers
CONV_SPATIAL = "conv_spatial"  # convolution kernel height / width

# Logical names of activation dimensions.
BATCH = "batch"
LENGTH = "length"

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (MLP, "tensor"),
    (VOCAB, "tensor"),
    (LATENTS, None),
    (POSITIONS, None),
    (CLASSES, None),
    (LAYERS, None),
    (CONV_SPATIAL, None),
    (LENGTH, None),
)


def dense_kernel_init(std: float) -> jax.nn.initializers.Initializer:
    """Normal(0, std) initialiser, HF's init for Linear/Embedding weights, latents and position tables."""
    return jax.nn.initializers.normal(stddev=std)


def partitioned(init, *names: str | None):
    """Wraps an initialiser so the created parameter carries logical axis `names` (one per dimension)."""
    return nn.with_logical_partitioning(init, names)
