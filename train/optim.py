"""Optimisers and learning-rate schedules, chosen by `config.optimizer` and `config.schedule`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

SCHEDULES = ("warmup_cosine", "constant_cosine", "constant")
OPTIMIZERS = ("adamw", "lamb")


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """`config.learning_rate`, times global_batch_size / 256 when `config.lr_batch_scaling` (LAMB recipe)."""
    return config.learning_rate * (config.global_batch_size / 256 if config.lr_batch_scaling else 1.0)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """step -> learning rate.

    'warmup_cosine': linear warmup over `config.warmup_steps`, then cosine to 0 at `num_train_steps`.
    'constant_cosine': the LAMB recipe, constant for the first half of the steps, then cosine to 0.
    'constant': the peak rate throughout.
    """
    peak, total = peak_learning_rate(config), config.num_train_steps
    if config.schedule == "warmup_cosine":
        if not 0 <= config.warmup_steps < total:
            raise ValueError(
                f"config.warmup_steps={config.warmup_steps} must be in [0, num_train_steps={total})."
            )
        return optax.warmup_cosine_decay_schedule(0.0, peak, config.warmup_steps, total, 0.0)
    if config.schedule == "constant_cosine":
        half = total // 2
        return optax.join_schedules(
            [optax.constant_schedule(peak), optax.cosine_decay_schedule(peak, max(total - half, 1))], [half]
        )
    if config.schedule == "constant":
        return optax.constant_schedule(peak)
    raise ValueError(f"unknown config.schedule={config.schedule!r}; choose one of {SCHEDULES}.")


def decay_mask(params: Any) -> Any:
    """Bool tree over `params` (boxed or not): weight-decay everything except biases and norm scales
    (leaves named 'bias' or 'scale'); position tables and latents are decayed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key not in ("bias", "scale"),
        params,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Gradient clipping (global norm `config.clip_grad_norm`, 0 = off) then the chosen optimiser.

    'adamw': AdamW with decoupled weight decay on `decay_mask`.
    'lamb': the Perceiver IO recipe, Adam(b1, b2, eps) -> weight decay on `decay_mask` -> trust ratio
      -> learning rate (with clip 10, eps 1e-6, weight_decay 0.1, `constant_cosine`, lr scaled by batch/256).
    """
    args = dict(b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay, mask=decay_mask)
    if config.optimizer == "adamw":
        optimizer = optax.adamw(schedule, **args)
    elif config.optimizer == "lamb":
        optimizer = optax.lamb(schedule, **args)
    else:
        raise ValueError(f"unknown config.optimizer={config.optimizer!r}; choose one of {OPTIMIZERS}.")
    if config.clip_grad_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), optimizer)
    return optimizer
