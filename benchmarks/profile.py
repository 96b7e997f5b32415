"""Where the time goes: `python -m benchmarks.profile [--workload forward|train] [--batch B] [--tiny]
[--precision float32|bfloat16]`.

perceiver-jax: one run of the compiled program is traced with `jax.profiler`; the trace's per-op events
are summed per HLO instruction of the optimised module and annotated with the instruction's shape, the
matrix-multiply FLOPs of the dots it contains (so GFLOP/s per op) and the model code it came from. The
summary splits the time between matrix multiplications and everything else.

HF torch: `torch.profiler` on one run of the same workload, by aten op (self CPU time).
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
import re
import sys
import tempfile
import time
from typing import Any, Callable

from benchmarks import common, workloads

_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\S+) ")
_DOT = re.compile(r"= \w+\[([\d,]*)\]\S* dot\(%?([\w.\-]+), %?([\w.\-]+)\)")
_SHAPE = re.compile(r"^\w+\[([\d,]*)\]")


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


class HloIndex:
    """Instructions of an optimised HLO module (`compiled.as_text()`): shapes, metadata, dot FLOPs."""

    def __init__(self, text: str):
        self.lines: dict[str, str] = {}
        self.shapes: dict[str, list[int]] = {}
        self.computations: dict[str, list[str]] = {}
        current = None
        for line in text.splitlines():
            if line and not line.startswith(" ") and line.rstrip().endswith("{"):
                current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
                self.computations[current] = []
                continue
            match = _INSTRUCTION.match(line)
            if match:
                name, shape = match.groups()
                self.lines.setdefault(name, line)
                shape_match = _SHAPE.match(shape)
                if shape_match:
                    self.shapes.setdefault(name, _dims(shape_match.group(1)))
                if current is not None:
                    self.computations[current].append(line)

    def _dot_flops(self, line: str) -> int:
        match = _DOT.search(line)
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        if not match or not contracting or match.group(2) not in self.shapes:
            return 0
        lhs = self.shapes[match.group(2)]
        k = math.prod(lhs[d] for d in _dims(contracting.group(1)))
        return 2 * math.prod(_dims(match.group(1))) * k

    def flops(self, name: str) -> int:
        """Matrix-multiply FLOPs of instruction `name` (a dot, or a fusion containing dots)."""
        line = self.lines.get(name, "")
        if " dot(" in line:
            return self._dot_flops(line)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        body = self.computations.get(called.group(1), []) if called else []
        return sum(self._dot_flops(inner) for inner in body if " dot(" in inner)

    def describe(self, name: str) -> tuple[str, str]:
        """(shape, source path) of instruction `name`, the path shortened to the model's modules."""
        line = self.lines.get(name, "")
        shape = line.split(" = ", 1)[1].split(" ", 1)[0] if " = " in line else ""
        op = re.search(r'op_name="([^"]*)"', line)
        path = op.group(1) if op else ""
        path = re.sub(r"^jit\([^)]*\)/", "", path)
        path = re.sub(r"transpose\(jvp\(\w+\)\)", "BWD", path)
        path = re.sub(r"jvp\(\w+\)", "FWD", path)
        path = re.sub(r"(while/body/)?closed_call/|self_attends\.(block|layer)_step/", "", path)
        return shape, path


def jax_op_profile(run: Callable[[], Any], hlo_text: str) -> dict[str, Any]:
    """Traces one call of `run` (blocking) and returns per-instruction times and the summary."""
    import jax

    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # XLA's events only, no Python call tracing
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, profiler_options=options):
            start = time.perf_counter()
            run()
            wall = (time.perf_counter() - start) * 1e3
        path = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
        times: collections.Counter = collections.Counter()
        counts: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    # Per-op events sit on XLA's worker threads; executor and pool events wrap them.
                    if "XLA" not in line.name or event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                        continue
                    times[event.name] += event.duration_ns / 1e6
                    counts[event.name] += 1
    index = HloIndex(hlo_text)
    ops = []
    for name, ms in times.most_common():
        shape, path = index.describe(name)
        ops.append(
            {
                "op": name,
                "ms": ms,
                "count": counts[name],
                "gflop": index.flops(name) * counts[name] / 1e9,
                "shape": shape,
                "source": path,
            }
        )
    dot_ms = sum(o["ms"] for o in ops if o["gflop"])
    return {
        "wall_ms": wall,
        "op_ms": sum(o["ms"] for o in ops),
        "dot_ms": dot_ms,
        "dot_gflop": sum(o["gflop"] for o in ops),
        "ops": ops,
    }


def jax_report(profile: dict[str, Any], top: int) -> str:
    """Markdown summary and the `top` most expensive instructions."""
    p = profile
    rest = p["op_ms"] - p["dot_ms"]
    lines = [
        f"wall {p['wall_ms']:.0f} ms; summed op time {p['op_ms']:.0f} ms: matmuls {p['dot_ms']:.0f} ms "
        f"({p['dot_gflop']:.1f} GFLOP, {p['dot_gflop'] / max(p['dot_ms'] / 1e3, 1e-9):.1f} GFLOP/s), "
        "everything else "
        f"{rest:.0f} ms ({100 * rest / max(p['op_ms'], 1e-9):.0f}%)",
        "",
    ]
    rows = [
        [
            o["op"],
            o["count"],
            o["ms"],
            f"{100 * o['ms'] / p['op_ms']:.1f}%",
            o["gflop"] / (o["ms"] / 1e3) if o["gflop"] else None,
            o["shape"],
            o["source"][-90:],
        ]
        for o in p["ops"][:top]
    ]
    headers = ["HLO op", "calls", "ms", "share", "GFLOP/s", "shape", "source"]
    return "\n".join(lines) + common.markdown_table(headers, rows)


TORCH_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")


def torch_matmul_ms(run: Callable[[], Any]) -> dict[str, float]:
    """Milliseconds of one call of `run` under `torch.profiler`: in total and in matrix-multiply ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    matmul = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in TORCH_MATMUL_OPS)
    return {"wall_ms": total * 1e3, "dot_ms": matmul / 1e3}


def torch_report(run: Callable[[], Any], top: int) -> str:
    """torch.profiler table (self CPU time) of one call of `run`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=("forward", "train"), default="forward")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frameworks", default="jax,torch", help="comma-separated: jax, torch")
    parser.add_argument("--prng-impl", default=None, help="JAX PRNG of the dropout masks (train)")
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype (float32 parameters; HF under torch's bf16 autocast for bfloat16)",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--plain", action="store_true", help="without the tuned settings of benchmarks.common"
    )
    args = parser.parse_args(argv)
    if not args.plain:
        common.reexec_with_tuned_env("benchmarks.profile", sys.argv[1:] if argv is None else argv)
    common.configure_threads(args.threads, tuned=not args.plain)
    common.set_prng_impl(args.prng_impl)
    overrides = workloads.TINY_LANGUAGE if args.tiny else workloads.LANGUAGE_PERCEIVER
    seq_len = 64 if args.tiny else 2048
    pair = workloads.build_pair("PerceiverForMaskedLM", overrides)
    batch = workloads.text_batch(pair.model.config.vocab_size, args.batch, seq_len)
    frameworks = args.frameworks.split(",")
    bf16 = args.precision == "bfloat16"
    if "jax" in frameworks:
        jax_pair = workloads.with_compute_dtype(pair, args.precision)
        if args.workload == "forward":
            run, info = workloads.jax_forward(jax_pair, batch)
        else:
            run, info = workloads.jax_train_step(jax_pair, batch)
        run()
        print(f"## perceiver-jax {args.workload}, batch {args.batch}, {args.precision}\n")
        print(jax_report(jax_op_profile(run, info["compiled"].as_text()), args.top), flush=True)
    if "torch" in frameworks:
        if args.workload == "forward":
            run = workloads.torch_forward(pair, batch, autocast=bf16)
        else:
            run = workloads.torch_train_step(pair, batch, autocast=bf16)
        run()
        print(f"\n## HF torch {args.workload}, batch {args.batch}, {args.precision}\n")
        print(torch_report(run, args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
