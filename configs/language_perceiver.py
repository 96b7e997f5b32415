"""MLM pretraining of the official deepmind/language-perceiver architecture (201,108,230 parameters), for
accelerator pods: 256 x 1280 latents, 26 self-attention layers, d_model 768, qk 256, v 1280, 8 heads, 2048
UTF-8 bytes per example (PerceiverConfig's defaults are this model).

    python -m train --config configs/language_perceiver.py --workdir DIR \\
        --config.data.files='/data/text/*.txt' [--distributed]
    python -m train.aot --config configs/language_perceiver.py --topology v5p:4x4x4   # memory, step time

Recipe (Perceiver IO, Table 12): 500,000 steps of batch 2048, LAMB at 1.25e-3 with 1,000 linear warmup
steps and a cosine decay over the run, weight decay 0.01 (not on biases and norm scales); masking 15%
(bytes here; the paper masks whole words); bfloat16 compute with float32 parameters, parameters and
optimiser state sharded over all devices (fsdp). The paper trains on 70% C4 + 30% English Wikipedia;
point data.files at your text. Expected result: not measured (a step of batch 2048 is far beyond a 2-core
CPU); `benchmarks/RESULTS.md` gives compiled memory and estimated step times per TPU slice, and
tests/test_train_configs.py checks that it builds, has the official parameter count and shards 8 ways.
Progress shows as the eval masked-byte accuracy against the unigram baseline.
"""

import ml_collections

from configs import default
from perceiver_jax.official import ARCHITECTURES


def get_config() -> ml_collections.ConfigDict:
    """deepmind/language-perceiver MLM pretraining."""
    config = default.get_config()
    config.model = default.model(
        **ARCHITECTURES["deepmind/language-perceiver"], attention_probs_dropout_prob=0.1
    )
    config.dtype = "bfloat16"
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    config.data.seq_len = 2048
    config.global_batch_size = 2048
    config.num_train_steps = 500_000
    config.warmup_steps = 1000
    config.num_eval_batches = 20
    return default.lamb(config, learning_rate=1.25e-3, weight_decay=0.01, schedule="warmup_cosine")
