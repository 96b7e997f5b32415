"""Text tasks: byte-level masked language modelling, and classification of users' labelled text.

- 'mlm': BERT masking on byte windows of `config.data.files` (empty: the embedded `pydoc_data.topics`);
  the baseline predicts the most frequent masked byte.
- 'text_classification': CSV / TSV / JSONL files with a text and a label column (`config.data.train_file`,
  `eval_file` or a held-out `eval_fraction`; empty `train_file`: the offline demo set, written to
  `<workdir>/demo_text/`); the label names become the model's `id2label`.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from perceiver_jax import PerceiverConfig
from train.data import labelled_text, text
from train.tasks import TASKS, Config, Data, Task, classification_sums, classification_summary, text_inputs


def _check_seq_len(config: Config, model_config: PerceiverConfig) -> int:
    seq_len = config.data.seq_len
    if not 3 <= seq_len <= model_config.max_position_embeddings:
        raise ValueError(
            f"config.data.seq_len={seq_len} must be in [3, max_position_embeddings="
            f"{model_config.max_position_embeddings}]."
        )
    return seq_len


def _mlm_data(config: Config, model_config: PerceiverConfig, workdir: str) -> Data:
    seq_len = _check_seq_len(config, model_config)
    if seq_len != model_config.mlm_num_queries:
        raise ValueError(
            f"masked LM: config.data.seq_len={seq_len} must equal the decoder's output length "
            f"{model_config.mlm_num_queries} "
            "(model.max_position_embeddings or model.mlm_decoder_num_queries)."
        )
    if not 0.0 < config.data.mask_prob <= 1.0:
        raise ValueError(
            f"config.data.mask_prob={config.data.mask_prob} must be in (0, 1]: the share of masked bytes."
        )
    docs = text.load_documents(config.data.files)
    train, held_out = (
        text.Windows(docs, seq_len - 2, split, config.data.holdout_every) for split in ("train", "eval")
    )
    transform = text.MaskBytes(seq_len, config.data.mask_prob)
    return Data(train, held_out, transform, transform)


def _token_example(config: Config, model_config: PerceiverConfig, positions: bool) -> dict[str, np.ndarray]:
    seq_len = config.data.seq_len
    ids = np.zeros(seq_len, np.int32)
    weights = np.ones(seq_len if positions else (), np.float32)
    return dict(inputs=ids, attention_mask=ids, targets=ids if positions else np.int32(0), weights=weights)


def _mlm_loss(logits, batch, config: Config, train: bool):
    return classification_sums(logits, batch, config.label_smoothing if train else 0.0)


def _text_classification_data(config: Config, model_config: PerceiverConfig, workdir: str) -> Data:
    seq_len = _check_seq_len(config, model_config)
    train_file, eval_file = config.data.train_file, config.data.eval_file or None
    if not train_file:
        folder = os.path.join(workdir, "demo_text")
        os.makedirs(folder, exist_ok=True)
        train_file, eval_file = labelled_text.write_demo_dataset(folder)
    dataset = labelled_text.load_labelled_text(
        train_file,
        eval_file,
        text_column=config.data.text_column,
        label_column=config.data.label_column,
        file_format=config.data.file_format or None,
        eval_fraction=config.data.eval_fraction,
    )
    transform = labelled_text.EncodeLabelledText(seq_len)
    return Data(dataset.train, dataset.eval, transform, transform, labels=dataset.id2label)


TASKS["mlm"] = Task(
    "PerceiverForMaskedLM", _mlm_data, functools.partial(_token_example, positions=True), text_inputs,
    _mlm_loss, classification_summary, headline_name="masked-byte accuracy",
    baseline_name="unigram baseline",
)  # fmt: skip
TASKS["text_classification"] = Task(
    "PerceiverForSequenceClassification", _text_classification_data,
    functools.partial(_token_example, positions=False), text_inputs, _mlm_loss, classification_summary,
)  # fmt: skip
