"""The trainer: `train_and_evaluate(config, workdir)`, one readable loop in commented sections.

setup (config checks, workdir lock, task, data, mesh, `build`) -> state (the newest readable checkpoint,
else a sharded init, optionally fine-tuned from `config.init_from`) -> data iterator (Grain, at the
checkpoint's position) -> loop (steps dispatched without waiting; metrics fetched at log, eval and
checkpoint steps; a non-finite loss stops the run before any bad state is saved) -> end (final eval,
Hugging Face export, loss curve, summary).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from tqdm.contrib.logging import logging_redirect_tqdm

from train import build, checkpoint, config_checks, partitioning, pipeline, report
from perceiver_jax import PerceiverConfig
from train.tasks import Data, Task, get_task

log = logging.getLogger("train")
# Parameter subtrees `config.init_from` copies from a pretrained model: shared by all heads of a modality.
PRETRAINED = ("input_preprocessor", "encoder")


def _add(a: Any, b: Any) -> Any:
    return b if a is None else jax.tree.map(lambda x, y: x + y, a, b)


def _initial_state(run: build.Run, config: ml_collections.ConfigDict, task, model_config) -> Any:
    """A fresh sharded state; with `config.init_from`, its preprocessor and encoder from that model."""
    state = run.init(jax.random.key(config.seed))
    if not config.init_from:
        return state
    abstract = {"params": run.abstract_state.params, **run.abstract_state.model_state}
    loaded = checkpoint.load_pretrained(config.init_from, abstract, model_config, task.head, PRETRAINED)
    params = {**state.params, "perceiver": {**state.params["perceiver"], **loaded["params"]["perceiver"]}}
    model_state = {
        c: {**tree, "perceiver": {**tree["perceiver"], **loaded[c]["perceiver"]}}
        for c, tree in state.model_state.items()
    }
    fresh = sorted(set(state.params["perceiver"]) - set(loaded["params"]["perceiver"]))
    log.info(
        "initialised %s from %s; freshly initialised: %s",
        "/".join(sorted(loaded["params"]["perceiver"])),
        config.init_from,
        ", ".join(fresh + [k for k in state.params if k != "perceiver"]) or "nothing",
    )
    return state.replace(params=params, model_state=model_state)


def setup(config: ml_collections.ConfigDict, workdir: str) -> tuple[Task, Data, PerceiverConfig, build.Run]:
    """The task of `config`, its data (which may write into `workdir`, e.g. a demo set), the model config
    with the data's class names, and the run built on the config's mesh."""
    task = get_task(config.task)
    data = task.data(config, build.model_config_of(config), workdir)
    model_config = build.model_config_of(config, data.labels)
    mesh = partitioning.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    return task, data, model_config, build.build(config, task, model_config, mesh)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` in `workdir` (resuming from its newest readable checkpoint), evaluates on the
    held-out split, writes metrics, checkpoints, `loss_curve.png` and `summary.json`, and returns the summary.

    Raises ValueError / FileNotFoundError for a bad config or data (before any compilation),
    RuntimeError when another trainer holds the workdir, FloatingPointError when the loss becomes NaN or
    infinite (the checkpoints written before are kept) and `checkpoint.CheckpointWriteError` when a
    checkpoint cannot be written.
    """
    start_time = time.perf_counter()
    primary = jax.process_index() == 0
    config_checks.check(config)
    lock = checkpoint.WorkdirLock(workdir) if primary else None
    try:
        return _train_locked(config, workdir, start_time, primary)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: str, start_time: float, primary: bool) -> dict:
    """`train_and_evaluate`'s run, with the config checked and the workdir locked."""
    # --- Setup: task, data, mesh, the compiled functions.
    task, data, model_config, run = setup(config, workdir)
    batch_size = config.global_batch_size
    rows = pipeline.local_rows(run.batch_sharding, batch_size)
    log.info("mesh %s; %d train / %d eval examples", dict(run.mesh.shape), len(data.train), len(data.eval))

    def batches(start_batch: int):
        return pipeline.train_batches(
            data.train,
            data.train_transform,
            global_batch=batch_size,
            rows=rows,
            seed=config.data.seed,
            num_workers=config.data.num_workers,
            start_batch=start_batch,
        )

    # --- State: the newest readable checkpoint, or initialised in place (and fine-tuned from).
    meta = dict(
        task=config.task, model_config=model_config.to_dict(), settings=config_checks.state_settings(config)
    )
    ckpt = checkpoint.Checkpointer(
        workdir, meta, config.checkpoint_every, config.max_checkpoints, config.async_checkpointing
    )
    restored = ckpt.restore(run.abstract_state, batches(0))
    if restored is not None:
        state, train_iter = restored
        if train_iter is None:  # written by another number of processes: its position is the step
            train_iter = batches(int(state.step))
        log.info("resumed from step %d in %s", int(state.step), ckpt.directory)
    else:
        state, train_iter = _initial_state(run, config, task, model_config), batches(0)
    start_step = int(state.step)
    config_checks.check_resume(config, start_step, ckpt.directory)
    leaves = jax.tree.leaves(state.params)
    sizes = dict(
        parameters=sum(x.size for x in leaves),
        param_bytes=sum(x.nbytes for x in leaves),
        param_bytes_per_device=sum(x.addressable_shards[0].data.nbytes for x in leaves),
    )
    log.info(
        "%(parameters)d parameters, %(param_bytes)d bytes, %(param_bytes_per_device)d on one device", sizes
    )

    def evaluate(state) -> dict[str, float]:
        sums = None
        for local in pipeline.eval_batches(
            data.eval,
            data.eval_transform,
            global_batch=batch_size,
            rows=rows,
            seed=config.data.seed,
            max_batches=config.num_eval_batches,
        ):
            batch = pipeline.to_global(local, run.batch_sharding, batch_size)
            sums = _add(sums, run.eval_step(state.params, state.model_state, batch))
        metrics = task.summarize(jax.device_get(sums))
        if task.report is not None:
            variables = {"params": state.params, **state.model_state}
            metrics.update(
                task.report(run.step.model, variables, data, config, model_config, workdir, int(state.step))
            )
        return metrics

    def fetch(sums, stats, steps: int, seconds: float) -> dict[str, float]:
        """Summaries of the loss sums of the last `steps` steps; raises on a non-finite loss."""
        metrics = task.summarize(jax.device_get(sums))
        metrics.update({k: float(v) for k, v in jax.device_get(stats).items()})
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"the training loss is {metrics['loss']} at step {step}: stopping. The last good checkpoint "
                f"(step {ckpt.wait()}) is kept in {ckpt.directory}; lower config.learning_rate or use "
                "config.clip_grad_norm, then rerun to resume from it."
            )
        if steps:
            metrics.update(steps_per_s=steps / seconds, examples_per_s=steps * batch_size / seconds)
        return metrics

    # --- Loop: steps are dispatched without waiting; the host syncs at log / eval / checkpoint steps only.
    total = config.num_train_steps
    writer = report.MetricsWriter(workdir, start_step, enabled=primary)
    bar = tqdm.tqdm(total=total, initial=start_step, disable=not primary, unit="step", dynamic_ncols=True)
    eval_metrics, first_step_seconds, step = None, None, start_step
    window_sums, window_steps, timed_steps, timed_seconds = None, 0, 0, 0.0
    tick = time.perf_counter()
    try:
        with logging_redirect_tqdm([log]), run.context():
            while step < total:
                batch = pipeline.to_global(next(train_iter), run.batch_sharding, batch_size)
                state, sums, stats = run.train_step(state, batch)
                step += 1
                window_sums, window_steps = _add(window_sums, sums), window_steps + 1
                if first_step_seconds is None:  # compilation: timed apart from the steady state
                    jax.block_until_ready(state)
                    first_step_seconds, tick, window_steps = (
                        time.perf_counter() - tick,
                        time.perf_counter(),
                        0,
                    )
                stop = step == config.stop_after_step
                log_now = step % config.log_every == 0 or step == total or stop
                eval_now = step % config.eval_every == 0 or step == total
                save_now = ckpt.manager.should_save(step) or step == total or stop
                if log_now or eval_now or save_now:
                    jax.block_until_ready(window_sums)  # the window's steps have run
                    seconds = time.perf_counter() - tick
                    metrics = fetch(window_sums, stats, window_steps, seconds)
                    timed_steps, timed_seconds = timed_steps + window_steps, timed_seconds + seconds
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                    if log_now:
                        writer.write(step, "train", metrics)
                    if eval_now:
                        eval_metrics = evaluate(state)
                        writer.write(step, "eval", eval_metrics)
                        log.info(
                            "step %d eval: %s",
                            step,
                            ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()),
                        )
                    ckpt.save(step, state, train_iter, force=step == total or stop)
                    window_sums, window_steps, tick = None, 0, time.perf_counter()
                bar.update()
                if stop:
                    log.info("stopping after step %d (config.stop_after_step); rerun to resume", step)
                    break
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
        steps_per_second=timed_steps / timed_seconds if timed_seconds else None,
        **sizes,
    )
    if step == total:
        with run.context():
            eval_metrics = eval_metrics or evaluate(state)
        summary.update(
            headline=task.headline, headline_name=task.headline_name, baseline_name=task.baseline_name
        )
        summary.update({f"eval_{k}": float(v) for k, v in eval_metrics.items()})
        if config.export_hf:
            from perceiver_jax import save_pretrained

            variables = multihost_utils.process_allgather(
                {"params": state.params, **state.model_state}, tiled=True
            )
            if primary:
                save_pretrained(run.step.model, variables, os.path.join(workdir, "hf"))
                log.info("exported the model to %s", os.path.join(workdir, "hf"))
    if primary:
        summary["loss_curve"] = report.plot_curves(
            workdir, task.headline, task.headline_name, task.baseline_name
        )
        report.write_summary(workdir, summary)
    return summary
