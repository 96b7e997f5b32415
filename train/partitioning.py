"""The device mesh ('data', 'fsdp', 'tensor') and the shardings of the train state and of batches.

Parameters and activations carry logical axis names (`perceiver_jax.sharding`); `config.sharding_rules`
(default `perceiver_jax.sharding.DEFAULT_RULES`) map them onto the mesh. A dimension that its mesh axes
do not divide is replicated instead (and logged), so any mesh shape can hold any model.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

from perceiver_jax.sharding import BATCH, Rules, fit_spec, mesh_size

MESH_AXES = ("data", "fsdp", "tensor")
log = logging.getLogger("train")


def mesh_sizes(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """The mesh shape for `num_devices`: the given sizes, one of which may be -1 (all remaining
    devices). Raises ValueError for impossible sizes."""
    sizes = [data, fsdp, tensor]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(
            f"config.mesh sizes must be positive, with at most one -1; got {dict(zip(MESH_AXES, sizes))}."
        )
    if -1 in sizes:
        known = -math.prod(sizes)
        if num_devices % known:
            raise ValueError(
                f"config.mesh {dict(zip(MESH_AXES, sizes))}: "
                f"{num_devices} devices are not a multiple of {known}."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) > num_devices:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but only "
            f"{num_devices} are available."
        )
    return tuple(sizes)


def make_mesh(data: int, fsdp: int, tensor: int, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """A mesh of shape (data, fsdp, tensor) with Auto axis types (one size may be -1) over the first
    data * fsdp * tensor of `devices` (default: `jax.devices()`; TPU topology devices for AOT)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(data, fsdp, tensor, len(devices))
    needed = math.prod(sizes)
    if jax.process_count() > 1 and needed != len(devices):
        raise ValueError(
            f"with several processes the mesh must use all {len(devices)} devices, not {needed}."
        )
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len({getattr(d, "core_on_chip", 0) for d in devices}) > 1:  # TPU v4 topologies list each core
        return jax.sharding.Mesh(np.asarray(devices[:needed]).reshape(sizes), MESH_AXES, axis_types=auto)
    try:
        return jax.make_mesh(sizes, MESH_AXES, axis_types=auto, devices=devices[:needed])
    except NotImplementedError:  # a size that is no product of physical axes (8 on a 4x4x4 slice): split them
        grid = mesh_utils.create_device_mesh(sizes, devices[:needed], allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=auto)


def as_rules(rules: Sequence[Sequence[Any]]) -> Rules:
    """`config.sharding_rules` (pairs of a logical name and a mesh axis, a tuple of mesh axes or None) as
    the tuple of tuples flax takes; raises ValueError naming a malformed rule or an unknown mesh axis."""
    fixed = []
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(
                f"config.sharding_rules entries must be (logical name, mesh axes); got {rule!r}."
            )
        name, axes = rule
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        unknown = [a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"config.sharding_rules: {name!r} maps to {unknown}, not mesh axes of {MESH_AXES}."
            )
        fixed.append((name, axes))
    return tuple(fixed)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
    """Leading (batch) dimension split over the mesh axes the 'batch' rule names, the rest replicated."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes((BATCH,), rules))


def batch_shards(mesh: jax.sharding.Mesh, rules: Rules) -> int:
    """How many ways a batch is split (data * fsdp with the default rules)."""
    return mesh_size(dict(mesh.shape), batch_sharding(mesh, rules).spec[0])


def state_shardings(abstract: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    """Shardings of a state whose parameter leaves are `nn.Partitioned` boxes (e.g. `jax.eval_shape` of an
    init returning boxed params and optimiser state): a box becomes the `NamedSharding` of its logical names
    under `rules` (its value's place in the unboxed tree), any other leaf is replicated."""
    notes: set[str] = set()

    def sharding(leaf):
        if not isinstance(leaf, nn.Partitioned):
            return NamedSharding(mesh, PartitionSpec())
        spec, replaced = fit_spec(leaf.names, leaf.value.shape, dict(mesh.shape), rules)
        notes.update(
            f"parameters {leaf.names} of shape {leaf.value.shape}: {note}; it is replicated"
            for note in replaced
        )
        return NamedSharding(mesh, spec)

    shardings = jax.tree.map(sharding, abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for note in sorted(notes):
        log.info(note)
    return shardings
