"""The trainer: `train_and_evaluate(config, workdir)`, one readable loop in commented sections.

setup (task, mesh, model, optimiser, data) -> state (abstract -> shardings -> sharded init, then resume
from the newest checkpoint or fine-tune from `config.init_from`) -> jitted steps -> loop (progress bar,
metrics, eval, checkpoints, non-finite loss guard) -> end (loss curve, summary, Hugging Face export).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.contrib.logging import logging_redirect_tqdm

from perceiver_jax import HEADS, Settings
from train import checkpoint, data, optim, partitioning, report, tasks

log = logging.getLogger("train")
# Parameter subtrees `config.init_from` copies from a pretraining run: shared by all heads of a modality.
PRETRAINED = ("input_preprocessor", "encoder")


@struct.dataclass
class TrainState:
    """What a step updates: `step` int32 `()`, `params`, `opt_state`, `rng` uint32 `(2,)` (dropout key)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    task: tasks.Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_shardings: Any,
    accum: int,
    label_smoothing: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a global batch (arrays `(B, ...)`), accumulating gradients over `accum`
    micro-batches (micro-batch a holds rows a, a + accum, ...: each device keeps its own rows).

    Losses are summed over micro-batches and divided by the total weight, so the update equals the one of
    a single batch. Returns the new state and metrics (loss, accuracy, grad_norm, learning_rate).
    """
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)
    dropout = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params, batch, rng):
        logits = model.apply(
            {"params": params},
            **{k: batch[k] for k in task.inputs},
            deterministic=False,
            rngs={"dropout": rng},
        )
        sums = task.loss(logits, batch, label_smoothing)
        return sums["loss"], sums

    def accumulate(grads, xs):
        i, batch = xs
        g, sums = jax.grad(loss_fn, has_aux=True)(state.params, batch, jax.random.fold_in(dropout, i))
        return jax.tree.map(jnp.add, grads, g), sums

    zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, state.params), grad_shardings)
    grads, sums = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
    sums = jax.tree.map(lambda x: x.sum(0), sums)
    weight = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = dict(
        loss=sums["loss"] / weight,
        accuracy=sums["correct"] / weight,
        grad_norm=optax.tree.norm(grads),
        learning_rate=schedule(state.step),
    )
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    return new_state, metrics


def eval_step(
    params: Any, batch: dict[str, jax.Array], *, model: nn.Module, task: tasks.Task
) -> dict[str, jax.Array]:
    """Loss sums of a global eval batch (no dropout, no label smoothing); see `tasks.classification_sums`."""
    return task.loss(model.apply({"params": params}, **{k: batch[k] for k in task.inputs}), batch)


def _check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Raises ValueError unless every micro-batch splits evenly over the batch shards."""
    batch, accum, shards = config.global_batch_size, config.grad_accum_steps, partitioning.batch_shards(mesh)
    if accum < 1 or batch < 1 or batch % (accum * shards):
        raise ValueError(
            f"config.global_batch_size={batch} must be a positive multiple of grad_accum_steps={accum} x the "
            f"batch shards (mesh data x fsdp = {shards}) = {max(accum, 1) * shards}."
        )


def _save_pretrained():
    """`perceiver_jax.save_pretrained`, imported lazily (`config.export_hf`); clear error if missing."""
    try:
        from perceiver_jax import save_pretrained
    except ImportError as e:
        raise ImportError(
            "config.export_hf=True needs perceiver_jax.save_pretrained (perceiver_jax/hf.py)."
        ) from e
    return save_pretrained


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` in `workdir` (resuming from its newest checkpoint), evaluates on the held-out
    split, writes metrics, checkpoints and `loss_curve.png`, and returns the final summary.

    Raises ValueError / FileNotFoundError for a bad config (before any compilation) and FloatingPointError
    when the loss becomes NaN or infinite (the checkpoints written before are kept).
    """
    start_time = time.perf_counter()
    primary = jax.process_index() == 0

    # --- Setup: task, mesh, model, optimiser, data.
    task = tasks.get_task(config.task)
    mesh = partitioning.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    _check_batch(config, mesh)
    if config.export_hf:
        _save_pretrained()
    model_config = task.model_config(config)
    settings = Settings(
        dtype=config.dtype, remat=config.remat, attention_implementation=config.attention_implementation
    )
    model = HEADS[task.head](model_config, settings=settings)
    schedule = optim.learning_rate_schedule(config)
    tx = optim.make_optimizer(config, schedule)
    train_source, eval_source = task.sources(config, model_config)
    batch_size, batch_sharding = config.global_batch_size, partitioning.batch_sharding(mesh)
    rows = data.local_rows(batch_sharding, batch_size)
    train_iter = data.BatchIterator(train_source, batch_size, rows, config.data.seed)
    log.info("mesh %s; %d train / %d eval examples", dict(mesh.shape), len(train_source), len(eval_source))

    # --- State: abstract shapes -> shardings -> initialised in place, restored, or fine-tuned from.
    example = {k: v[None] for k, v in train_source(0, np.random.default_rng(0)).items()}

    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        params = model.init(params_rng, **{k: example[k] for k in task.inputs})["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), dropout_rng)

    rng = jax.random.PRNGKey(config.seed)
    boxed = jax.eval_shape(init, rng)
    shardings = partitioning.state_shardings(boxed, mesh)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), shardings
    )
    meta = dict(task=config.task, model_config=model_config.to_dict())
    ckpt = checkpoint.Checkpointer(
        workdir, meta, config.checkpoint_every, config.max_checkpoints, config.async_checkpointing
    )
    restored = ckpt.restore(abstract)
    if restored is not None:
        state, data_state = restored
        train_iter.restore(data_state)
        log.info("resumed from step %d in %s", int(state.step), ckpt.directory)
    else:
        state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
        if config.init_from:
            wanted = {"perceiver": {k: abstract.params["perceiver"][k] for k in PRETRAINED}}
            loaded = checkpoint.load_params(config.init_from, wanted, model_config)
            params = {**state.params, "perceiver": {**state.params["perceiver"], **loaded["perceiver"]}}
            state = state.replace(params=params)
            log.info("initialised %s from %s", "/".join(PRETRAINED), config.init_from)
    start_step = int(state.step)
    leaves = jax.tree.leaves(state.params)
    sizes = dict(
        parameters=sum(x.size for x in leaves),
        param_bytes=sum(x.nbytes for x in leaves),
        param_bytes_per_device=sum(x.addressable_shards[0].data.nbytes for x in leaves),
    )
    log.info(
        "%(parameters)d parameters, %(param_bytes)d bytes, %(param_bytes_per_device)d on one device", sizes
    )

    # --- Steps: jitted with explicit shardings; the state is donated.
    replicated = NamedSharding(mesh, PartitionSpec())
    p_train_step = jax.jit(
        functools.partial(
            train_step,
            model=model,
            task=task,
            tx=tx,
            schedule=schedule,
            grad_shardings=shardings.params,
            accum=config.grad_accum_steps,
            label_smoothing=config.label_smoothing,
        ),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    p_eval_step = jax.jit(
        functools.partial(eval_step, model=model, task=task),
        in_shardings=(shardings.params, batch_sharding),
        out_shardings=replicated,
    )

    def evaluate(params) -> dict[str, float]:
        sums = None
        for local in data.eval_batches(
            eval_source, batch_size, rows, config.data.seed, config.num_eval_batches
        ):
            out = p_eval_step(params, data.to_global(local, batch_sharding, batch_size))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        sums = jax.device_get(sums)
        weight = max(float(sums["weight"]), 1.0)
        return dict(
            loss=sums["loss"] / weight,
            accuracy=sums["correct"] / weight,
            baseline=sums["target_counts"].max() / weight,
        )

    # --- Loop.
    total, tokens_per_step = config.num_train_steps, batch_size * config.data.seq_len
    writer = report.MetricsWriter(workdir, start_step, enabled=primary)
    bar = tqdm.tqdm(
        total=total,
        initial=start_step,
        disable=not primary,
        unit="step",
        dynamic_ncols=True,
        desc=config.task,
    )
    eval_metrics, first_step_seconds, step = None, None, start_step
    tick = time.perf_counter()
    try:
        with logging_redirect_tqdm([log]):
            while step < total:
                state, metrics = p_train_step(
                    state, data.to_global(next(train_iter), batch_sharding, batch_size)
                )
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                step += 1
                if not np.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"the training loss is {metrics['loss']} at step {step}: stopping. The last good checkpoint "
                        f"(step {ckpt.wait()}) is kept in {ckpt.directory}; lower config.learning_rate or use "
                        "config.clip_grad_norm, then rerun to resume from it."
                    )
                seconds = time.perf_counter() - tick
                first_step_seconds = first_step_seconds or seconds  # includes compilation
                metrics.update(examples_per_s=batch_size / seconds, tokens_per_s=tokens_per_step / seconds)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}",
                    ex_s=f"{metrics['examples_per_s']:.1f}",
                    tok_s=f"{metrics['tokens_per_s']:.0f}",
                )
                bar.update()
                if step % config.log_every == 0 or step == total:
                    writer.write(step, "train", metrics)
                if step % config.eval_every == 0 or step == total:
                    eval_metrics = evaluate(state.params)
                    writer.write(step, "eval", eval_metrics)
                    log.info(
                        "step %d eval: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items())
                    )
                stop = step == config.stop_after_step
                ckpt.save(step, state, train_iter.state(), force=step == total or stop)
                if stop:
                    log.info("stopping after step %d (config.stop_after_step); rerun to resume", step)
                    break
                tick = time.perf_counter()
    finally:
        bar.close()
        writer.close()
        ckpt.close()

    # --- End: final eval, export, loss curve, summary (a run stopped early skips eval and export).
    summary = dict(
        task=config.task,
        step=step,
        num_train_steps=total,
        seconds=time.perf_counter() - start_time,
        first_step_seconds=first_step_seconds,
        **sizes,
    )
    if step == total:
        eval_metrics = eval_metrics or evaluate(state.params)
        summary.update(accuracy_name=task.accuracy_name, baseline_name=task.baseline_name)
        summary.update({f"eval_{k}": float(v) for k, v in eval_metrics.items()})
        if config.export_hf:
            params = multihost_utils.process_allgather(state.params, tiled=True)
            if primary:
                _save_pretrained()(model, {"params": params}, os.path.join(workdir, "hf"))
                log.info("exported the model to %s", os.path.join(workdir, "hf"))
    if primary:
        summary["loss_curve"] = report.plot_curves(workdir, task.accuracy_name, task.baseline_name)
        report.write_summary(workdir, summary)
    return summary
