"""perceiver-jax compile time vs depth and per head, training-step memory with and without
rematerialisation, and the memory of decoding many queries with and without chunking. JAX only (nothing
here runs HF).

Memory is reported two ways: XLA's own accounting of the compiled program (`memory_analysis()`: bytes of
arguments, outputs and temporaries), and the peak resident memory (VmHWM) during the step of a fresh
process that runs it (`python -m benchmarks.compile_memory worker ...`, started by `remat_memory`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

from benchmarks import common, workloads

MIB = 2**20


def _abstract_text_inputs(batch_size: int, seq_len: int):
    import jax
    import jax.numpy as jnp

    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    return ids, ids


def compile_times(
    overrides: dict[str, Any], depths: Sequence[int], batch_size: int, seq_len: int, repeats: int = 1
) -> list[dict[str, Any]]:
    """Lower and compile seconds (best of `repeats`, each from a fresh `jax.jit`) of the masked-LM
    forward and the trainer's training step with `num_self_attends_per_block` = each of `depths`."""
    import jax

    rows = []
    for depth in depths:
        row: dict[str, Any] = {"layers": depth}
        for _ in range(repeats):
            model_overrides = dict(overrides, num_self_attends_per_block=depth)
            run = workloads.trainer_run(model_overrides, batch_size, seq_len)
            model, params = run.step.model, run.abstract_state.params
            forward = jax.jit(lambda p, *a: model.apply({"params": p}, **workloads.head_kwargs(a)))
            _, lower_s, compile_s = common.lower_and_compile(
                forward, params, *_abstract_text_inputs(batch_size, seq_len)
            )
            _, train_lower_s, train_compile_s = common.lower_and_compile(
                run.train_step, run.abstract_state, run.abstract_batch
            )
            for key, value in (
                ("forward_lower_s", lower_s),
                ("forward_compile_s", compile_s),
                ("train_lower_s", train_lower_s),
                ("train_compile_s", train_compile_s),
            ):
                row[key] = min(row.get(key, float("inf")), value)
        print(
            f"  compile {depth} layers: forward {row['forward_compile_s']:.1f} s, train step "
            f"{row['train_compile_s']:.1f} s",
            flush=True,
        )
        rows.append(row)
    return rows


def full_size_inputs(head: str, config, batch_size: int) -> dict[str, Any]:
    """Abstract keyword inputs of `head` at its config's full size: `max_position_embeddings` tokens for
    the text heads, whole clips for the multimodal head (every output point decoded), the
    `example_inputs` (already full size) of the image and flow heads."""
    import jax
    import jax.numpy as jnp

    from perceiver_jax import HEADS

    if head in ("PerceiverForMaskedLM", "PerceiverForSequenceClassification"):
        inputs = jnp.zeros((batch_size, config.max_position_embeddings), jnp.int32)
    elif head == "PerceiverForMultimodalAutoencoding":
        samples = config.num_frames * config.audio_samples_per_frame
        video = (batch_size, config.num_frames, *config.image_hw, config.multimodal_image_channels)
        inputs = dict(
            image=jnp.zeros(video), audio=jnp.zeros((batch_size, samples, 1)),
            label=jnp.zeros((batch_size, config.num_labels)),
        )  # fmt: skip
    else:
        inputs = HEADS[head](config).example_inputs(batch_size)["inputs"]
    return {"inputs": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), inputs)}


def head_compile_times(models: dict[str, tuple[str, dict[str, Any]]], batch_size: int = 1) -> list[dict]:
    """Lower and compile seconds of the jitted inference forward of each model at `full_size_inputs`:
    `models` maps a label to (head class, `PerceiverConfig` fields)."""
    import jax

    from perceiver_jax import HEADS, PerceiverConfig

    rows = []
    for label, (head, overrides) in models.items():
        config = PerceiverConfig(**overrides)
        model = HEADS[head](config)
        variables = jax.eval_shape(model.init, jax.random.key(0), **model.example_inputs())
        forward = jax.jit(lambda v, kwargs, model=model: model.apply(v, **kwargs))
        inputs = full_size_inputs(head, config, batch_size)
        _, lower_s, compile_s = common.lower_and_compile(forward, variables, inputs)
        rows.append(dict(model=label, head=head, lower_s=lower_s, compile_s=compile_s))
        print(f"  compile {label}: lower {lower_s:.1f} s, compile {compile_s:.1f} s", flush=True)
    return rows


def _memory_stats(compiled) -> dict[str, float]:
    """XLA's accounting of a compiled program, in MiB."""
    stats = compiled.memory_analysis()
    return {
        "arguments_mib": stats.argument_size_in_bytes / MIB,
        "temp_mib": stats.temp_size_in_bytes / MIB,
        "output_mib": stats.output_size_in_bytes / MIB,
        "alias_mib": stats.alias_size_in_bytes / MIB,
    }


def remat_memory(
    remats: Sequence[str], batch_size: int, seq_len: int, tiny: bool, prng_impl: str | None = None
) -> list[dict[str, Any]]:
    """Per remat policy, from a fresh process running one masked-LM training step: XLA's accounting of
    the compiled step and the process's peak RSS during the step. The processes run one after the other,
    except for `tiny` models (a smoke test), which run at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    def measure(remat: str) -> dict[str, Any]:
        worker_args = ["worker", "--remat", remat, "--batch", str(batch_size), "--seq-len", str(seq_len)]
        worker_args += ["--tiny"] if tiny else []
        worker_args += ["--prng-impl", prng_impl] if prng_impl else []
        row = dict(remat=remat, **common.run_worker("benchmarks.compile_memory", worker_args))
        print(
            f"  remat {remat}: XLA temp {row['temp_mib']:.0f} MiB, peak RSS {row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max_workers=len(remats) if tiny else 1) as pool:
        return list(pool.map(measure, remats))


def decode_memory(flow_overrides: dict[str, Any], chunk_sizes: Sequence[int | None]) -> list[dict[str, Any]]:
    """XLA's memory accounting (MiB) of decoding the optical-flow head's H*W queries (one frame pair) with
    each decoder `chunk_size` (None: all queries at once): of its `BasicDecoder` alone (queries and latents
    given) and of the whole head's inference forward."""
    import jax
    import jax.numpy as jnp

    from perceiver_jax import HEADS, PerceiverConfig
    from perceiver_jax.decoders import BasicDecoder

    config = PerceiverConfig(**flow_overrides)
    num_queries = config.train_size[0] * config.train_size[1]
    rows = []
    for chunk in chunk_sizes:
        model = HEADS["PerceiverForOpticalFlow"](config, chunk_size=chunk)
        frames = model.example_inputs(1)["inputs"]
        frames = jax.ShapeDtypeStruct(frames.shape, frames.dtype)
        params = jax.eval_shape(model.init, jax.random.key(0), frames)
        head, _, compile_s = common.lower_and_compile(jax.jit(model.apply), params, frames)
        # The head's decoder on its own: the queries are the preprocessed pixels (patch features + positions).
        width = config.flow_patch_channels + 2 * (2 * config.flow_num_bands + 1)
        decoder = BasicDecoder(config=config, output_num_channels=2, num_channels=width, chunk_size=chunk)
        query = jax.ShapeDtypeStruct((1, num_queries, width), jnp.float32)
        latents = jax.ShapeDtypeStruct((1, config.num_latents, config.d_latents), jnp.float32)
        decoder_params = jax.eval_shape(decoder.init, jax.random.key(0), query, latents)
        alone, _, _ = common.lower_and_compile(jax.jit(decoder.apply), decoder_params, query, latents)
        rows.append(
            {
                "queries": num_queries,
                "chunk_size": chunk,
                "decoder_temp_mib": _memory_stats(alone)["temp_mib"],
                "head_temp_mib": _memory_stats(head)["temp_mib"],
                "head_compile_s": compile_s,
            }
        )
        print(
            f"  decode chunk_size={chunk}: XLA temp decoder {rows[-1]['decoder_temp_mib']:.0f} MiB, "
            f"whole head {rows[-1]['head_temp_mib']:.0f} MiB",
            flush=True,
        )
    return rows


def multimodal_decode_memory(
    overrides: dict[str, Any], output_sizes: Sequence[tuple[int, int]], chunk_size: int = 8192
) -> list[dict[str, Any]]:
    """XLA's memory accounting (MiB) of the multimodal head decoding every point of its output video
    (`output_shape` (1, T, H, W) for each (H, W) of `output_sizes`; the same inputs) with `chunk_size`:
    the streamed reconstruction's temporaries should not grow with the output (its outputs do)."""
    import jax

    from perceiver_jax import HEADS, PerceiverConfig

    rows = []
    for height, width in output_sizes:
        config = PerceiverConfig(**overrides)
        config = config.replace(output_shape=(1, config.output_shape[1], height, width))
        model = HEADS["PerceiverForMultimodalAutoencoding"](config, chunk_size=chunk_size)
        example = model.example_inputs(1)
        inputs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example["inputs"])
        variables = jax.eval_shape(model.init, jax.random.key(0), **example)
        compiled, _, compile_s = common.lower_and_compile(jax.jit(model.apply), variables, inputs)
        stats = _memory_stats(compiled)
        points = height * width * config.output_shape[1]
        rows.append(dict(output_hw=(height, width), points=points, compile_s=compile_s, **stats))
        print(
            f"  multimodal full decode {height}x{width} x {config.output_shape[1]} frames: XLA temp "
            f"{stats['temp_mib']:.0f} MiB, outputs {stats['output_mib']:.0f} MiB",
            flush=True,
        )
    return rows


def _worker(argv: Sequence[str]) -> None:
    """Fresh-process measurement: build the trainer's masked-LM run, compile and run one step, print XLA's
    memory accounting, the RSS before the step and the peak RSS during the step as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--remat", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--prng-impl", default=None)
    args = parser.parse_args(argv)
    import jax

    common.set_prng_impl(args.prng_impl)
    overrides = workloads.TINY_LANGUAGE if args.tiny else workloads.LANGUAGE_PERCEIVER
    run = workloads.trainer_run(overrides, args.batch, args.seq_len, remat=args.remat)
    state, batch = run.init(jax.random.key(0)), workloads.trainer_batch(run)
    compiled = run.train_step.lower(state, batch).compile()
    jax.block_until_ready(state)
    before = common.current_rss_mib()
    common.reset_peak_rss()  # the step's peak, not initialisation's or compilation's
    start = time.perf_counter()
    state, sums, _ = compiled(state, batch)
    jax.block_until_ready((state, sums))
    seconds = time.perf_counter() - start
    peak = common.peak_rss_mib()
    result = {"rss_before_step_mib": before, "peak_rss_mib": peak, "step_s": seconds}
    print(json.dumps(dict(result, **_memory_stats(compiled))))


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["multimodal"]:  # the paper's model, 224 x 224 and 448 x 448 output frames
        multimodal_decode_memory(workloads.MULTIMODAL_PERCEIVER, [(224, 224), (448, 448)])
    elif len(sys.argv) > 1 and sys.argv[1] == "worker":
        _worker(sys.argv[2:])
    else:
        sys.exit(
            "usage: python -m benchmarks.compile_memory worker --remat R --batch B --seq-len T [--tiny]\n"
            "       python -m benchmarks.compile_memory multimodal"
        )
