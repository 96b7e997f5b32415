"""perceiver-jax: Perceiver IO in JAX/Flax, with Hugging Face weights in and out.

Public API:
  PerceiverConfig                    the config (HF fields + the values HF hard-codes)
  Settings                           how a model computes (dtype, attention implementation, remat)
  from_pretrained(path) -> (model, variables), save_pretrained(model, variables, path)
  PerceiverForMaskedLM, PerceiverForSequenceClassification, ... (the heads)
  PerceiverTokenizer                 the byte tokenizer
"""

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.hf import from_pretrained, save_pretrained
from perceiver_jax.heads import (
    HEADS,
    PerceiverForImageClassificationConvProcessing,
    PerceiverForImageClassificationFourier,
    PerceiverForImageClassificationLearned,
    PerceiverForMaskedLM,
    PerceiverForMultimodalAutoencoding,
    PerceiverForOpticalFlow,
    PerceiverForSequenceClassification,
)
from perceiver_jax.model import PerceiverModel
from perceiver_jax.outputs import PerceiverOutput
from perceiver_jax.settings import Settings
from perceiver_jax.tokenizer import PerceiverTokenizer

__all__ = [
    "HEADS",
    "PerceiverConfig",
    "PerceiverForImageClassificationConvProcessing",
    "PerceiverForImageClassificationFourier",
    "PerceiverForImageClassificationLearned",
    "PerceiverForMaskedLM",
    "PerceiverForMultimodalAutoencoding",
    "PerceiverForOpticalFlow",
    "PerceiverForSequenceClassification",
    "PerceiverModel",
    "PerceiverOutput",
    "PerceiverTokenizer",
    "Settings",
    "from_pretrained",
    "save_pretrained",
]
