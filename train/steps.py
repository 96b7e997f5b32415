"""The train state and the two jitted computations of a run: one optimiser step, one eval batch.

Both are pure functions of their arguments and the `Step` they are bound to (model, task, optimiser), so
the trainer, `train.aot` and the benchmarks compile exactly the same program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from perceiver_jax import PerceiverConfig
from train.tasks import Task


@struct.dataclass
class TrainState:
    """What a step updates: `step` int32 `()`, `params`, `opt_state`, `model_state` (the model's mutable
    collections, e.g. {'batch_stats': ...} of the conv stem's BatchNorm; {} for most heads) and `rng`
    (the run's key; each step folds in its number)."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: `jax.jit` keys on the bound methods
class Step:
    """The pieces a step needs (bound with `functools.partial`-like methods, hashable for `jax.jit`).

    Attributes:
      task: the task (prepare, loss).
      config: the trainer config (accumulation, label smoothing, task settings).
      model: the model evaluated and exported; `train_model` the one trained (the same parameters;
        `Task.train_model_config` may differ, e.g. in label masking).
      tx: the optimiser; schedule: its learning rate per step.
      grad_shardings: shardings of the gradients (the parameters').
    """

    task: Task
    config: ml_collections.ConfigDict
    model_config: PerceiverConfig
    model: nn.Module
    train_model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    grad_shardings: Any

    def train(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict, dict]:
        """One optimiser step on a global batch (arrays `(B, ...)`), accumulating gradients over
        `config.grad_accum_steps` micro-batches (micro-batch a holds rows a, a + accum, ...: each device
        keeps its own rows). Loss sums are divided by the total weight, so the update equals that of one
        batch. Returns the new state, the batch's loss sums and {grad_norm, learning_rate}."""
        accum = self.config.grad_accum_steps
        micro = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch
        )
        step_rng = jax.random.fold_in(state.rng, state.step)
        mutable = list(state.model_state)

        def loss_fn(params, model_state, batch, rng):
            prepare_rng, dropout_rng = jax.random.split(rng)
            kwargs, rngs, batch = self.task.prepare(batch, prepare_rng, self.config, self.model_config)
            outputs, model_state = self.train_model.apply(
                {"params": params, **model_state},
                **kwargs,
                deterministic=False,
                rngs={"dropout": dropout_rng, **rngs},
                mutable=mutable,
            )
            sums = self.task.loss(outputs, batch, self.config, True)
            return sums["loss"], (sums, model_state)

        def accumulate(carry, xs):
            grads, model_state = carry
            i, batch = xs
            rng = jax.random.fold_in(step_rng, i)
            g, (sums, model_state) = jax.grad(loss_fn, has_aux=True)(state.params, model_state, batch, rng)
            return (jax.tree.map(jnp.add, grads, g), model_state), sums

        zeros = jax.lax.with_sharding_constraint(
            jax.tree.map(jnp.zeros_like, state.params), self.grad_shardings
        )
        unroll = self.train_model.settings.unroll_layers or 1
        (grads, model_state), sums = jax.lax.scan(
            accumulate, (zeros, state.model_state), (jnp.arange(accum), micro), unroll=unroll
        )
        sums = jax.tree.map(lambda x: x.sum(0), sums)
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        stats = dict(grad_norm=optax.tree.norm(grads), learning_rate=self.schedule(state.step))
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            model_state=model_state,
        )
        return new_state, sums, stats

    def eval(self, params: Any, model_state: Any, batch: dict[str, jax.Array]) -> dict:
        """Loss sums of a global eval batch (no dropout, no augmentation, running batch statistics)."""
        kwargs, rngs, batch = self.task.prepare(batch, None, self.config, self.model_config)
        outputs = self.model.apply({"params": params, **model_state}, **kwargs, rngs=rngs)
        return self.task.loss(outputs, batch, self.config, False)
