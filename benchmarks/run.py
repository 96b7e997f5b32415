"""perceiver-jax vs Hugging Face torch on this CPU: `python -m benchmarks.run [--tiny] [--output FILE]`.

In one process, with the same intra-op thread count for both frameworks (`--threads`, default: every CPU
this process may use), on identical weights and inputs:

1. speed: HF torch (eval, `torch.inference_mode`) vs perceiver-jax (jitted) inference forward of
   `deepmind/language-perceiver` dimensions at batch 1 and 8 (sequence 2048, rows padded), of
   `vision-perceiver-fourier` at 224x224, and a full training step (forward, backward, AdamW) of the
   language model; each in float32 (both) and in bfloat16 compute with float32 parameters (perceiver-jax's
   `dtype=jnp.bfloat16`, HF under torch's bf16 autocast). Runs are interleaved (torch, jax, jax, torch, ...)
   after a warm-up; the tables show the median. FLOPs are analytic (`benchmarks.flops`); the peaks are the
   best float32 and bfloat16 matmuls measured here at the start and at the end of the run. After timing,
   one more run of each is profiled for the time spent in matrix multiplications, which bounds the
   speed-up any non-matmul optimisation could reach.
2. compile time of the jitted forward and training step vs depth (2, 8, 26 self-attention layers), and of
   every published head's inference forward at full size.
3. training-step memory with and without activation rematerialisation.
4. memory of decoding the optical-flow head's 182,528 queries, chunked vs all at once.

Unless `--plain`, the process restarts itself with the settings of `benchmarks.common.TUNED_ENV` and
runs XLA with `TUNED_XLA_FLAGS` (see there and RESULTS.md). `--tiny` runs every section on small
stand-in models (a smoke test for the tests).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

from benchmarks import common, flops, profile, workloads
from perceiver_jax.official import ARCHITECTURES, HEAD_CLASSES

LANGUAGE_HEAD = "PerceiverForMaskedLM"
VISION_HEAD = "PerceiverForImageClassificationFourier"

PRECISIONS = ("float32", "bfloat16")


def _measure(name, batch_size, gflop, torch_fn, jax_fn, jax_info, repeats, precision, **extra) -> dict:
    """Times both interleaved, then profiles one more run of each for its matrix-multiply time."""
    times = common.interleaved_times({"torch": torch_fn, "jax": jax_fn}, repeats)
    jax_profile = profile.jax_op_profile(jax_fn, jax_info["compiled"].as_text())
    torch_profile = profile.torch_matmul_ms(torch_fn)
    row = {
        "workload": name,
        "precision": precision,
        "batch": batch_size,
        "gflop": gflop,
        "torch_s": common.median(times["torch"]["wall"]),
        "jax_s": common.median(times["jax"]["wall"]),
        "torch_cpu_s": common.median(times["torch"]["cpu"]),
        "jax_cpu_s": common.median(times["jax"]["cpu"]),
        "torch_all_s": [round(t, 3) for t in times["torch"]["wall"]],
        "jax_all_s": [round(t, 3) for t in times["jax"]["wall"]],
        "torch_matmul_s": torch_profile["dot_ms"] / 1e3,
        "torch_profiled_s": torch_profile["wall_ms"] / 1e3,
        "jax_matmul_s": jax_profile["dot_ms"] / 1e3,
        "jax_profiled_s": jax_profile["wall_ms"] / 1e3,
        "jax_compile_s": jax_info["compile_s"],
        "load_1min": round(os.getloadavg()[0], 2),
    }
    row["speedup"] = row["torch_s"] / row["jax_s"]
    # Were every non-matmul microsecond of perceiver-jax removed, it would still need its matmul time.
    row["speedup_bound"] = row["torch_s"] / row["jax_matmul_s"]
    row.update(extra)
    print(_progress(row), flush=True)
    return row


def _forward_rows(name, pair, batch, batch_size, gflop, repeats) -> list[dict]:
    """Forward rows in float32 (both frameworks) and in bfloat16 (perceiver-jax's bf16 compute with float32
    parameters vs HF under torch's bf16 autocast); relative errors are against HF's float32 logits."""
    from perceiver_jax.parity import max_relative_error

    reference = workloads.torch_forward(pair, batch)().numpy()
    rows = []
    for precision in PRECISIONS:
        bf16 = precision == "bfloat16"
        torch_fn = workloads.torch_forward(pair, batch, autocast=bf16)
        jax_fn, info = workloads.jax_forward(workloads.with_compute_dtype(pair, precision), batch)
        errors = {"rel_err": jax_fn(), "torch_rel_err": torch_fn()}
        extra = {name: max_relative_error(out, reference) for name, out in errors.items()}
        rows.append(_measure(name, batch_size, gflop, torch_fn, jax_fn, info, repeats, precision, **extra))
    rows[1]["speedup_vs_torch_f32"] = rows[0]["torch_s"] / rows[1]["jax_s"]
    return rows


def _train_rows(name, pair, batch, batch_size, gflop, repeats) -> list[dict]:
    """Training-step rows in float32 and in bfloat16 compute (float32 parameters and AdamW state in both
    frameworks; HF under torch's bf16 autocast; perceiver-jax's is the trainer's own step)."""
    rows = []
    for precision in PRECISIONS:
        torch_fn = workloads.torch_train_step(pair, batch, autocast=precision == "bfloat16")
        jax_pair = workloads.with_compute_dtype(pair, precision)
        jax_fn, info = workloads.jax_train_step(jax_pair, batch)
        rows.append(_measure(name, batch_size, gflop, torch_fn, jax_fn, info, repeats, precision))
        del torch_fn, jax_fn, info  # one training state at a time
        gc.collect()
    rows[1]["speedup_vs_torch_f32"] = rows[0]["torch_s"] / rows[1]["jax_s"]
    return rows


def speed(args) -> list[dict]:
    """The speed rows, each in float32 and bfloat16: language forward at two batch sizes, training step,
    vision forward."""

    rows = []
    lang = workloads.TINY_LANGUAGE if args.tiny else workloads.LANGUAGE_PERCEIVER
    seq_len = 64 if args.tiny else 2048
    label = "language-perceiver" + (" (tiny)" if args.tiny else "")
    pair = workloads.build_pair(LANGUAGE_HEAD, lang)
    print(f"# {label}: {pair.num_params:,} parameters", flush=True)
    config = pair.model.config
    for batch_size, repeats in ((1, args.repeats), (args.forward_batch, max(3, args.repeats - 2))):
        batch = workloads.text_batch(config.vocab_size, batch_size, seq_len)
        gflop = flops.model_flops(LANGUAGE_HEAD, config, batch_size, seq_len=seq_len) / 1e9
        rows += _forward_rows(f"{label} forward", pair, batch, batch_size, gflop, repeats)

    # Last for this model: the training steps change HF's weights.
    batch = workloads.text_batch(config.vocab_size, args.train_batch, seq_len)
    gflop = flops.model_flops(LANGUAGE_HEAD, config, args.train_batch, training=True, seq_len=seq_len) / 1e9
    repeats = max(3, args.repeats - 2)
    rows += _train_rows(f"{label} train step", pair, batch, args.train_batch, gflop, repeats)
    del pair
    gc.collect()

    name = "vision-perceiver-fourier" + (" (tiny)" if args.tiny else "") + " forward"
    overrides = workloads.TINY_VISION_FOURIER if args.tiny else workloads.VISION_FOURIER
    pair = workloads.build_pair(VISION_HEAD, overrides)
    size = overrides["image_size"]
    batch = workloads.image_batch(1, size, size)
    gflop = flops.model_flops(VISION_HEAD, pair.model.config, 1, height=size, width=size) / 1e9
    rows += _forward_rows(name, pair, batch, 1, gflop, max(3, args.repeats - 2))
    return rows


def _progress(row: dict) -> str:
    return (
        f"  {row['workload']} {row['precision']} b{row['batch']}: torch {row['torch_s']:.3f}s "
        f"jax {row['jax_s']:.3f}s x{row['speedup']:.2f} (load {row['load_1min']})"
    )


def speed_table(rows: list[dict], peaks: dict[str, float]) -> str:
    """Markdown table of the speed rows; `peaks` maps a precision to its measured matmul GFLOP/s."""
    headers = [
        "workload",
        "precision",
        "batch",
        "GFLOP",
        "HF torch s",
        "jax s",
        "torch/jax",
        "HF f32/jax",
        "torch GFLOP/s",
        "jax GFLOP/s",
        "torch % peak",
        "jax % peak",
        "torch matmul s",
        "jax matmul s",
        "bound",
        "torch CPU s",
        "jax CPU s",
        "jax rel err",
        "torch rel err",
        "load",
    ]
    out = []
    for r in rows:
        torch_gflops, jax_gflops = r["gflop"] / r["torch_s"], r["gflop"] / r["jax_s"]
        peak = peaks[r["precision"]]
        vs_f32 = r.get("speedup_vs_torch_f32", r["speedup"] if r["precision"] == "float32" else None)
        out.append(
            [
                r["workload"],
                r["precision"],
                r["batch"],
                r["gflop"],
                r["torch_s"],
                r["jax_s"],
                f"**{r['speedup']:.2f}x**",
                None if vs_f32 is None else f"{vs_f32:.2f}x",
                torch_gflops,
                jax_gflops,
                f"{100 * torch_gflops / peak:.0f}%",
                f"{100 * jax_gflops / peak:.0f}%",
                r["torch_matmul_s"],
                r["jax_matmul_s"],
                f"{r['speedup_bound']:.2f}x",
                r["torch_cpu_s"],
                r["jax_cpu_s"],
                f"{r['rel_err']:.1e}" if "rel_err" in r else "(dropout)",
                f"{r['torch_rel_err']:.1e}" if "torch_rel_err" in r else "(dropout)",
                r["load_1min"],
            ]
        )
    return common.markdown_table(headers, out)


def compile_section(args) -> list[dict]:
    """Compile time vs depth (language-perceiver widths)."""
    from benchmarks import compile_memory

    lang = workloads.TINY_LANGUAGE if args.tiny else workloads.LANGUAGE_PERCEIVER
    depths = (1, 2) if args.tiny else (2, 8, 26)
    seq_len = 64 if args.tiny else 2048
    return compile_memory.compile_times(lang, depths, 1, seq_len)


def heads_section(args) -> list[dict]:
    """Compile time of each published checkpoint's head (inference forward, batch 1, full-size inputs)."""
    from benchmarks import compile_memory

    if args.tiny:
        models = {
            "language (tiny)": (LANGUAGE_HEAD, workloads.TINY_LANGUAGE),
            "vision-fourier (tiny)": (VISION_HEAD, workloads.TINY_VISION_FOURIER),
        }
    else:
        models = {name.split("/")[1]: (HEAD_CLASSES[name], ARCHITECTURES[name]) for name in ARCHITECTURES}
    return compile_memory.head_compile_times(models)


def heads_table(rows: list[dict]) -> str:
    """Markdown table of the heads' compile times."""
    return common.columns_table(rows, [
        ("checkpoint", "model"), ("head", "head"), ("lower s", "lower_s"), ("compile s", "compile_s"),
    ])  # fmt: skip


def compile_table(rows: list[dict]) -> str:
    """Markdown table of compile times, with the ratio to the shallowest model."""
    base = rows[0]

    def ratio(key):
        return lambda r: f"{r[key] / base[key]:.2f}x"

    return common.columns_table(rows, [
        ("self-attention layers", "layers"), ("forward lower s", "forward_lower_s"),
        ("forward compile s", "forward_compile_s"), ("vs shallowest", ratio("forward_compile_s")),
        ("train step lower s", "train_lower_s"), ("train step compile s", "train_compile_s"),
        ("vs shallowest", ratio("train_compile_s")),
    ])  # fmt: skip


def memory_section(args) -> list[dict]:
    """Training-step memory per remat policy (fresh processes)."""
    from benchmarks import compile_memory

    seq_len = 64 if args.tiny else 2048
    remats = ("none", "full") if args.tiny else ("none", "dots", "full")
    return compile_memory.remat_memory(remats, args.train_batch, seq_len, args.tiny, args.prng_impl)


def memory_table(rows: list[dict]) -> str:
    """Markdown table of training memory."""
    return common.columns_table(rows, [
        ("remat", "remat"), ("XLA temp MiB", "temp_mib"), ("XLA arguments MiB", "arguments_mib"),
        ("RSS before step MiB", "rss_before_step_mib"), ("peak RSS MiB", "peak_rss_mib"),
        ("step's extra RSS MiB", lambda r: r["peak_rss_mib"] - r["rss_before_step_mib"]),
        ("step s (first run)", "step_s"),
    ])  # fmt: skip


def decode_section(args) -> list[dict]:
    """Optical-flow decoding memory, chunked vs unchunked."""
    from benchmarks import compile_memory

    if args.tiny:
        overrides = dict(num_latents=16, d_latents=32, num_self_attends_per_block=1, train_size=(24, 32))
        overrides.update(num_self_attention_heads=2, num_cross_attention_heads=1)
        chunks = (None, 64)
    else:
        overrides = workloads.OPTICAL_FLOW
        chunks = (None, 16384, 2048)
    return compile_memory.decode_memory(overrides, chunks)


def decode_table(rows: list[dict]) -> str:
    """Markdown table of decoding memory."""
    return common.columns_table(rows, [
        ("decoder queries", "queries"), ("chunk_size", lambda r: r["chunk_size"] or "all"),
        ("decoder alone: XLA temp MiB", "decoder_temp_mib"), ("whole head: XLA temp MiB", "head_temp_mib"),
        ("compile s", "head_compile_s"),
    ])  # fmt: skip


def _peak(args, dtype: str) -> dict[str, Any]:
    sizes = (256, 512) if args.tiny else (1024, 2048, 3072, 4096)
    return common.matmul_peak(sizes, repeats=3 if args.tiny else 5, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="small stand-in models (a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of both (default: all)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of the batch-1 forward (others: -2)"
    )
    parser.add_argument("--forward-batch", type=int, default=8, help="the larger forward batch")
    parser.add_argument("--train-batch", type=int, default=2, help="batch of the training-step rows")
    parser.add_argument("--prng-impl", default=None, help="JAX PRNG of the dropout masks (default: jax's)")
    parser.add_argument(
        "--sections",
        default="speed,compile,heads,memory,decode",
        help="comma-separated subset of speed,compile,heads,memory,decode",
    )
    parser.add_argument("--plain", action="store_true", help="without the tuned settings (see above)")
    parser.add_argument("--output", help="also write the markdown report to this file")
    parser.add_argument("--json", help="also write all measurements as JSON to this file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.forward_batch, args.train_batch = min(args.repeats, 3), 2, 2
    sections = set(args.sections.split(","))
    unknown = sections - {"speed", "compile", "heads", "memory", "decode"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if not args.plain:
        common.reexec_with_tuned_env("benchmarks.run", argv)

    threads = common.configure_threads(args.threads, tuned=not args.plain, tiny=args.tiny)
    common.set_prng_impl(args.prng_impl)
    started = time.time()
    info = common.machine_info()
    results: dict[str, Any] = {"machine": info, "command": " ".join(["python -m benchmarks.run", *argv])}
    report = [
        f"# perceiver-jax vs HF torch{' (--tiny smoke run)' if args.tiny else ''}",
        "",
        f"- machine: {info['cpu']}, {info['cores_used']} of {info['cores_online']} cores used, "
        f"{info['memory_gib']} GiB; load average (1 min) at start {info['load_average_1min']}",
        f"- threads: torch {info['torch_threads']} intra-op, XLA CPU pool {info['xla_threads']} "
        f"(process pinned to {threads} CPUs)",
        f"- environment: XLA_FLAGS=`{info['XLA_FLAGS']}` GLIBC_TUNABLES=`{info['GLIBC_TUNABLES']}` "
        f"OMP_WAIT_POLICY=`{info['OMP_WAIT_POLICY']}`",
        f"- versions: python {info['python']}, jax {info['jax']}, flax {info['flax']}, "
        f"optax {info['optax']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"numpy {info['numpy']}",
        f"- command: `{results['command']}`",
    ]
    print("\n".join(report), flush=True)
    speed_rows: list[dict] = []
    peaks: dict[str, float] = {}
    if "speed" in sections:
        measured = [_peak(args, dtype) for dtype in PRECISIONS]
        speed_rows = speed(args)
        measured += [_peak(args, dtype) for dtype in PRECISIONS]
        results.update(matmul_peak=measured, speed=speed_rows)
        for dtype in PRECISIONS:
            runs = [p for p in measured if p["dtype"] == dtype]
            peaks[dtype] = max(p["peak"] for p in runs)
            best = {name: max(max(p[name].values()) for p in runs) for name in ("jax", "torch")}
            report.append(
                f"- {dtype} matmul peak measured here: **{peaks[dtype]:.1f} GFLOP/s** "
                f"(best n x n @ n x n over n in {sorted(runs[0]['jax'])}, at the start and the end "
                f"of the run; jnp.dot {best['jax']:.1f}, torch.mm {best['torch']:.1f})"
            )
        report += [
            "",
            "## Speed (median wall seconds)",
            "",
            "float32 rows: both frameworks in float32. bfloat16 rows: perceiver-jax computing in bf16 with "
            "float32 parameters (`dtype=jnp.bfloat16`) vs HF under `torch.autocast('cpu', torch.bfloat16)`; "
            "`HF f32/jax` compares with HF in float32, its default. `% peak`: of the measured matmul peak of "
            "the row's precision. `matmul s`: time in matrix-multiply ops of one profiled run; "
            "`bound`: HF torch s / jax matmul s, the most any non-matmul optimisation of perceiver-jax "
            "could reach; CPU s: process CPU time of all threads (median); rel err: max |logits - HF "
            "float32 logits| / max |HF float32 logits|.",
            "",
            speed_table(speed_rows, peaks),
        ]
    timings = {"speed": time.time() - started}
    extra_sections = {
        "compile": (compile_section, compile_table,
                    "Compile time vs depth (language-perceiver widths, batch 1)"),
        "heads": (heads_section, heads_table,
                  "Compile time of every head (inference forward at full size, batch 1)"),
        "memory": (memory_section, memory_table,
                   f"Training-step memory vs remat (batch {args.train_batch}, fresh process each)"),
        "decode": (decode_section, decode_table, "Optical-flow decoding memory (one frame pair, inference)"),
    }  # fmt: skip
    for name, (measure, table, title) in extra_sections.items():
        if name in sections:
            section_start = time.time()
            results[name] = measure(args)
            timings[name] = time.time() - section_start
            report += ["", f"## {title}", "", table(results[name])]
    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items() if name in sections)
    report += [
        "",
        f"Total {time.time() - started:.0f} s ({spent}); "
        f"load average (1 min) at the end {os.getloadavg()[0]:.2f}.",
    ]
    text = "\n".join(report)
    print("\n" + text, flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
