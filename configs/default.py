"""Every field the trainer reads, with defaults; the other configs start from `get_config()` here.

Not a run of its own (its model is the full language-perceiver); see mlm_tiny.py for the demo.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Defaults of all trainer fields."""
    config = ml_collections.ConfigDict()
    config.task = "mlm"  # a key of train.tasks.TASKS: 'mlm' (byte masked LM) or 'seqcls' (classification)
    # PerceiverConfig fields (perceiver_jax/config.py); unset fields keep PerceiverConfig's defaults.
    config.model = ml_collections.ConfigDict()
    config.dtype = "float32"  # compute dtype, 'float32' or 'bfloat16' (parameters stay float32)
    config.remat = "none"  # rematerialise encoder layers: 'none', 'full' or 'dots'
    config.attention_implementation = "xla"  # 'cudnn': flash attention on NVIDIA GPUs (without dropout)

    # Mesh axes sizes; -1 takes the remaining devices. Batch splits over data x fsdp, parameters over fsdp
    # (and tensor for heads / MLP / vocabulary).
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

    # Data: byte windows of `seq_len - 2` bytes in [CLS] ... [SEP].
    config.data = ml_collections.ConfigDict()
    config.data.files = ""  # comma-separated glob patterns of text files; '' = embedded pydoc_data.topics
    config.data.seq_len = 2048  # tokens per example; for 'mlm' = the decoder's output length
    config.data.mask_prob = 0.15  # BERT masking rate ('mlm')
    config.data.holdout_every = 20  # every 20th window is the held-out eval split (5%)
    config.data.seed = 0  # shuffling and masking

    # Optimisation.
    config.global_batch_size = 256
    config.grad_accum_steps = 1  # micro-batches per step (global_batch_size / grad_accum_steps each)
    config.num_train_steps = 10_000
    config.optimizer = "adamw"  # 'adamw' or 'lamb'
    config.learning_rate = 1e-3
    config.lr_batch_scaling = False  # multiply learning_rate by global_batch_size / 256
    config.schedule = "warmup_cosine"  # 'warmup_cosine', 'constant_cosine' (LAMB recipe) or 'constant'
    config.warmup_steps = 1000
    config.b1, config.b2, config.eps = 0.9, 0.999, 1e-8
    config.weight_decay = 0.01  # not applied to biases and norm scales
    config.clip_grad_norm = 1.0  # 0 = no clipping
    config.label_smoothing = 0.0
    config.seed = 0  # parameter init and dropout

    # Fine-tuning: workdir of a pretraining run whose embeddings + encoder initialise this model.
    config.init_from = ""

    # Bookkeeping.
    config.log_every = 10  # train metrics to TensorBoard / metrics.jsonl every N steps
    config.eval_every = 1000
    config.num_eval_batches = -1  # -1: the whole held-out split
    config.checkpoint_every = 1000
    config.max_checkpoints = 3
    config.async_checkpointing = True
    config.stop_after_step = 0  # > 0: checkpoint and exit after this step (time-limited jobs); rerun resumes
    config.export_hf = False  # write a Hugging Face folder to <workdir>/hf at the end
    return config
