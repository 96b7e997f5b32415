"""Byte-level masked-LM pretraining of a tiny Perceiver IO on the embedded corpus: the demo job.

    python -m train --config configs/mlm_tiny.py --workdir /tmp/mlm_tiny

Expected on a 2-core CPU: TBD.
"""

import ml_collections

from configs import default

SEQ_LEN = 256


def get_config() -> ml_collections.ConfigDict:
    """Tiny MLM on pydoc_data.topics."""
    config = default.get_config()
    config.model = ml_collections.ConfigDict(
        dict(
            num_latents=64,
            d_latents=256,
            d_model=128,
            num_self_attends_per_block=4,
            num_self_attention_heads=8,
            num_cross_attention_heads=8,
            max_position_embeddings=SEQ_LEN,
            attention_probs_dropout_prob=0.0,
        )
    )
    config.mesh.fsdp = 1
    config.data.seq_len = SEQ_LEN
    config.global_batch_size = 32
    config.num_train_steps = 600
    config.learning_rate = 1e-3
    config.warmup_steps = 60
    config.log_every = 10
    config.eval_every = 200
    config.checkpoint_every = 200
    return config
