"""Checks of the trainer config, before anything is built: each problem named, with what to do.

`check(config)` validates the fields `configs/default.py` defines (types come from ml_collections); the
model's fields are validated by `PerceiverConfig` itself. `state_settings` are the settings the train
state's structure depends on, saved with every checkpoint: resuming with others is refused clearly.
"""

from __future__ import annotations

import ml_collections

from perceiver_jax import PerceiverConfig
from train import optim
from train.tasks import get_task


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first trainer field whose value cannot run."""
    for name in ("log_every", "eval_every", "checkpoint_every", "num_train_steps", "global_batch_size"):
        _require(config[name] >= 1, f"config.{name}={config[name]} must be a positive integer.")
    _require(config.grad_accum_steps >= 1, f"config.grad_accum_steps={config.grad_accum_steps} must be >= 1.")
    _require(
        config.max_checkpoints >= 0,
        f"config.max_checkpoints={config.max_checkpoints} must be >= 0 (0 keeps every checkpoint).",
    )
    _require(
        config.learning_rate >= 0,
        f"config.learning_rate={config.learning_rate} must be >= 0 (0 freezes the model).",
    )
    _require(config.weight_decay >= 0, f"config.weight_decay={config.weight_decay} must be >= 0.")
    _require(
        config.clip_grad_norm >= 0,
        f"config.clip_grad_norm={config.clip_grad_norm} must be >= 0 (0: no clipping).",
    )
    _require(
        0.0 <= config.label_smoothing < 1.0,
        f"config.label_smoothing={config.label_smoothing} must be in [0, 1): "
        "the weight moved to uniform labels.",
    )
    _require(
        0.0 <= config.b1 < 1.0 and 0.0 <= config.b2 < 1.0,
        f"config.b1={config.b1}, b2={config.b2} must be in [0, 1).",
    )
    _require(config.eps > 0, f"config.eps={config.eps} must be positive.")
    _require(
        config.optimizer in optim.OPTIMIZERS,
        f"unknown config.optimizer={config.optimizer!r}; choose one of {optim.OPTIMIZERS}.",
    )
    _require(
        config.schedule in optim.SCHEDULES,
        f"unknown config.schedule={config.schedule!r}; choose one of {optim.SCHEDULES}.",
    )
    _require(config.data.num_workers >= 0, f"config.data.num_workers={config.data.num_workers} must be >= 0.")
    _require(
        config.stop_after_step >= 0,
        f"config.stop_after_step={config.stop_after_step} must be >= 0 (0: never).",
    )
    if config.export_hf:  # refused now rather than after training
        try:
            PerceiverConfig.from_dict(config.model.to_dict()).to_hf_dict(get_task(config.task).head)
        except ValueError as error:
            raise ValueError(
                f"export_hf=True, but {error} Set export_hf=False, or keep those model fields at their "
                "defaults."
            ) from None


def state_settings(config: ml_collections.ConfigDict) -> dict[str, object]:
    """The settings the optimiser state's structure depends on (stored with checkpoints)."""
    return dict(optimizer=config.optimizer, gradient_clipping=config.clip_grad_norm > 0)


def check_resume(config: ml_collections.ConfigDict, step: int, directory: str) -> None:
    """Raises ValueError when the checkpoint to resume from is past `config.num_train_steps`."""
    _require(
        step <= config.num_train_steps,
        f"the checkpoint in {directory} is at step {step}, "
        f"past config.num_train_steps={config.num_train_steps}: "
        "nothing is left to train. Raise num_train_steps to train further, or use a new --workdir.",
    )
