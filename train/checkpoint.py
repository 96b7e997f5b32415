"""Orbax checkpoints in `<workdir>/checkpoints/<step>/`: the train state, the data-iterator state and the
model metadata, and parameter loading from another run's checkpoint (fine-tuning).

Items of a checkpoint: `state` (params, opt_state, step, rng; `StandardSave`), `data` (the iterator state,
JSON) and `meta` (task and model config, JSON). Saves are asynchronous and atomic: Orbax writes into a
`<step>.orbax-checkpoint-tmp-*` folder and renames it when complete, and `latest_step` ignores those, so a
save killed midway leaves the earlier checkpoints usable. Restoring takes an abstract state whose leaves
carry the target shardings, so a checkpoint restores onto any mesh shape.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from perceiver_jax import PerceiverConfig

# Config fields that may differ between a pretraining checkpoint and a model fine-tuned from it: the heads,
# their labels and the dropout rate.
_NOT_COPIED = (
    "num_labels",
    "id2label",
    "label2id",
    "architectures",
    "problem_type",
    "attention_probs_dropout_prob",
)


def _manager(directory: str, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(**options))


def _differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """'field: checkpoint X, config Y' for every field that differs (after a JSON round trip)."""
    current = json.loads(json.dumps(current))
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


class Checkpointer:
    """Saves and restores one run's checkpoints.

    Args:
      workdir: the run's folder; checkpoints go to `workdir/checkpoints`.
      meta: {'task': name, 'model_config': PerceiverConfig.to_dict()} of this run, stored with every
        checkpoint and compared on restore.
      every: save every this many steps (`save_interval_steps`).
      keep: keep the newest `keep` checkpoints.
      use_async: write in a background thread while training continues.
    """

    def __init__(self, workdir: str, meta: dict[str, Any], every: int, keep: int, use_async: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.meta = meta
        self.manager = _manager(
            self.directory,
            save_interval_steps=every,
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            create=True,
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, None if there is none."""
        return self.manager.latest_step()

    def restore(self, abstract_state: Any) -> tuple[Any, dict[str, int]] | None:
        """(state, data-iterator state) of the newest checkpoint, None if there is none.

        `abstract_state` gives the structure and, through `jax.ShapeDtypeStruct(..., sharding=...)` leaves,
        the target shardings. Raises ValueError if the checkpoint was written for another task or model.
        """
        step = self.latest_step()
        if step is None:
            return None
        saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        problems = _differences(saved["model_config"], self.meta["model_config"])
        if saved["task"] != self.meta["task"]:
            problems.insert(0, f"task: checkpoint {saved['task']!r}, config {self.meta['task']!r}")
        if problems:
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} was written for a different model; "
                "use a new --workdir or the same config. Differences:\n  " + "\n  ".join(problems)
            )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"], restored["data"]

    def save(self, step: int, state: Any, data_state: dict[str, int], force: bool = False) -> bool:
        """Starts saving `state` at `step` if `step` is a save step (or `force`); returns whether it did."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(self.meta),
        )
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> int | None:
        """Waits for pending saves; returns the newest complete checkpoint's step."""
        self.manager.wait_until_finished()
        return self.latest_step()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager."""
        self.wait()
        self.manager.close()


def load_params(workdir: str, abstract: dict[str, Any], model_config: PerceiverConfig) -> dict[str, Any]:
    """Parameters from the newest checkpoint of the run in `workdir`, restricted to the subtrees in
    `abstract` (a nested dict like `{'perceiver': {'encoder': ...}}` of `jax.ShapeDtypeStruct`s with target
    shardings); e.g. an MLM run's encoder for fine-tuning.

    Raises FileNotFoundError without a checkpoint, ValueError if its model differs from `model_config` in
    anything but the heads, labels and dropout.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = _manager(directory, create=False)
    step = manager.latest_step() if os.path.isdir(directory) else None
    if step is None:
        raise FileNotFoundError(f"config.init_from: no checkpoint in {directory}.")
    saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    ignore = _NOT_COPIED + tuple(
        k for k in saved["model_config"] if k.startswith(("mlm_", "classification_"))
    )
    problems = _differences(saved["model_config"], model_config.to_dict(), ignore=ignore)
    if problems:
        raise ValueError(
            f"config.init_from: the checkpoint in {directory} has a different model; set config.model to its "
            "values. Differences:\n  " + "\n  ".join(problems)
        )
    target = {"params": abstract}
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]
    manager.close()
    return restored
