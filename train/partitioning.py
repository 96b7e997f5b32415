"""The device mesh ('data', 'fsdp', 'tensor') and the shardings of the train state and of batches.

Parameters carry logical axis names (`perceiver_jax.sharding`); `DEFAULT_RULES` map them onto the mesh.
A parameter dimension that its mesh axes do not divide is replicated instead (and logged), so any mesh
shape can hold any model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

from perceiver_jax.sharding import BATCH, DEFAULT_RULES

MESH_AXES = ("data", "fsdp", "tensor")
log = logging.getLogger("train")


def make_mesh(data: int, fsdp: int, tensor: int) -> jax.sharding.Mesh:
    """A mesh of shape (data, fsdp, tensor) with Auto axis types; one size may be -1 (all remaining
    devices). Uses the first data*fsdp*tensor devices; raises ValueError if there are not enough."""
    sizes = [data, fsdp, tensor]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(
            f"config.mesh sizes must be positive, with at most one -1; got {dict(zip(MESH_AXES, sizes))}."
        )
    count = jax.device_count()
    if -1 in sizes:
        known = -math.prod(sizes)
        if count % known:
            raise ValueError(
                f"config.mesh {dict(zip(MESH_AXES, sizes))}: {count} devices are not a multiple of {known}."
            )
        sizes[sizes.index(-1)] = count // known
    needed = math.prod(sizes)
    if needed > count:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {needed} devices, but only {count} are available."
        )
    if jax.process_count() > 1 and needed != count:
        raise ValueError(f"with several processes the mesh must use all {count} devices, not {needed}.")
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=jax.devices()[:needed])


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the mesh axes the 'batch' rule names, the rest replicated."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes((BATCH,), DEFAULT_RULES))


def _size(mesh: jax.sharding.Mesh, axes: str | tuple[str, ...] | None) -> int:
    """Number of devices along mesh axes `axes` (a PartitionSpec entry)."""
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))


def batch_shards(mesh: jax.sharding.Mesh) -> int:
    """How many ways a batch is split (data * fsdp with the default rules)."""
    return _size(mesh, batch_sharding(mesh).spec[0])


def _fit(names: tuple, shape: tuple[int, ...], mesh: jax.sharding.Mesh, notes: set[str]) -> PartitionSpec:
    """The mesh spec of logical `names` under `DEFAULT_RULES`, with every entry that is not made of mesh axes
    or whose mesh size does not divide its dimension replaced by None (replicated, and noted)."""
    spec = nn.logical_to_mesh_axes(names, DEFAULT_RULES)
    fitted = []
    for i, (dim, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        where = f"parameters {names} of shape {shape}: dimension {i} ({dim})"
        named = (axes,) if isinstance(axes, str) else axes if isinstance(axes, tuple) else (None,)
        if axes is not None and not set(named) <= set(mesh.axis_names):
            notes.add(
                f"{where} has logical name {names[i]!r}, which is no axis name; that dimension is replicated"
            )
            axes = None
        elif dim % _size(mesh, axes):
            notes.add(
                f"{where} is not divisible by mesh axes {axes} (size {_size(mesh, axes)}); it is replicated"
            )
            axes = None
        fitted.append(axes)
    return PartitionSpec(*fitted)


def state_shardings(abstract: Any, mesh: jax.sharding.Mesh) -> Any:
    """Shardings of a state whose parameter leaves are `nn.Partitioned` boxes (e.g. `jax.eval_shape` of an
    init returning boxed params and optimiser state): a box becomes the `NamedSharding` of its logical names
    under `DEFAULT_RULES` (its value's place in the unboxed tree), any other leaf is replicated."""
    notes: set[str] = set()

    def sharding(leaf):
        if not isinstance(leaf, nn.Partitioned):
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, _fit(leaf.names, leaf.value.shape, mesh, notes))

    shardings = jax.tree.map(sharding, abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for note in sorted(notes):
        log.info(note)
    return shardings
