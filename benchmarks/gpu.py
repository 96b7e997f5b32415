"""Accelerator benchmark of perceiver-jax: `python -m benchmarks.gpu [--tiny] [--batch B] [--image-batch B]`.

bfloat16 compute with float32 parameters (and AdamW state), `attention_implementation='cudnn'` (cuDNN
flash attention through `jax.nn.dot_product_attention`) wherever it applies, else 'xla':

1. training step (forward, backward, AdamW) at `deepmind/language-perceiver` dimensions, sequence 2048:
   step time, tokens/s, analytic TFLOP/s (`benchmarks.flops`, 3x forward) and MFU against the device's
   dense bf16 peak (`BF16_PEAK_TFLOPS`, matched on the device name; `--peak-tflops` overrides).
2. inference images/s of each vision classification head at 224x224.

cuDNN attention needs equal query/key and value head widths (jax.nn.dot_product_attention checks it) and a
head width it supports: perceiver-jax runs each attention that qualifies with cuDNN and the others with XLA
(`perceiver_jax.attention.cudnn_applies`); the tables count the cuDNN calls in the compiled program, and
if compiling with cuDNN fails the model is compiled with 'xla' and the table says why. language-perceiver's
heads do not qualify (32-wide queries/keys, 160-wide values). cuDNN attention has no dropout, so attention
dropout is off by default here (`--attention-dropout 0.1` is HF's; with it every attention runs 'xla' in
training).

`--tiny` runs the same code on small stand-in models in seconds, on any backend (the tests run it on CPU,
where cuDNN is absent and every model falls back to 'xla').
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from benchmarks import common, flops, workloads

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets. First match wins,
# so more specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)

VISION_HEADS = {
    "PerceiverForImageClassificationLearned": dict(workloads.VISION_FOURIER, d_model=512, image_size=224),
    "PerceiverForImageClassificationFourier": workloads.VISION_FOURIER,
    "PerceiverForImageClassificationConvProcessing": dict(workloads.VISION_FOURIER, d_model=322),
}
TINY_VISION = dict(workloads.TINY_VISION_FOURIER, image_size=32)


def bf16_peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak of the named device (None when unknown, e.g. a CPU)."""
    for name, peak in BF16_PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def cudnn_precondition(config) -> str | None:
    """Why cuDNN attention cannot run the self-attention layers of `config` (None: it may)."""
    heads = config.num_self_attention_heads
    qk = config.qk_channels or config.d_latents
    v = config.v_channels or qk
    if qk // heads != v // heads:
        return (
            f"qk head width {qk // heads} != v head width {v // heads}: jax.nn.dot_product_attention "
            "needs equal widths"
        )
    return None


def compile_with_fallback(
    build: Callable[[str], Any], lower_args: Callable[[Any], tuple]
) -> tuple[Any, str, str]:
    """Compiles `build('cudnn')` (a jitted function) and falls back to `build('xla')` if that fails.

    `lower_args(fn)` returns the lowered program of `fn`. Returns `(compiled, implementation, note)`, the
    implementation 'cudnn' when the program calls cuDNN attention at all.
    """
    import jax

    if jax.default_backend() != "gpu":
        return (
            lower_args(build("xla")).compile(),
            "xla",
            f"cudnn needs a GPU (backend: {jax.default_backend()})",
        )
    try:
        compiled = lower_args(build("cudnn")).compile()
        calls = compiled.as_text().count("__cudnn$fmha")
        if not calls:
            return compiled, "xla", "no attention qualifies for cuDNN"
        return compiled, "cudnn", f"{calls} cuDNN attention calls in the program (the rest XLA)"
    except Exception as e:  # cuDNN rejects shapes with ValueError/NotImplementedError, CPUs with others
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return lower_args(build("xla")).compile(), "xla", f"cudnn unavailable ({reason})"


def train_mfu(args) -> dict[str, Any]:
    """bf16 training step of the language model (the trainer's own `train_step`): seconds per step,
    tokens/s, TFLOP/s, MFU."""
    import jax

    overrides = dict(workloads.TINY_LANGUAGE if args.tiny else workloads.LANGUAGE_PERCEIVER)
    overrides["attention_probs_dropout_prob"] = args.attention_dropout
    seq_len = 64 if args.tiny else 2048

    def run_for(implementation: str):
        return workloads.trainer_run(
            overrides, args.batch, seq_len, dtype="bfloat16", attention_implementation=implementation
        )

    xla_run = run_for("xla")
    config = xla_run.step.model_config
    state = {"state": xla_run.init(jax.random.key(0))}
    batch = workloads.trainer_batch(xla_run)
    start = time.perf_counter()
    compiled, implementation, note = compile_with_fallback(
        lambda impl: (xla_run if impl == "xla" else run_for(impl)).train_step,
        lambda fn: fn.lower(state["state"], batch),
    )
    precondition = cudnn_precondition(config)
    if precondition:
        note += f"; self-attention: {precondition}"
    compile_s = time.perf_counter() - start

    def run(i: int):
        state["state"], sums, _ = compiled(state["state"], batch)
        return sums["loss"] / sums["weight"]

    for i in range(args.warmup):
        jax.block_until_ready(run(i))
    start = time.perf_counter()
    for i in range(args.steps):
        loss = run(args.warmup + i)
    jax.block_until_ready((state, loss))
    step_s = (time.perf_counter() - start) / args.steps
    total = flops.model_flops("PerceiverForMaskedLM", config, args.batch, training=True, seq_len=seq_len)
    device = jax.devices()[0].device_kind
    peak = args.peak_tflops or bf16_peak_tflops(device)
    tflops = total / step_s / 1e12
    return {
        "workload": "language-perceiver" + (" (tiny)" if args.tiny else "") + " train step",
        "batch": args.batch,
        "seq_len": seq_len,
        "attention": implementation,
        "note": note,
        "compile_s": compile_s,
        "step_s": step_s,
        "tokens_per_s": args.batch * seq_len / step_s,
        "tflops": tflops,
        "peak_tflops": peak,
        "mfu": tflops / peak if peak else None,
        "loss": float(loss),
    }


def vision_throughput(args) -> list[dict[str, Any]]:
    """Inference images/s of each vision classification head present in `HEADS` (bf16 compute)."""
    import jax
    import jax.numpy as jnp

    from perceiver_jax import HEADS, PerceiverConfig, Settings

    rows = []
    for head, overrides in VISION_HEADS.items():
        name = head.replace("PerceiverForImageClassification", "vision ")
        overrides = TINY_VISION if args.tiny else overrides
        config = PerceiverConfig(**overrides)
        size = overrides["image_size"]
        images = jnp.asarray(workloads.image_batch(args.image_batch, size, size))

        def model_for(implementation: str):
            return HEADS[head](
                config, settings=Settings(dtype=jnp.bfloat16, attention_implementation=implementation)
            )

        variables = jax.jit(model_for("xla").init)(jax.random.key(0), images)
        compiled, implementation, note = compile_with_fallback(
            lambda impl: jax.jit(lambda v, x, m=model_for(impl): m.apply(v, x)),
            lambda fn: fn.lower(variables, images),
        )
        for _ in range(args.warmup):
            compiled(variables, images).block_until_ready()
        start = time.perf_counter()
        for _ in range(args.steps):
            out = compiled(variables, images)
        out.block_until_ready()
        seconds = (time.perf_counter() - start) / args.steps
        row = {
            "head": name,
            "batch": args.image_batch,
            "image": f"{size}x{size}",
            "attention": implementation,
            "note": note,
            "batch_s": seconds,
            "images_per_s": args.image_batch / seconds,
        }
        try:
            row["tflops"] = (
                flops.model_flops(head, config, args.image_batch, height=size, width=size) / seconds / 1e12
            )
        except NotImplementedError:
            row["tflops"] = None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="small stand-in models (a smoke test)")
    parser.add_argument("--batch", type=int, default=32, help="training batch (sequence 2048)")
    parser.add_argument("--image-batch", type=int, default=64, help="inference batch of the vision heads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--attention-dropout", type=float, default=0.0, help="HF's is 0.1 (see above)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.image_batch, args.steps, args.warmup = 2, 2, 2, 1
        common.add_xla_flags(common.TINY_XLA_FLAGS)

    import jax

    device = jax.devices()[0]
    print(f"# perceiver-jax on {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    train = train_mfu(args)
    mfu = f"{100 * train['mfu']:.1f}%" if train["mfu"] is not None else "n/a (unknown device peak)"
    print("\n## Training step, bf16 compute / float32 params, AdamW\n")
    print(
        common.markdown_table(
            [
                "workload",
                "batch x seq",
                "attention",
                "step s",
                "tokens/s",
                "TFLOP/s",
                "bf16 peak",
                "MFU",
                "note",
            ],
            [
                [
                    train["workload"],
                    f"{train['batch']} x {train['seq_len']}",
                    train["attention"],
                    train["step_s"],
                    train["tokens_per_s"],
                    train["tflops"],
                    train["peak_tflops"],
                    mfu,
                    train["note"],
                ]
            ],
        ),
        flush=True,
    )
    vision = vision_throughput(args)
    print("\n## Vision heads, inference, bf16 compute\n")
    print(
        common.markdown_table(
            ["head", "batch", "image", "attention", "images/s", "TFLOP/s", "note"],
            [
                [
                    r["head"],
                    r.get("batch"),
                    r.get("image"),
                    r.get("attention"),
                    r.get("images_per_s"),
                    r.get("tflops"),
                    r["note"],
                ]
                for r in vision
            ],
        ),
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device.device_kind, "train": train, "vision": vision}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
