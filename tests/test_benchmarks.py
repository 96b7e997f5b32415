"""The benchmark scripts: analytic FLOP counts against torch's FLOP counter run on the HF models, and smoke
runs of `python -m benchmarks.run --tiny` (all four sections, in two runs) and `python -m benchmarks.gpu
--tiny` (on CPU, where the GPU script must fall back from cuDNN to XLA attention) that print every table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from helpers import tiny_dims

from benchmarks import flops, gpu, scaling, workloads
from perceiver_jax import PerceiverConfig
from perceiver_jax.official import ARCHITECTURES, HEAD_CLASSES
from train import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = tiny_dims(num_latents=8, d_latents=32, num_blocks=2, max_position_embeddings=24, num_labels=5)
TEXT = dict(seq_len=20)
IMAGE = dict(height=6, width=5)


@pytest.fixture
def one_torch_thread():
    """Tiny models on one thread: OpenMP threads waiting on each other make them 50x slower on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_inputs(dims: dict[str, int]) -> torch.Tensor:
    if "seq_len" in dims:
        return torch.randint(0, 262, (3, dims["seq_len"]))
    return torch.randn(3, 3, dims["height"], dims["width"])


@pytest.mark.parametrize(
    "head, overrides, dims",
    [
        ("PerceiverForMaskedLM", dict(qk_channels=8, v_channels=32), TEXT),
        ("PerceiverForMaskedLM", dict(cross_attention_shape_for_attention="q"), TEXT),
        ("PerceiverForSequenceClassification", dict(qk_channels=8, v_channels=32), TEXT),
        ("PerceiverForImageClassificationFourier", {}, IMAGE),
        ("PerceiverForImageClassificationFourier", dict(self_attention_widening_factor=2), IMAGE),
    ],
)
def test_analytic_flops_equal_torch_flop_counter(head, overrides, dims, one_torch_thread):
    """Forward and training-step (forward + backward) FLOPs of the HF model as torch counts them."""
    torch.manual_seed(0)
    hf_config = transformers.PerceiverConfig(**SMALL, **overrides)
    config = PerceiverConfig.from_hf(hf_config.to_dict())
    model = getattr(transformers, head)(hf_config)
    inputs = _torch_inputs(dims)
    with FlopCounterMode(display=False) as forward:
        model(inputs=inputs)
    assert flops.model_flops(head, config, 3, **dims) == forward.get_total_flops()
    with FlopCounterMode(display=False) as training:
        model(inputs=inputs).logits.sum().backward()
    assert flops.model_flops(head, config, 3, training=True, **dims) == training.get_total_flops()


def test_language_perceiver_flops_by_part():
    """The published model's forward: 121 GFLOP per sequence of 2048 bytes, 84% of it in the 26 layers."""
    config = PerceiverConfig.from_hf(workloads.hf_config(workloads.LANGUAGE_PERCEIVER).to_dict())
    parts = flops.forward_flops("PerceiverForMaskedLM", config, seq_len=2048)
    assert set(parts) == {"cross_attention", "self_attention", "decoder", "output_embedding"}
    assert parts["output_embedding"] == 2 * 2048 * 768 * 262
    assert round(sum(parts.values()) / 1e9) == 121
    assert 0.83 < parts["self_attention"] / sum(parts.values()) < 0.84
    with pytest.raises(NotImplementedError):
        flops.forward_flops("PerceiverForOpticalFlow", config)


def test_bf16_peaks_by_device_name():
    assert gpu.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.bf16_peak_tflops("NVIDIA H200") == 989.4
    assert gpu.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert gpu.bf16_peak_tflops("NVIDIA L4") == 121.0
    assert gpu.bf16_peak_tflops("cpu") is None


def test_cudnn_precondition_names_the_head_widths():
    """language-perceiver's heads are 32 wide for queries/keys and 160 for values: no cuDNN attention."""
    language = PerceiverConfig(**workloads.LANGUAGE_PERCEIVER)
    assert "32 != v head width 160" in gpu.cudnn_precondition(language)
    assert gpu.cudnn_precondition(PerceiverConfig(**workloads.VISION_FOURIER)) is None


# The smoke runs, started together since XLA compiles on one core: the CPU script's sections in two runs.
SMOKE_RUNS = {
    "speed": ["benchmarks.run", "--tiny", "--sections", "speed,decode"],
    "compile": ["benchmarks.run", "--tiny", "--sections", "compile,heads,memory"],
    "gpu": ["benchmarks.gpu", "--tiny"],
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """`{name: (printed output, JSON results)}` of the `SMOKE_RUNS`."""
    folder = tmp_path_factory.mktemp("benchmarks")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake devices from conftest
    procs = {}
    for name, command in SMOKE_RUNS.items():
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", *command, "--json", str(folder / f"{name}.json")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    results = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output[-5000:]
        with open(folder / f"{name}.json") as f:
            results[name] = (output, json.load(f))
    return results


def test_cpu_benchmark_tiny_prints_every_table(smoke_runs):
    speed_output, results = smoke_runs["speed"]
    compile_output, compile_results = smoke_runs["compile"]
    for heading in ("## Speed", "## Optical-flow"):
        assert heading in speed_output
    for heading in ("## Compile time vs depth", "## Compile time of every head", "## Training-step memory"):
        assert heading in compile_output
    for precision in ("float32", "bfloat16"):
        assert f"| language-perceiver (tiny) forward | {precision} | 1 |" in speed_output
        assert f"| language-perceiver (tiny) train step | {precision} | 2 |" in speed_output
        assert f"| vision-perceiver-fourier (tiny) forward | {precision} | 1 |" in speed_output
    assert results["machine"]["torch_threads"] == results["machine"]["xla_threads"]
    assert [p["dtype"] for p in results["matmul_peak"]] == ["float32", "bfloat16"] * 2
    speed = results["speed"]
    assert [(r["batch"], r["precision"][0]) for r in speed] == [
        (1, "f"),
        (1, "b"),
        (2, "f"),
        (2, "b"),
        (2, "f"),
        (2, "b"),
        (1, "f"),
        (1, "b"),
    ]
    for row in speed:
        assert row["torch_s"] > 0 and row["jax_s"] > 0 and row["gflop"] > 0
        assert 0 < row["jax_matmul_s"] <= row["jax_profiled_s"]
        if "forward" in row["workload"] and row["precision"] == "float32":
            assert row["rel_err"] < 1e-5 and row["torch_rel_err"] == 0  # both frameworks did the same work
        elif "forward" in row["workload"]:
            assert 1e-4 < row["rel_err"] < 5e-2 and 1e-4 < row["torch_rel_err"] < 5e-2  # bf16 compute
        if row["precision"] == "bfloat16":
            assert row["speedup_vs_torch_f32"] > 0
    decode = results["decode"]
    assert [r["chunk_size"] for r in decode] == [None, 64]
    assert decode[1]["decoder_temp_mib"] < decode[0]["decoder_temp_mib"]  # chunks bound the decoder's memory
    assert [r["layers"] for r in compile_results["compile"]] == [1, 2]
    heads = compile_results["heads"]
    assert [r["head"] for r in heads] == ["PerceiverForMaskedLM", "PerceiverForImageClassificationFourier"]
    assert all(r["compile_s"] > 0 for r in heads)
    memory = {r["remat"]: r for r in compile_results["memory"]}
    assert set(memory) == {"none", "full"}
    assert memory["full"]["temp_mib"] < memory["none"]["temp_mib"]
    assert all(r["peak_rss_mib"] >= r["rss_before_step_mib"] > 0 for r in memory.values())


def test_gpu_benchmark_tiny_falls_back_to_xla_on_cpu(smoke_runs):
    output, results = smoke_runs["gpu"]
    assert "## Training step" in output and "## Vision heads" in output
    train = results["train"]
    assert train["attention"] == "xla" and "cudnn needs a GPU" in train["note"]
    assert "qk head width 8 != v head width 16" in train["note"]
    assert train["step_s"] > 0 and train["mfu"] is None  # no bf16 peak for a CPU
    heads = {r["head"]: r for r in results["vision"]}
    assert set(heads) == {"vision Learned", "vision Fourier", "vision ConvProcessing"}
    for row in heads.values():
        assert row["attention"] == "xla" and "cudnn needs a GPU" in row["note"]
        assert row["images_per_s"] > 0


def test_loop_ratio_times_the_loop_and_the_bare_step(capsys):
    from benchmarks import loop_ratio

    loop_ratio.main(["--configs", "configs/mlm_tiny.py", "--steps", "20"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    loop, bare, ratio = (
        float(line.split(key)[1].split()[0].rstrip(",")) for key in ("loop ", "bare step ", "loop / bare ")
    )
    assert loop > 0 and bare > 0 and ratio == pytest.approx(loop / bare, rel=1e-2)


def test_multimodal_full_decode_memory_is_flat_in_the_output_size():
    from benchmarks import compile_memory

    tiny = dict(
        num_latents=8, d_latents=32, d_model=16, num_self_attends_per_block=1, num_self_attention_heads=2,
        num_cross_attention_heads=1, num_labels=3, num_frames=2, image_size=8, audio_samples_per_frame=16,
        samples_per_patch=8, output_shape=(1, 2, 32, 32), output_num_channels=16,
        _label_trainable_num_channels=16,
    )  # fmt: skip
    small, large = compile_memory.multimodal_decode_memory(tiny, [(32, 32), (64, 64)], chunk_size=64)
    assert large["points"] == 4 * small["points"] and large["output_mib"] > 3 * small["output_mib"]
    assert large["temp_mib"] <= 1.2 * small["temp_mib"]


def test_scaling_compiles_the_chosen_slices_once_and_marks_the_best(tmp_path, monkeypatch):
    calls = []

    def fake_compile(config, topology, batch, setting, timeout):
        calls.append((config, topology, batch))
        mfu = {"none": 0.4, "dots": 0.3}[setting["remat"]] + (0.1 if setting["data"] == 1 else 0.0)
        report = dict(total_bytes=2**30, hbm_bytes=95 * 2**30, estimated_seconds=0.5, mfu_bound=mfu)
        return dict(report, topology=topology)  # train.aot's report names the topology too

    monkeypatch.setattr(scaling, "compile_one", fake_compile)
    out = str(tmp_path / "scaling.json")
    scaling.run(out, 10, slices=["v5p-64"], models=["language"])
    assert calls == [("configs/language_perceiver.py", "v5p:4x4x4", 2048)] * 3
    scaling.run(out, 10, slices=["v5p-64"], models=["language"])  # rerun: every setting is there already
    assert len(calls) == 3
    best = [line for line in scaling.table(out).splitlines() if "**best**" in line]
    assert len(best) == 1 and "| v5p-64 | 1 x 64 | none | 1.0 of 95 GiB | yes | 500.0 ms | 50%" in best[0]


def test_benchmarks_time_the_trainers_own_step():
    run = workloads.trainer_run(workloads.TINY_LANGUAGE, 2, 64, remat="full")
    assert isinstance(run, build.Run) and run.step.config.remat == "full"
    assert run.step.config.clip_grad_norm == 1.0 and run.step.config.optimizer == "adamw"  # the trainer's
    state, sums, _ = run.train_step(run.init(jax.random.key(0)), workloads.trainer_batch(run))
    assert int(state.step) == 1 and float(sums["weight"]) == 2 * 64 and np.isfinite(float(sums["loss"]))


def test_the_hf_comparison_times_the_trainers_step_doing_torchs_work():
    """At the same weights and batch (no dropout), the trainer's step that the speed table times has HF's
    loss, and it trains (the loss falls at a second step)."""
    pair = workloads.build_pair("PerceiverForMaskedLM", workloads.TINY_LANGUAGE)
    batch = workloads.text_batch(pair.model.config.vocab_size, 2, 64)
    jax_step, _ = workloads.jax_train_step(pair, batch)
    torch_step = workloads.torch_train_step(pair, batch)
    first, reference = float(jax_step()), float(torch_step())
    np.testing.assert_allclose(first, reference, rtol=1e-5)
    assert float(jax_step()) < first


def test_every_head_compiles_at_full_size_inputs():
    """The heads benchmark's inputs are each head's full size (a whole text window, a whole clip)."""
    from benchmarks import compile_memory

    for name, head in HEAD_CLASSES.items():
        config = PerceiverConfig(**ARCHITECTURES[name])
        inputs = jax.tree.leaves(compile_memory.full_size_inputs(head, config, 2))
        assert all(x.shape[0] == 2 for x in inputs)
        if head == "PerceiverForMaskedLM":
            assert inputs[0].shape == (2, 2048)
        elif head == "PerceiverForMultimodalAutoencoding":  # audio, image, label
            assert [x.shape for x in inputs] == [(2, 30720, 1), (2, 16, 224, 224, 3), (2, 700)]
        elif head == "PerceiverForOpticalFlow":
            assert inputs[0].shape == (2, 2, 368, 496, 27)
        else:
            assert inputs[0].shape == (2, 224, 224, 3)


def test_scaling_names_a_compiler_crash_and_otherwise_the_last_line():
    stderr = "I1202 backend\nFatal Python error: Segmentation fault\n\nExtension modules: numpy (total: 1)\n"
    assert scaling.failure("", stderr) == "the compiler crashed (Segmentation fault)"
    assert scaling.failure("compiling\nerror: needs 20.1 GiB, 16.0 available\n", "") == (
        "error: needs 20.1 GiB, 16.0 available"
    )
