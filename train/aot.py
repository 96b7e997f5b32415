"""Ahead-of-time compilation of the trainer's step for a target topology, on this machine:

    python -m train.aot --config configs/<name>.py --topology v5p:4x4x4 [--config.<field>=<value> ...]

compiles the trainer's own train step and state shardings (`train.build`, the functions the trainer runs)
with XLA's real TPU compiler (needs libtpu: `pip install "jax[tpu]"`, no TPU) or for N fake CPU devices
(`--topology cpu:8`), and prints per chip: argument, temporary and output bytes and their total against
the chip's HBM, FLOPs per step, the compiler's estimated step time, the MFU bound they imply, and the
collectives by kind with their bytes. A configuration that does not fit exits with status 1, the required
and the available memory, and what to try. No data is read (the model's `num_labels` is the config's).
"""

from __future__ import annotations

import os
import re
import sys

# Compiling needs no TPU, so several processes may load libtpu at once (tests, parallel compiles).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Fake CPU devices must be requested before jax starts.
_CPU = re.search(r"--topology[= ]cpu:(\d+)", " ".join(sys.argv))
if _CPU and __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_CPU[1]}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from train import build, partitioning  # noqa: E402
from train.tasks import get_task  # noqa: E402

GIB = 2**30
# Per device: HBM bytes, peak bf16 FLOP/s, HBM bytes/s and ICI bytes/s (Google Cloud TPU documentation).
# v4 topologies come one device per TensorCore (two per chip), so a v4 device is half a chip.
CHIPS = {
    "TPU v4": (16 * GIB, 137.5e12, 614e9, 150e9),
    "TPU v5 lite": (16 * GIB, 197e12, 819e9, 200e9),
    "TPU v5": (95 * GIB, 459e12, 2765e9, 600e9),
    "TPU v6 lite": (32 * GIB, 918e12, 1640e9, 448e9),
}
# Bytes a collective moves per device, per byte of its result (ring algorithms).
_TRAFFIC = {
    "all-reduce": 2.0,
    "all-gather": 1.0,
    "reduce-scatter": 1.0,
    "all-to-all": 1.0,
    "collective-permute": 1.0,
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
}
_DTYPE_BYTES.update({"f64": 8, "s64": 8, "u64": 8})


@dataclasses.dataclass
class Report:
    """What one compilation says, per device (bytes, FLOPs, seconds)."""

    topology: str
    chip: str
    num_chips: int
    mesh: dict[str, int]
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    hbm_bytes: int | None
    flops: float
    bytes_accessed: float
    compiler_seconds: float | None
    chip_specs: tuple[float, float, float] | None  # peak FLOP/s, HBM bytes/s, ICI bytes/s
    collectives: dict[str, dict[str, float]]

    @property
    def total_bytes(self) -> int:
        """Arguments + temporaries + outputs, less the outputs aliasing donated arguments."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    @property
    def fits(self) -> bool | None:
        """Whether the total fits the chip's HBM (None where unknown)."""
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    @property
    def roofline_seconds(self) -> float | None:
        """A lower bound on the step time from the compiler's counts: the longest of the FLOPs at peak,
        the bytes accessed at HBM bandwidth and the collectives' traffic at ICI bandwidth."""
        if self.chip_specs is None:
            return None
        peak, hbm, ici = self.chip_specs
        traffic = sum(_TRAFFIC[kind] * entry["bytes"] for kind, entry in self.collectives.items())
        return max(self.flops / peak, self.bytes_accessed / hbm, traffic / ici)

    @property
    def estimated_seconds(self) -> float | None:
        """The compiler's estimate where its cost model gives one (v5e here), else the roofline bound."""
        return self.compiler_seconds or self.roofline_seconds

    @property
    def mfu_bound(self) -> float | None:
        """FLOPs / (estimated seconds x peak FLOP/s): the utilisation the estimate implies (with remat, the
        recomputed FLOPs count too)."""
        if not self.estimated_seconds or self.chip_specs is None:
            return None
        return self.flops / (self.estimated_seconds * self.chip_specs[0])


class DoesNotFit(Exception):
    """The program needs more memory per chip than the chip has."""


def devices_of(topology: str) -> list[Any]:
    """The devices of `topology`: 'cpu:N' (fake CPU devices) or a TPU topology such as 'v5p:4x4x4'."""
    if topology.startswith("cpu:"):
        count = int(topology.split(":")[1])
        devices = jax.devices("cpu")
        if len(devices) < count:
            raise ValueError(
                f"--topology {topology} needs {count} CPU devices, jax has {len(devices)}: run as `python -m "
                "train.aot` (which sets them up) or set XLA_FLAGS=--xla_force_host_platform_device_count."
            )
        return devices[:count]
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # libtpu missing, or an unknown topology name
        raise ValueError(
            f"cannot build TPU topology {topology!r} ({type(e).__name__}: {e}). It needs libtpu "
            '(pip install "jax[tpu]==<the installed jax>") and a name such as v5e:2x2, v5p:4x4x4, v4:4x4x4, '
            "v6e:16x16."
        ) from e


def _collectives(hlo: str) -> dict[str, dict[str, float]]:
    """{kind: {'count', 'bytes'}} of the collective instructions in compiled HLO text: their result
    shapes, per chip, each counted once (one inside a layer loop runs once per layer). XLA's TPU backend
    lowers all-gathers and reduce-scatters of this program to all-reduces (of the gathered size)."""
    found = {}
    kinds = "|".join(COLLECTIVES)
    for line in hlo.splitlines():
        match = re.search(rf" = (.*?) ({kinds})(-start)?\(", line)
        if not match:
            continue
        shapes = re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match[1])
        size = sum(
            _DTYPE_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d) for t, dims in shapes
        )
        entry = found.setdefault(match[2], {"count": 0, "bytes": 0.0})
        entry["count"] += 1
        entry["bytes"] += size
    return found


def _compile(config: ml_collections.ConfigDict, devices: list[Any]) -> tuple[Any, jax.sharding.Mesh]:
    """The compiled train step of `config` on a mesh of `devices`; raises `DoesNotFit` when the compiler
    runs out of the chip's memory."""
    task = get_task(config.task)
    model_config = build.model_config_of(config)
    mesh = partitioning.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    run = build.build(config, task, model_config, mesh)
    with run.context():
        lowered = run.train_step.lower(run.abstract_state, run.abstract_batch)
        try:
            return lowered.compile(), mesh
        except Exception as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            needed = re.search(r"temporaries \(([\d.]+\s*\w)\)", str(e))
            available = re.search(r"available HBM \(([\d.]+\s*\w)\)", str(e))
            raise DoesNotFit(
                f"{needed[1] if needed else 'more than the chip has'}B of temporaries needed, "
                f"{available[1] if available else '?'}B available per chip"
            ) from e


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, list) else cost


def compile_step(
    config: ml_collections.ConfigDict, topology: str, estimate: bool = True
) -> tuple[Report, str]:
    """Compiles the trainer's train step of `config` for `topology`; returns its `Report` and the compiled
    HLO text. Raises `DoesNotFit` when the compiler runs out of the chip's memory.

    Memory is that of the program as configured. XLA's cost analysis counts a loop's
    body once (and gives no time for nested loops), so with `estimate` the FLOPs, bytes, step time and
    collectives come from a second compilation with the layer and accumulation loops unrolled
    (`config.unroll_layers`: the same computation in straight-line code).
    """
    devices = devices_of(topology)
    compiled, mesh = _compile(config, devices)
    costed = compiled
    if estimate and not config.unroll_layers:
        unrolled = config.copy_and_resolve_references()
        unrolled.unroll_layers = True
        costed = _compile(unrolled, devices)[0]
    cost, memory, hlo = _cost(costed), compiled.memory_analysis(), compiled.as_text()
    chip = devices[0].device_kind
    hbm, *specs = CHIPS.get(chip, (None,))
    seconds = cost.get("optimal_seconds")
    report = Report(
        topology=topology,
        chip=chip,
        num_chips=len(devices),
        mesh=dict(mesh.shape),
        argument_bytes=memory.argument_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        hbm_bytes=hbm,
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        compiler_seconds=seconds if seconds and seconds > 0 else None,
        chip_specs=tuple(specs) if specs else None,
        collectives=_collectives(costed.as_text()),
    )
    return report, hlo


def describe(report: Report) -> str:
    """The report as printed lines."""

    def gib(n):
        return f"{n / GIB:.2f} GiB"

    hbm = gib(report.hbm_bytes) if report.hbm_bytes else "unknown"
    lines = [
        f"{report.topology}: {report.num_chips} x {report.chip}, mesh {report.mesh}",
        f"  per chip: arguments {gib(report.argument_bytes)}, temporaries {gib(report.temp_bytes)}, "
        f"outputs {gib(report.output_bytes)} (aliasing {gib(report.alias_bytes)}): "
        f"total {gib(report.total_bytes)} of "
        f"{hbm} HBM" + ("" if report.fits is None else (" - fits" if report.fits else " - DOES NOT FIT")),
        f"  FLOPs per chip per step {report.flops:.3e}",
    ]
    if report.compiler_seconds:
        lines.append(f"  compiler's estimated step time {report.compiler_seconds * 1e3:.2f} ms")
    elif report.roofline_seconds:
        lines.append(
            f"  estimated step time {report.roofline_seconds * 1e3:.2f} ms (roofline of the compiler's "
            "FLOPs, bytes and collectives: its cost model gives no time for this chip)"
        )
    if report.mfu_bound is not None:
        lines.append(
            f"  MFU bound {100 * report.mfu_bound:.1f}% (FLOPs / (estimated time x peak bf16 FLOP/s))"
        )
    for kind, entry in sorted(report.collectives.items()):
        lines.append(f"  {kind}: {entry['count']} ops, {entry['bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)


ADVICE = (
    "to fit: rematerialise (--config.remat=dots or full), shard parameters wider (--config.mesh.fsdp), "
    "or shrink the micro-batch (--config.grad_accum_steps, --config.global_batch_size)"
)


config_flags.DEFINE_config_file("config", None, "A config file with get_config(), e.g. configs/mlm_tiny.py.")
flags.DEFINE_string(
    "topology", None, "cpu:N or a TPU topology, e.g. v5e:2x2, v5p:4x4x4, v4:4x4x4, v6e:16x16."
)
flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        report, _ = compile_step(FLAGS.config, FLAGS.topology)
    except DoesNotFit as e:
        print(f"{FLAGS.topology}: does not fit: {e}; {ADVICE}.")
        return 1
    print(describe(report))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            derived = dict(total_bytes=report.total_bytes, estimated_seconds=report.estimated_seconds)
            json.dump(dict(dataclasses.asdict(report), **derived, mfu_bound=report.mfu_bound), f)
    if report.fits is False:
        print(
            f"{report.topology}: does not fit: {report.total_bytes / GIB:.2f} GiB needed per chip, "
            f"{report.hbm_bytes / GIB:.2f} GiB available; {ADVICE}."
        )
        return 1
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "topology"])
    app.run(lambda argv: sys.exit(main(argv)))
