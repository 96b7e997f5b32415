"""Orbax checkpoints in `<workdir>/checkpoints/<step>/` that survive kills, damage and full disks.

Items of a checkpoint: `state` (the `TrainState`, `StandardSave`), `data` (the Grain iterator,
`grain.checkpoint.CheckpointSave`) and `meta` (JSON: task, model config, the trainer settings the state's
structure depends on, and a checksum of every state array).

- Saves are asynchronous and atomic: Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when
  complete, so a save killed midway (kill -9) leaves the earlier checkpoints usable.
- Restore verifies the newest checkpoint: it must read back and its arrays must match the checksums saved
  with them (silent bit rot changes them). A damaged one is moved aside to `<workdir>/checkpoints_damaged/`
  (never deleted), the reason logged, and the next older one tried.
- A checkpoint of another task, model, optimiser or clipping setting is refused with the differences.
- A full disk during a save raises `CheckpointWriteError`: one line saying what failed, where, and that
  the previous checkpoint is intact and the run resumes from it once space is freed.
- The state restores onto any mesh (the abstract state carries the target shardings); the data iterator
  onto any process count (its position is a number of global batches, rebuilt when the per-process files
  of another process count do not fit).

`WorkdirLock` keeps a second trainer off a workdir in use; `load_pretrained` reads the preprocessor and
encoder of another run or of a Hugging Face folder for fine-tuning.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from perceiver_jax import PerceiverConfig

log = logging.getLogger("train")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message is the whole story."""


class RunMismatch(ValueError):
    """A readable checkpoint of another task, model or optimiser setting."""


def _leaves_checksum(tree: Any) -> jax.Array:
    """uint32 `(num_leaves,)`: the sum, modulo 2**32, of each array's bytes read as unsigned integers of
    its own width (a flipped bit changes it). Sharding-independent; computed where the arrays live."""

    def checksum(x):
        x = jnp.asarray(x)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned)
        return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)

    return jnp.stack([checksum(x) for x in jax.tree.leaves(tree)])


checksum = jax.jit(_leaves_checksum)


def _differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """'field: checkpoint X, config Y' for every field that differs (after a JSON round trip)."""
    current = json.loads(json.dumps(current))
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def _no_space(error: BaseException) -> bool:
    """Whether `error` (or anything it was raised from) says the disk is full."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(
            error
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


class Checkpointer:
    """Saves and restores one run's checkpoints (see the module docstring).

    Args:
      workdir: the run's folder; checkpoints go to `workdir/checkpoints`.
      meta: {'task', 'model_config', 'settings'} of this run, stored with every checkpoint and compared
        on restore.
      every: save every this many steps.
      keep: keep the newest `keep` checkpoints; 0 keeps all of them.
      use_async: write in a background thread while training continues.
    """

    def __init__(self, workdir: str, meta: dict[str, Any], every: int, keep: int, use_async: bool = True):
        if every < 1 or keep < 0:
            raise ValueError(
                f"config.checkpoint_every={every} must be >= 1 and config.max_checkpoints={keep} >= 0 "
                "(0 keeps every checkpoint)."
            )
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.meta = meta
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=every,
                max_to_keep=keep or None,
                enable_async_checkpointing=use_async,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, None if there is none."""
        return self.manager.latest_step()

    def _check_meta(self, step: int, saved: dict) -> None:
        problems = _differences(saved["model_config"], self.meta["model_config"])
        problems += _differences(saved.get("settings", {}), self.meta["settings"])
        if saved["task"] != self.meta["task"]:
            problems.insert(0, f"task: checkpoint {saved['task']!r}, config {self.meta['task']!r}")
        if problems:
            raise RunMismatch(
                f"the checkpoint at step {step} in {self.directory} was written for a different model, "
                "task or optimiser setting; use a new --workdir or the same config. Differences:\n  "
                + "\n  ".join(problems)
            )

    def _set_aside(self, step: int, reason: str) -> None:
        """Moves checkpoint `step` to `<workdir>/checkpoints_damaged/` (never deleting it)."""
        target_dir = os.path.join(self.workdir, "checkpoints_damaged")
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, str(step))
        suffix = 1
        while os.path.exists(target):
            target, suffix = os.path.join(target_dir, f"{step}.{suffix}"), suffix + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        log.warning("checkpoint at step %d is damaged (%s); moved to %s", step, reason, target)

    def _read(self, step: int, abstract_state: Any) -> Any:
        """The verified state of checkpoint `step`; raises `RunMismatch` for another run's, or an exception
        describing the damage."""
        saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        self._check_meta(step, saved)
        state = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]
        expected = np.asarray(saved["checksums"], np.uint32)
        actual = np.asarray(jax.device_get(checksum(state)))
        if expected.shape != actual.shape or not np.array_equal(expected, actual):
            bad = np.flatnonzero(expected != actual) if expected.shape == actual.shape else "all"
            raise _Damaged(f"array checksums differ from those saved (leaves {bad})")
        return state

    def restore(self, abstract_state: Any, iterator: Any) -> tuple[Any, Any] | None:
        """(state, data iterator) of the newest readable checkpoint, None if there is none.

        `abstract_state` gives the structure and, through `jax.ShapeDtypeStruct(..., sharding=...)` leaves,
        the target shardings; `iterator` is a fresh data iterator, returned at the checkpoint's position
        (None when its files are those of another process count: rebuild it from the step). Damaged
        checkpoints are set aside (module docstring); raises ValueError for another run's checkpoint and
        RuntimeError when no checkpoint is readable.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            try:
                state = self._read(step, abstract_state)
            except RunMismatch:
                raise
            except Exception as e:  # Orbax and tensorstore raise many types for unreadable files
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                self._set_aside(step, reason)
                damaged.append(f"step {step}: {reason}")
                continue
            if damaged:
                log.warning("resuming from step %d, the newest readable checkpoint", step)
            return state, self._restore_iterator(step, iterator)
        if damaged:
            raise RuntimeError(
                f"no readable checkpoint in {self.directory}: every one is damaged and was moved to "
                f"{os.path.join(self.workdir, 'checkpoints_damaged')} ({'; '.join(damaged)}). "
                "Restore them from a backup, or rerun to start from scratch."
            )
        return None

    def _restore_iterator(self, step: int, iterator: Any) -> Any:
        process = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not os.path.exists(os.path.join(self.directory, str(step), "data", process)):
            return None
        args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator))
        return self.manager.restore(step, args=args)["data"]

    def save(self, step: int, state: Any, iterator: Any, force: bool = False) -> bool:
        """Starts saving `state` and the data `iterator` at `step` if `step` is a save step (or `force`);
        returns whether it did. Raises `CheckpointWriteError` when the disk is full."""
        if not (force or self.manager.should_save(step)):
            return False
        meta = dict(self.meta, step=step, checksums=[int(c) for c in jax.device_get(checksum(state))])
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta),
        )
        with self._write_errors(step):
            return self.manager.save(step, args=args, force=force)

    @contextlib.contextmanager
    def _write_errors(self, step: int):
        """Turns a full disk during a save into one clear `CheckpointWriteError`."""
        try:
            yield
        except Exception as e:
            if not _no_space(e):
                raise
            previous = self.latest_step()
            kept = (
                f"the previous checkpoint (step {previous}) is intact"
                if previous
                else "there is no earlier checkpoint"
            )
            raise CheckpointWriteError(
                f"saving the checkpoint of step {step} failed: no space left on device in {self.directory}; "
                f"{kept}; free space and rerun to resume from it."
            ) from None

    def wait(self) -> int | None:
        """Waits for pending saves; returns the newest complete checkpoint's step."""
        with self._write_errors(-1):
            self.manager.wait_until_finished()
        return self.latest_step()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        try:
            self.wait()
        finally:
            self.manager.close()


class _Damaged(Exception):
    """A checkpoint that reads but does not hold what was saved."""


class WorkdirLock:
    """An exclusive lock on `<workdir>/.lock` (`fcntl.flock`), held while the run lives (the OS releases it
    when the process ends, even after kill -9). A second trainer on the workdir gets RuntimeError naming
    the one that holds it. A workdir the lock created and nothing else wrote to (a run refused at setup)
    is removed on release."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.created = not os.path.isdir(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.path = os.path.join(self.workdir, ".lock")
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RuntimeError(
                f"workdir {workdir} is in use by {holder} (lock {self.path}); wait for that run to finish, "
                "stop it, or use another --workdir."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} (started {started})")
        self.file.flush()

    def release(self) -> None:
        """Releases the lock (removing the workdir first if the lock made it and it holds nothing else)."""
        if self.created and os.listdir(self.workdir) == [".lock"]:
            os.remove(self.path)  # while locked: a trainer starting now finds the workdir in use
            os.rmdir(self.workdir)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _subtrees(tree: dict, names: tuple[str, ...]) -> dict:
    """{'perceiver': {name: tree['perceiver'][name]}} for the `names` present."""
    return {"perceiver": {k: v for k, v in tree.get("perceiver", {}).items() if k in names}}


def _paths(tree: dict) -> dict[tuple, tuple[int, ...]]:
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(tree).items()}


def _check_same_model(described: dict, model_config: PerceiverConfig, what: str) -> None:
    problems = _differences(described, model_config.to_dict(), ignore=PerceiverConfig.head_fields())
    if problems:
        raise ValueError(
            f"config.init_from: {what} has a different model; set config.model to its values. "
            "Differences:\n  " + "\n  ".join(problems)
        )


def _from_workdir(workdir: str, wanted: dict, model_config: PerceiverConfig) -> dict:
    """`wanted` (variables of the parts) from the newest checkpoint of the trainer run in `workdir`."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"config.init_from: no checkpoint in {directory}.")
    saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    _check_same_model(saved["model_config"], model_config, f"the checkpoint in {directory}")
    target = {"params": wanted["params"], "model_state": {c: t for c, t in wanted.items() if c != "params"}}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    manager.close()
    return {"params": restored["params"], **restored["model_state"]}


def _from_hugging_face(source: str, wanted: dict, model_config: PerceiverConfig, head: str, parts) -> dict:
    """`wanted` from a Hugging Face Perceiver folder or hub id, after checking its head's parts have the
    same structure (same modality) and its config the same model."""
    from perceiver_jax import HEADS
    from perceiver_jax.hf import abstract_variables, convert_state_dict, load_hf_state_dict, resolve_folder

    folder = resolve_folder(source)
    hf_config = PerceiverConfig.from_hf(folder)
    architecture = (hf_config.architectures or (head,))[0]
    if architecture not in HEADS:
        raise ValueError(f"config.init_from: {folder} holds a {architecture}, which is no Perceiver head.")
    source_model = HEADS[architecture](hf_config)
    have = {c: _subtrees(tree, parts) for c, tree in abstract_variables(source_model).items()}
    if any(set(_paths(have.get(c, {}))) != set(_paths(tree)) for c, tree in wanted.items()):
        raise ValueError(
            f"config.init_from: {folder} holds a {architecture}, whose {' and '.join(parts)} have other "
            f"parameters than this task's {head} (another modality); "
            "initialise from a model of the same kind."
        )
    _check_same_model(hf_config.to_dict(), model_config, f"the Hugging Face {architecture} in {folder}")
    variables = convert_state_dict(source_model, load_hf_state_dict(folder))
    loaded = {c: _subtrees(variables[c], parts) for c in wanted}
    return jax.tree.map(
        lambda value, target: jax.device_put(jnp.asarray(value, target.dtype), target.sharding),
        loaded,
        wanted,
    )


def load_pretrained(
    source: str, abstract: dict[str, Any], model_config: PerceiverConfig, head: str, parts: tuple[str, ...]
) -> dict[str, Any]:
    """The `parts` ('input_preprocessor', 'encoder') of `abstract` (variables {'params': ..., maybe
    'batch_stats': ...} of `jax.ShapeDtypeStruct`s with target shardings) read from `source`: a trainer
    workdir (its newest checkpoint), or a Hugging Face Perceiver folder (e.g. what
    `transformers.PerceiverForMaskedLM.save_pretrained` writes) or hub id.

    Raises FileNotFoundError without a checkpoint; ValueError if the source holds another modality's
    parts, or a model that differs from `model_config` in anything but the head's fields.
    """
    wanted = {c: _subtrees(tree, parts) for c, tree in abstract.items()}
    if os.path.isdir(os.path.join(source, "checkpoints")):
        return _from_workdir(source, wanted, model_config)
    return _from_hugging_face(source, wanted, model_config, head, parts)
