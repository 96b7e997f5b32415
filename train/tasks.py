"""Tasks: what the trainer needs to know about a problem, so new ones plug in without touching the loop.

A `Task` names the head (a key of `perceiver_jax.HEADS`), builds its train / eval example sources (see
`train.data`), and says which batch entries the head takes. Every task's batch also holds `targets` and
`weights`; the loss is the weighted cross-entropy of the logits against `targets` (`classification_sums`),
which fits MLM (per position), text and image classification (per example) alike; a task with another
loss (optical flow) sets `loss`.

Register a task in `TASKS`; `config.task` picks it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from perceiver_jax import PerceiverConfig
from train import data


def classification_sums(
    logits: jax.Array, batch: dict[str, jax.Array], label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
    """Weighted cross-entropy sums of `logits` `(..., K)` against `batch['targets']` `(...)` int with
    `batch['weights']` `(...)`.

    Returns sums over the batch (divide by `weight` for means): `loss` (with label smoothing), `weight`,
    `correct` (argmax hits), and `target_counts` `(K,)`, the weighted histogram of targets (for the baseline
    that always predicts the most frequent target).
    """
    targets, weights = batch["targets"], batch["weights"]
    num_classes = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(targets, num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, labels)
    return dict(
        loss=jnp.sum(loss * weights),
        weight=jnp.sum(weights),
        correct=jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
        target_counts=jnp.zeros(num_classes).at[targets.reshape(-1)].add(weights.reshape(-1)),
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem.

    Attributes:
      head: key of `perceiver_jax.HEADS`, the model class.
      sources: (config, model config) -> (train source, eval source) of examples.
      labels: class names written into the model config's `id2label` (None: keep the config's).
      inputs: batch keys passed to the head as keyword arguments of the same names.
      accuracy_name / baseline_name: what accuracy and the most-frequent-target baseline mean here.
      loss: (logits, batch, label_smoothing) -> sums with at least `loss` and `weight`.
    """

    head: str
    sources: Callable[[ml_collections.ConfigDict, PerceiverConfig], tuple[data.Source, data.Source]]
    labels: tuple[str, ...] | None = None
    inputs: tuple[str, ...] = ("inputs", "attention_mask")
    accuracy_name: str = "top-1 accuracy"
    baseline_name: str = "majority-class baseline"
    loss: Callable[..., dict[str, jax.Array]] = classification_sums

    def model_config(self, config: ml_collections.ConfigDict) -> PerceiverConfig:
        """The `PerceiverConfig` of `config.model` (with this task's labels)."""
        model_config = PerceiverConfig.from_dict(config.model.to_dict())
        if self.labels is not None:
            model_config = model_config.replace(id2label=dict(enumerate(self.labels)), label2id=None)
        return model_config


def _text_windows(
    config: ml_collections.ConfigDict, model_config: PerceiverConfig
) -> tuple[data.Windows, ...]:
    """Train and eval windows of `seq_len - 2` bytes (room for [CLS] and [SEP]) of `config.data.files`."""
    seq_len = config.data.seq_len
    if not 3 <= seq_len <= model_config.max_position_embeddings:
        raise ValueError(
            f"config.data.seq_len={seq_len} must be in [3, max_position_embeddings="
            f"{model_config.max_position_embeddings}]."
        )
    docs = data.load_documents(config.data.files)
    return tuple(
        data.Windows(docs, seq_len - 2, split, config.data.holdout_every) for split in ("train", "eval")
    )


def _mlm_sources(config: ml_collections.ConfigDict, model_config: PerceiverConfig) -> tuple[data.Source, ...]:
    if config.data.seq_len != model_config.mlm_num_queries:
        raise ValueError(
            f"masked LM: config.data.seq_len={config.data.seq_len} must equal the decoder's output length "
            f"{model_config.mlm_num_queries} (model.max_position_embeddings or model.mlm_decoder_num_queries)."
        )
    return tuple(
        data.MaskedBytes(w, config.data.seq_len, config.data.mask_prob)
        for w in _text_windows(config, model_config)
    )


def _word_order_sources(
    config: ml_collections.ConfigDict, model_config: PerceiverConfig
) -> tuple[data.Source, ...]:
    return tuple(data.WordOrder(w, config.data.seq_len) for w in _text_windows(config, model_config))


TASKS: dict[str, Task] = {
    # Byte-level masked language modelling (BERT masking); the baseline predicts the most frequent byte.
    "mlm": Task(
        "PerceiverForMaskedLM",
        _mlm_sources,
        accuracy_name="masked-byte accuracy",
        baseline_name="unigram baseline",
    ),
    # Text classification: real vs word-shuffled snippets (`data.WordOrder`).
    "seqcls": Task("PerceiverForSequenceClassification", _word_order_sources, labels=data.WordOrder.LABELS),
}


def get_task(name: str) -> Task:
    """The registered task `name`; raises ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown config.task={name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]
