"""`python -m train.aot`: the trainer's step compiled for a TPU topology (XLA's TPU compiler, from libtpu,
on this CPU) and for fake CPU devices; the does-not-fit path."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aot(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    result = subprocess.run(
        [sys.executable, "-m", "train.aot", "--config", "configs/mlm_tiny.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout


def test_tpu_topology():
    code, out = aot("--topology", "v5e:2x2", "--config.mesh.fsdp=4", "--config.global_batch_size=64")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "v5e:2x2: 4 x TPU v5 lite, mesh {'data': 1, 'fsdp': 4, 'tensor': 1}"
    assert "of 16.00 GiB HBM - fits" in lines[1]
    flops = float(lines[2].split()[-1])
    assert 1e8 < flops < 1e11  # a tiny model's step, every layer counted (the unrolled estimate)
    assert "estimated step time" in lines[3] and "MFU bound" in lines[4]
    assert any(line.strip().startswith("all-reduce:") for line in lines)


def test_cpu_devices():
    code, out = aot("--topology", "cpu:8", "--config.mesh.fsdp=8", "--config.global_batch_size=64")
    assert code == 0, out
    assert out.startswith("cpu:8: 8 x cpu, mesh {'data': 1, 'fsdp': 8, 'tensor': 1}")
    assert "of unknown HBM" in out and "all-gather:" in out


def test_a_configuration_that_does_not_fit_exits_with_the_memory_and_advice():
    code, out = aot("--topology", "v5e:2x2", "--config.mesh.fsdp=4", "--config.global_batch_size=262144")
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("v5e:2x2: does not fit: ") and "available per chip" in last
    assert "--config.remat" in last and "--config.mesh.fsdp" in last and "grad_accum_steps" in last


def test_a_mesh_axis_that_splits_the_physical_axes():
    """8 x 2 on a 4 x 4 slice: no mesh axis is a product of physical axes, so they are split (jax.make_mesh
    alone refuses this mesh)."""
    code = (
        "from train import aot, partitioning\n"
        "mesh = partitioning.make_mesh(8, 2, 1, devices=aot.devices_of('v5e:4x4'))\n"
        "print(dict(mesh.shape), len(set(mesh.devices.flat)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "{'data': 8, 'fsdp': 2, 'tensor': 1} 16"
