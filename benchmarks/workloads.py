"""The benchmarked workloads: HF torch models with random weights, the same weights in perceiver-jax, their
inputs, and blocking forward / training-step callables for both frameworks doing identical work.

HF models are built from configs (no hub access) and converted in memory with
`perceiver_jax.hf.convert_state_dict`, so both frameworks hold bit-identical float32 weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from benchmarks import common
from perceiver_jax.official import ARCHITECTURES

# Dimensions of the official checkpoints.
LANGUAGE_PERCEIVER = ARCHITECTURES["deepmind/language-perceiver"]
VISION_FOURIER = ARCHITECTURES["deepmind/vision-perceiver-fourier"]
OPTICAL_FLOW = ARCHITECTURES["deepmind/optical-flow-perceiver"]
MULTIMODAL_PERCEIVER = ARCHITECTURES["deepmind/multimodal-perceiver"]
# Small stand-ins with the same structure, for `--tiny` runs (tests) on any machine. No attention dropout:
# its random-number code is most of the compile time of a tiny training step.
TINY_LANGUAGE = dict(
    attention_probs_dropout_prob=0.0, num_latents=16, d_latents=64, d_model=32, num_self_attends_per_block=2,
    num_self_attention_heads=4, num_cross_attention_heads=4, qk_channels=32, v_channels=64,
    max_position_embeddings=64,
)  # fmt: skip
TINY_VISION_FOURIER = dict(
    VISION_FOURIER, num_latents=16, d_latents=64, num_blocks=2, num_self_attends_per_block=2
)
TINY_VISION_FOURIER.update(num_self_attention_heads=2, num_labels=10, image_size=16)

# AdamW hyper-parameters of both frameworks' training steps (torch.optim.AdamW's defaults but the lr).
ADAMW = dict(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)


def head_kwargs(args: tuple) -> dict[str, Any]:
    """A head's call arguments from the positional `(inputs[, attention_mask])` the benchmarks pass around."""
    return dict(zip(("inputs", "attention_mask"), args))


def hf_config(overrides: dict[str, Any]):
    """A `transformers.PerceiverConfig` with `overrides` on HF's defaults."""
    import transformers

    return transformers.PerceiverConfig(**overrides)


@dataclasses.dataclass
class Pair:
    """One model in both frameworks with identical weights.

    Attributes:
      head: HF class name (also the perceiver-jax `HEADS` key).
      torch_model: the HF model (eval mode).
      model: the perceiver-jax head.
      variables: its Flax variables, converted from `torch_model`'s state dict.
      num_params: parameter count of the HF model.
    """

    head: str
    torch_model: Any
    model: Any
    variables: dict[str, Any]
    num_params: int


def build_pair(head: str, overrides: dict[str, Any], seed: int = 0, **head_kwargs) -> Pair:
    """Builds HF's `head` with random weights (HF's init) and perceiver-jax's with the same weights."""
    import torch
    import transformers

    from perceiver_jax import HEADS, PerceiverConfig
    from perceiver_jax.hf import convert_state_dict

    torch.manual_seed(seed)
    hf_cfg = hf_config(overrides)
    torch_model = getattr(transformers, head)(hf_cfg).eval()
    model = HEADS[head](PerceiverConfig.from_hf(hf_cfg.to_dict()), **head_kwargs)
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    variables = convert_state_dict(model, state)
    num_params = sum(p.numel() for p in torch_model.parameters())
    return Pair(head, torch_model, model, variables, num_params)


def text_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids `(B, T)`, an attention mask padding rows 1.. to shorter lengths, and MLM labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(6, vocab_size, (batch_size, seq_len))
    mask = np.ones((batch_size, seq_len), np.int64)
    for b in range(1, batch_size):
        mask[b, seq_len * (batch_size - b) // (batch_size + 1) :] = 0
    ids = np.where(mask == 1, ids, 0)
    labels = rng.integers(0, vocab_size, (batch_size, seq_len))
    return {"ids": ids, "mask": mask, "labels": labels}


def image_batch(batch_size: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random normalised images `(B, H, W, 3)`, channels last (torch gets them NCHW)."""
    return np.random.default_rng(seed).standard_normal((batch_size, height, width, 3), dtype=np.float32)


def torch_forward(pair: Pair, batch: Any, autocast: bool = False) -> Callable[[], Any]:
    """HF inference forward (eval mode, `torch.inference_mode`), returning float32 logits; with
    `autocast`, under `torch.autocast("cpu", torch.bfloat16)` (torch's mixed precision)."""
    import torch

    kwargs = _torch_inputs(pair.head, batch)
    model = pair.torch_model

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return model(**kwargs).logits.float()

    return run


def with_compute_dtype(pair: Pair, dtype: str) -> Pair:
    """`pair` with the perceiver-jax model computing in `dtype` ("float32", "bfloat16"); parameters stay
    float32."""
    import jax.numpy as jnp

    settings = pair.model.settings.replace(dtype=jnp.dtype(dtype))
    return dataclasses.replace(pair, model=pair.model.clone(settings=settings))


def jax_forward(pair: Pair, batch: Any) -> tuple[Callable[[], Any], dict[str, float]]:
    """perceiver-jax jitted inference forward (in the model's compute dtype), blocking; also returns
    lower/compile seconds and the compiled program (`{"lower_s", "compile_s", "compiled"}`)."""
    import jax

    args = _jax_inputs(pair.head, batch)
    model = pair.model
    forward = jax.jit(lambda v, *a: model.apply(v, **head_kwargs(a)))
    compiled, lower_s, compile_s = common.lower_and_compile(forward, pair.variables, *args)
    timing = {"lower_s": lower_s, "compile_s": compile_s, "compiled": compiled}
    variables = pair.variables
    return (lambda: compiled(variables, *args).block_until_ready()), timing


def torch_train_step(pair: Pair, batch: dict[str, np.ndarray], autocast: bool = False) -> Callable[[], Any]:
    """One HF training step: train mode (attention dropout on), MLM loss, backward, fused AdamW update;
    with `autocast`, the forward runs under `torch.autocast("cpu", torch.bfloat16)` (float32 parameters
    and optimiser state, as torch's mixed-precision recipe has it).

    `fused=True` is torch's fastest AdamW on CPU (one kernel per parameter instead of a chain of ops).
    """
    import torch

    model = pair.torch_model
    kwargs = _torch_inputs(pair.head, batch)
    labels = torch.from_numpy(batch["labels"])
    lr = ADAMW["learning_rate"]
    betas = (ADAMW["b1"], ADAMW["b2"])
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=betas,
        eps=ADAMW["eps"],
        weight_decay=ADAMW["weight_decay"],
        fused=True,
    )

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            loss = model(**kwargs, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def trainer_run(model_overrides: dict[str, Any], batch_size: int, seq_len: int, **changes: Any):
    """The trainer's own masked-LM run (`train.build.build`: its `train_step` with clipping, the weight-decay
    mask, accumulation and sharding) of a model with `model_overrides`, on one device, for batches of
    `batch_size` x `seq_len`; `changes` set trainer fields (`dtype`, `remat`, `attention_implementation`).
    Returns the `train.build.Run`."""
    from configs import default
    from train import build, partitioning
    from train.tasks import get_task

    config = default.get_config()
    config.model = default.model(**model_overrides)
    config.mesh.fsdp = 1
    config.data.seq_len, config.global_batch_size = seq_len, batch_size
    config.update(changes)
    mesh = partitioning.make_mesh(1, 1, 1)
    return build.build(config, get_task("mlm"), build.model_config_of(config), mesh)


def trainer_batch(run, seed: int = 0) -> dict[str, Any]:
    """A device batch of `run.abstract_batch`'s shapes: random token ids and targets, weights and mask 1."""
    import jax

    rng, vocab = np.random.default_rng(seed), run.step.model_config.vocab_size

    def leaf(name, spec):
        if name in ("inputs", "targets"):
            return rng.integers(0, vocab, spec.shape).astype(spec.dtype)
        return np.ones(spec.shape, spec.dtype)

    batch = {name: leaf(name, spec) for name, spec in run.abstract_batch.items()}
    return jax.device_put(batch, run.batch_sharding)


def jax_train_step(pair: Pair, batch: dict[str, np.ndarray]) -> tuple[Callable[[], Any], dict[str, float]]:
    """The trainer's own training step (`trainer_run`) on `pair`'s weights and `batch`, in the pair model's
    compute dtype, set to do torch's work: AdamW at `ADAMW` with a constant learning rate and no gradient
    clipping (`torch_train_step` has none), attention dropout on. Blocking, returning the mean loss; the
    state lives in the closure and advances each call. Also returns `{"lower_s", "compile_s", "compiled"}`.

    What differs from torch's loop costs a few elementwise passes: the trainer exempts biases and norm
    scales from weight decay and its loss counts the positions of non-zero weight (here every one)."""
    import jax

    batch_size, seq_len = batch["ids"].shape
    run = trainer_run(
        pair.model.config.to_dict(), batch_size, seq_len, dtype=str(np.dtype(pair.model.settings.dtype)),
        optimizer="adamw", schedule="constant", warmup_steps=0, clip_grad_norm=0.0, **ADAMW,
    )  # fmt: skip
    with run.context():
        state = run.init(jax.random.key(0))
        # Copies: the step donates its state, and the forward benchmarks keep using `pair.variables`.
        params = jax.device_put(jax.tree.map(np.array, pair.variables["params"]), run.state_shardings.params)
        state = state.replace(params=params)
        device_batch = {
            "inputs": batch["ids"], "attention_mask": batch["mask"], "targets": batch["labels"],
            "weights": np.ones_like(batch["ids"]),
        }  # fmt: skip
        device_batch = jax.device_put(
            {k: v.astype(run.abstract_batch[k].dtype) for k, v in device_batch.items()}, run.batch_sharding
        )
        compiled, lower_s, compile_s = common.lower_and_compile(run.train_step, state, device_batch)
    timing = {"lower_s": lower_s, "compile_s": compile_s, "compiled": compiled}
    holder = {"state": state}

    def step():
        holder["state"], sums, _ = compiled(holder["state"], device_batch)
        jax.block_until_ready((holder["state"], sums))
        return sums["loss"] / sums["weight"]

    return step, timing


def _torch_inputs(head: str, batch: Any) -> dict[str, Any]:
    import torch

    if isinstance(batch, dict):
        return {"inputs": torch.from_numpy(batch["ids"]), "attention_mask": torch.from_numpy(batch["mask"])}
    if head.startswith("PerceiverForImageClassification"):
        return {"inputs": torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))}
    raise ValueError(f"no torch inputs for {head}.")


def _jax_inputs(head: str, batch: Any) -> tuple[Any, ...]:
    import jax.numpy as jnp

    if isinstance(batch, dict):
        return (jnp.asarray(batch["ids"], jnp.int32), jnp.asarray(batch["mask"], jnp.int32))
    if head.startswith("PerceiverForImageClassification"):
        return (jnp.asarray(batch),)
    raise ValueError(f"no jax inputs for {head}.")
