"""Everything a run compiles, built from the config and a mesh without reading data: the model, the
optimiser, the state's abstract shapes and shardings, the batch's, and the jitted init / train / eval.

`train.trainer` runs what `build` returns; `train.aot` compiles the very same functions for a TPU
topology on a CPU machine. Tracing happens under the config's logical-axis rules and the mesh
(`jax.set_mesh`), which is what makes the modules' activation constraints split the batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from perceiver_jax import HEADS, PerceiverConfig, Settings
from perceiver_jax.sharding import Rules
from train import optim, partitioning
from train.steps import Step, TrainState
from train.tasks import Task


@dataclasses.dataclass
class Run:
    """What `build` returns.

    Attributes:
      step: the bound train / eval computations (`train.steps.Step`).
      mesh, rules: the device mesh and the logical-axis rules.
      state_shardings, abstract_state: `TrainState`s of `NamedSharding`s and of `jax.ShapeDtypeStruct`s
        (with those shardings).
      batch_sharding, abstract_batch: the same for a global batch.
      init: jitted rng -> `TrainState`, created sharded.
      train_step: jitted (state, batch) -> (state, loss sums, {grad_norm, learning_rate}); the state is
        donated.
      eval_step: jitted (params, model_state, batch) -> loss sums.
    """

    step: Step
    mesh: jax.sharding.Mesh
    rules: Rules
    state_shardings: Any
    abstract_state: Any
    batch_sharding: NamedSharding
    abstract_batch: dict[str, jax.ShapeDtypeStruct]
    init: Callable
    train_step: Callable
    eval_step: Callable

    def context(self):
        """The context every call must run in: the mesh and the logical-axis rules."""
        return context(self.mesh, self.rules)


@contextlib.contextmanager
def context(mesh: jax.sharding.Mesh, rules: Rules):
    """Traces and runs under `mesh` (`jax.set_mesh`) and the logical-axis `rules`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def settings_of(config: ml_collections.ConfigDict) -> Settings:
    """The model's `Settings` from `config.dtype`, `remat`, `attention_implementation`, `unroll_layers`."""
    return Settings(
        dtype=config.dtype,
        remat=config.remat,
        attention_implementation=config.attention_implementation,
        unroll_layers=config.unroll_layers,
    )


def model_config_of(
    config: ml_collections.ConfigDict, labels: tuple[str, ...] | None = None
) -> PerceiverConfig:
    """The `PerceiverConfig` of `config.model`, with the data's class names as `id2label` when given."""
    model_config = PerceiverConfig.from_dict(config.model.to_dict())
    if labels is not None:
        model_config = model_config.replace(id2label=dict(enumerate(labels)), label2id=None)
    return model_config


def build(
    config: ml_collections.ConfigDict,
    task: Task,
    model_config: PerceiverConfig,
    mesh: jax.sharding.Mesh,
) -> Run:
    """Builds the run of `config` for `task` and `model_config` on `mesh` (see the module docstring)."""
    rules = partitioning.as_rules(config.sharding_rules)
    shards = partitioning.batch_shards(mesh, rules)
    batch, accum = config.global_batch_size, config.grad_accum_steps
    if accum < 1 or batch < 1 or batch % (accum * shards):
        raise ValueError(
            f"config.global_batch_size={batch} must be a positive multiple of grad_accum_steps={accum} x the "
            f"batch shards (mesh data x fsdp = {shards}) = {max(accum, 1) * shards}."
        )
    settings = settings_of(config)
    model = HEADS[task.head](model_config, settings=settings)
    train_config = task.train_model_config(config, model_config) if task.train_model_config else model_config
    train_model = HEADS[task.head](train_config, settings=settings)
    schedule = optim.learning_rate_schedule(config)
    tx = optim.make_optimizer(config, schedule)

    example = jax.tree.map(lambda x: np.asarray(x)[None], task.example(config, model_config))

    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        kwargs, _, _ = task.prepare(jax.tree.map(jnp.asarray, example), None, config, model_config)
        variables = dict(model.init(params_rng, **kwargs))
        params = variables.pop("params")
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), variables, dropout_rng)

    key = jax.random.key(config.seed)  # made outside the mesh: its devices may be abstract (AOT)
    with context(mesh, rules):
        boxed = jax.eval_shape(init, key)
    state_shardings = partitioning.state_shardings(boxed, mesh, rules)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), state_shardings
    )
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    abstract_batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype, sharding=batch_sharding), example
    )
    step = Step(task, config, model_config, model, train_model, tx, schedule, state_shardings.params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return Run(
        step=step,
        mesh=mesh,
        rules=rules,
        state_shardings=state_shardings,
        abstract_state=abstract_state,
        batch_sharding=batch_sharding,
        abstract_batch=abstract_batch,
        init=jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=state_shardings),
        train_step=jax.jit(
            step.train,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, replicated, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(
            step.eval,
            in_shardings=(state_shardings.params, state_shardings.model_state, batch_sharding),
            out_shardings=replicated,
        ),
    )
