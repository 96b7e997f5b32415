"""Tasks: what the trainer needs to know about a problem, so that new ones plug in without touching the loop.

A `Task` names the head (a key of `perceiver_jax.HEADS`) and gives, as plain functions:
- `data(config, model_config, workdir) -> Data`: train / eval sources and transforms (`train.data`) and
  the class names, if the data defines them;
- `example(config, model_config) -> example`: one example of the right shapes, without reading data (to
  initialise the model and to compile ahead of time, `train.aot`);
- `prepare(batch, rng, config, model_config) -> (model kwargs, rngs, batch)`: on device, inside the jitted
  step: the head's inputs, extra RNG streams, and the batch the loss sees (`rng` is None at eval, a key in
  training: MixUp, output-point subsampling);
- `loss(outputs, batch, config, train) -> sums`: sums over the batch, at least `loss` and `weight` (the
  gradient is `grad(loss) / weight`, so micro-batches add up to the whole batch);
- `summarize(sums) -> {metric: value}`, including `loss`, the task's `headline` metric and `baseline`,
  that metric for a trivial predictor (the most frequent class, zero flow, the mean frame);
- `report`, optionally: a fuller evaluation at each eval (e.g. optical flow at full frame size, with
  pictures in the workdir);
- `train_model_config`, optionally: the model config training runs with, when it differs from the one
  evaluated and exported (same parameters; e.g. the multimodal label masked only half the time).

Register tasks in `TASKS`; `config.task` picks one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from perceiver_jax import PerceiverConfig

Batch = dict[str, jax.Array]
Sums = dict[str, jax.Array]
Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Data:
    """A task's data: random-access train / eval sources, their transforms, and the class names."""

    train: Any
    eval: Any
    train_transform: Callable
    eval_transform: Callable
    labels: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem (see the module docstring)."""

    head: str
    data: Callable[[Config, PerceiverConfig, str], Data]
    example: Callable[[Config, PerceiverConfig], dict[str, np.ndarray]]
    prepare: Callable[[Batch, jax.Array | None, Config, PerceiverConfig], tuple[dict, dict, Batch]]
    loss: Callable[[Any, Batch, Config, bool], Sums]
    summarize: Callable[[Sums], dict[str, float]]
    headline: str = "accuracy"
    headline_name: str = "top-1 accuracy"
    baseline_name: str = "majority-class baseline"
    higher_is_better: bool = True
    report: Callable[..., dict[str, float]] | None = None
    train_model_config: Callable[[Config, PerceiverConfig], PerceiverConfig] | None = None


def classification_sums(
    logits: jax.Array, batch: Batch, label_smoothing: float = 0.0, labels: jax.Array | None = None
) -> Sums:
    """Weighted cross-entropy sums of `logits` `(..., K)` against `batch['targets']` `(...)` int with
    `batch['weights']` `(...)`; `labels` `(..., K)` replaces the one-hot targets (MixUp / CutMix).

    Returns sums over the batch (divide by `weight` for means): `loss` (with label smoothing), `weight`,
    `correct` (argmax hits), and `target_counts` `(K,)`, the weighted histogram of targets (for the baseline
    that always predicts the most frequent target).
    """
    targets, weights = batch["targets"], batch["weights"]
    num_classes = logits.shape[-1]
    labels = jax.nn.one_hot(targets, num_classes) if labels is None else labels
    loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, label_smoothing))
    return dict(
        loss=jnp.sum(loss * weights),
        weight=jnp.sum(weights),
        correct=jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
        target_counts=jnp.zeros(num_classes).at[targets.reshape(-1)].add(weights.reshape(-1)),
    )


def classification_summary(sums: Sums) -> dict[str, float]:
    """Means of `classification_sums`: loss, accuracy (and top-5 when summed), majority-class baseline."""
    weight = max(float(sums["weight"]), 1.0)
    summary = dict(
        loss=float(sums["loss"]) / weight,
        accuracy=float(sums["correct"]) / weight,
        baseline=float(np.max(sums["target_counts"])) / weight,
    )
    if "correct_top5" in sums:
        summary["top5_accuracy"] = float(sums["correct_top5"]) / weight
    return summary


def text_inputs(batch: Batch, rng: jax.Array | None, config: Config, model_config: PerceiverConfig):
    """Token ids and attention mask -> the text heads' keyword arguments (no RNG, the batch unchanged)."""
    return {"inputs": batch["inputs"], "attention_mask": batch["attention_mask"]}, {}, batch


TASKS: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The registered task `name`; raises ValueError listing the known ones."""
    _register()
    if name not in TASKS:
        raise ValueError(f"unknown config.task={name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]


def _register() -> None:
    """Imports the task modules, which add their tasks to `TASKS`."""
    from train.tasks import flow, images, multimodal, text  # noqa: F401
