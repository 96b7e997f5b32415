"""Every field the trainer reads, with defaults; the other configs start from `get_config()` here.

Not a run of its own (its model is the full language-perceiver); see mlm_tiny.py for the demo. Every
`PerceiverConfig` field is under `config.model`, so any of them can be set from the command line
(`--config.model.num_blocks=2`, `--config.model.mlm_decoder.num_heads=4`,
`--config.model.image_size='(32, 48)'`, `--config.model.id2label="{0: 'cat', 1: 'dog'}"`).
"""

import dataclasses
import typing

import ml_collections

from perceiver_jax import PerceiverConfig
from perceiver_jax.sharding import DEFAULT_RULES


def _settable(value, annotation):
    """`value` as a config field the command line can set to any value of `annotation`: scalars and tuples
    keep ml_collections' typed parsing (None becomes a typed placeholder); unions of several types
    (`image_size`: an int or a pair) and mappings (`id2label`) take any Python literal."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    origin = typing.get_origin(kinds[0]) or kinds[0]
    if len(kinds) > 1 or origin not in (bool, int, float, str, tuple):
        return ml_collections.FieldReference(value, field_type=object)
    return ml_collections.config_dict.placeholder(origin) if value is None else value


def _fields(obj) -> ml_collections.ConfigDict:
    hints = typing.get_type_hints(type(obj))
    config = ml_collections.ConfigDict()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        is_group = dataclasses.is_dataclass(value)
        config[field.name] = _fields(value) if is_group else _settable(value, hints[field.name])
    return config


def model(**overrides) -> ml_collections.ConfigDict:
    """`config.model`: every `PerceiverConfig` field (its defaults, or `overrides`), settable by name."""
    return _fields(PerceiverConfig(**overrides))


# The CPU demos' model: 32 latents of width 128, 2 self-attention layers, no attention dropout.
DEMO_MODEL = dict(
    num_latents=32, d_latents=128, num_self_attends_per_block=2, num_self_attention_heads=4,
    num_cross_attention_heads=1, attention_probs_dropout_prob=0.0,
)  # fmt: skip


def demo(task: str, *, steps: int, batch: int, lr: float, warmup: int, every: int, **model_fields):
    """A CPU demo of `task`: the `DEMO_MODEL` with `model_fields` on one device, `steps` steps of batch
    `batch` at peak learning rate `lr` after `warmup` steps, eval and checkpoint every `every` steps."""
    config = get_config()
    config.task = task
    config.model = model(**{**DEMO_MODEL, **model_fields})
    config.mesh.fsdp = 1
    config.global_batch_size, config.num_train_steps = batch, steps
    config.learning_rate, config.warmup_steps = lr, warmup
    config.eval_every = config.checkpoint_every = every
    return config


def lamb(config: ml_collections.ConfigDict, learning_rate: float, weight_decay: float, schedule: str):
    """The paper's LAMB settings (Adam(0.9, 0.999, 1e-6), clipping at 10) on `config`, with logs every 100
    steps and evals / checkpoints every 5000."""
    config.optimizer, config.learning_rate, config.schedule = "lamb", learning_rate, schedule
    config.b1, config.b2, config.eps = 0.9, 0.999, 1e-6
    config.weight_decay = weight_decay
    config.clip_grad_norm = 10.0
    config.log_every, config.eval_every, config.checkpoint_every = 100, 5000, 5000
    return config


def get_config() -> ml_collections.ConfigDict:
    """Defaults of all trainer fields."""
    config = ml_collections.ConfigDict()
    # A key of train.tasks.TASKS: 'mlm', 'text_classification', 'image_learned', 'image_fourier',
    # 'image_conv', 'optical_flow', 'multimodal_autoencoding'.
    config.task = "mlm"
    config.model = model()
    config.dtype = "float32"  # compute dtype, 'float32' or 'bfloat16' (parameters stay float32)
    config.remat = "none"  # rematerialise encoder layers: 'none', 'full' or 'dots'
    config.attention_implementation = "xla"  # 'cudnn': flash attention on NVIDIA GPUs (without dropout)
    config.unroll_layers = False  # unroll the layer loops (train.aot does, for the compiler's cost estimate)

    # Mesh axes sizes; -1 takes the remaining devices. The rules map the modules' logical axis names onto
    # them: batch over data x fsdp, parameters over fsdp (and tensor for heads / MLP / vocabulary).
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    config.sharding_rules = DEFAULT_RULES

    # Data. Text: byte windows of `seq_len - 2` bytes in [CLS] ... [SEP].
    config.data = ml_collections.ConfigDict()
    config.data.seed = 0  # shuffling and every example's randomness
    config.data.num_workers = 0  # Grain worker processes preparing batches (0: in this process)
    # mlm: comma-separated glob patterns of text files; '' = the embedded pydoc_data.topics.
    config.data.files = ""
    config.data.seq_len = 2048  # text: tokens per example; for 'mlm' = the decoder's output length
    config.data.mask_prob = 0.15  # mlm: BERT masking rate
    config.data.holdout_every = 20  # mlm: every 20th window is the held-out eval split (5%)
    # text_classification: CSV / TSV / JSONL files ('' train_file: the offline demo set).
    config.data.train_file = ""
    config.data.eval_file = ""  # '' holds out eval_fraction of train_file
    config.data.text_column = "text"
    config.data.label_column = "label"
    config.data.file_format = ""  # '' from the extension; 'csv', 'tsv' or 'jsonl'
    config.data.eval_fraction = 0.1  # text / image classification without an eval file / folder
    # image_*: an image folder root/<class>/<image> ('' train_dir: scikit-learn's digits, offline).
    config.data.train_dir = ""
    config.data.eval_dir = ""  # '' holds out eval_fraction of train_dir
    config.data.crop_area_min = 0.08  # random resized crop: smallest area fraction
    config.data.flip = True  # random horizontal flips
    config.data.randaugment_layers = 4
    config.data.randaugment_magnitude = 5
    config.data.mixup_alpha = 0.2  # 0: no MixUp
    config.data.cutmix_alpha = 1.0  # 0: no CutMix
    # optical_flow: 'synthetic' (offline) or a dataset in root.
    config.data.dataset = "synthetic"  # 'synthetic', 'sintel', 'flyingchairs' or 'kitti'
    config.data.root = ""  # optical_flow: the dataset folder; multimodal_autoencoding: a clip folder
    config.data.render_pass = "clean"  # sintel: 'clean' or 'final'
    config.data.frame_size = (368, 496)  # synthetic flow: frame size (at least model.train_size)
    config.data.num_train_pairs = 4096  # synthetic flow
    config.data.num_eval_pairs = 64
    # synthetic flow: layers, their largest motions (px, radians, relative scale) and the range of texture
    # pixels per frame pixel (below 0.5: magnified, smoother textures) and of contrast (frames' deviations
    # from their mean colour times U(*contrast))
    config.data.synthetic_motion = dict(
        max_foreground=3,
        max_translation=10.0,
        max_rotation=0.1,
        max_scale_change=0.1,
        texture_scale=(0.5, 1.0),
        contrast=(1.0, 1.0),
    )
    # optical_flow: ((first step, augmentation strength, flip probability), ...)
    config.data.curriculum = ((0, 1.0, 0.5),)
    config.data.num_report_pairs = 4  # optical_flow: eval pairs predicted at full frame size, with pictures
    # multimodal_autoencoding ('' root: synthetic clips).
    config.data.eval_root = ""  # '' = root
    config.data.num_train_clips = 2048
    config.data.num_eval_clips = 64
    config.data.num_points = dict(image=512, audio=512)  # output points decoded per training step
    config.data.loss_weights = dict(image=0.03, audio=1.0, label=1e-4)  # Perceiver IO, App. I
    config.data.label_mask_prob = 0.5  # the label input is masked this often in training
    config.data.num_report_clips = 4  # clips reconstructed at full resolution at each eval

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

    # Fine-tuning: a trainer workdir, a Hugging Face folder or hub id whose preprocessor + encoder
    # initialise this model (the decoder starts fresh).
    config.init_from = ""

    # Bookkeeping.
    config.log_every = 10  # train metrics to TensorBoard / metrics.jsonl every N steps
    config.eval_every = 1000
    config.num_eval_batches = -1  # -1: the whole held-out split
    config.checkpoint_every = 1000
    config.max_checkpoints = 3  # 0 keeps all
    config.async_checkpointing = True
    config.stop_after_step = 0  # > 0: checkpoint and exit after this step (time-limited jobs); rerun resumes
    config.export_hf = False  # write a Hugging Face folder to <workdir>/hf at the end
    return config
