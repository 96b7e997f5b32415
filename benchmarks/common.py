"""Benchmark plumbing shared by the scripts: thread settings, machine description, interleaved timing,
the measured matrix-multiply peak, peak RSS of a fresh subprocess, and markdown tables.

Heavy libraries (jax, torch) are imported inside the functions, so `configure_threads` can pin the
process before JAX creates its CPU client.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

# Process settings of the CPU benchmarks (`tuned` runs; both frameworks share the process and get them):
# - XLA: matrix multiplications in YNNPACK, reductions and elementwise code in XLA's own emitters (the
#   default also sends reductions to YNNPACK, which made the training step ~9% slower here);
# - glibc: transparent huge pages for large allocations (XLA maps a fresh temporary buffer for every
#   execution; with 4 KiB pages the page faults cost the training step 0.8 s of kernel time at batch 1);
# - OpenMP (torch): idle threads sleep instead of spinning; on a machine whose cores are shared, spinning
#   threads take the cores from those with work (HF's forward was 3.4x slower here with spinning).
TUNED_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
TUNED_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "OMP_WAIT_POLICY": "PASSIVE"}
# `--tiny` smoke runs time nothing that matters and are compile-bound: XLA optimises less
# (compiles ~2x faster).
TINY_XLA_FLAGS = ("--xla_backend_optimization_level=0",)


def reexec_with_tuned_env(module: str, argv: Sequence[str]) -> None:
    """Restarts this process as `python -m module *argv` with `TUNED_ENV` if it lacks it (glibc reads its
    tunables and libgomp its wait policy only at start-up). Returns only when the environment is set."""
    env = dict(os.environ)
    for key, value in TUNED_ENV.items():
        current = env.get(key, "")
        if value.split("=")[0] not in current:
            env[key] = f"{current}:{value}" if key == "GLIBC_TUNABLES" and current else value
    if env != dict(os.environ):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def add_xla_flags(flags: Sequence[str]) -> None:
    """Appends to XLA_FLAGS each of `flags` it does not already set (effective before JAX's backend
    starts)."""
    current = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in flags if f.split("=")[0] not in current]
    os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


def configure_threads(threads: int | None, tuned: bool = True, tiny: bool = False) -> int:
    """Runs JAX and torch with the same number of intra-op threads; returns it.

    XLA sizes its CPU thread pool from the process's CPU affinity, so the process is pinned to the first
    `threads` CPUs it may use (None: all of them) and torch gets `torch.set_num_threads(threads)`. With
    `tuned`, `TUNED_XLA_FLAGS` are added to XLA_FLAGS, with `tiny` `TINY_XLA_FLAGS` (inherited by worker
    processes). Must be called before JAX's CPU backend starts (the first computation).
    """
    cpus = sorted(os.sched_getaffinity(0))
    count = len(cpus) if threads is None else threads
    if not 1 <= count <= len(cpus):
        raise ValueError(f"--threads {threads}: this process may use {len(cpus)} CPUs.")
    os.sched_setaffinity(0, cpus[:count])
    add_xla_flags((TUNED_XLA_FLAGS if tuned else ()) + (TINY_XLA_FLAGS if tiny else ()))
    import torch

    torch.set_num_threads(count)
    return count


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, core counts, memory, thread settings and library versions of this process."""
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax
    import torch
    import transformers

    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "cpu": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
        "xla_threads": len(os.sched_getaffinity(0)),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "jax_device": str(jax.devices()[0].device_kind),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def interleaved_times(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and process CPU seconds of each blocking callable, `repeats` times, interleaved.

    Each round runs every function once, in an order that alternates between rounds (A B, B A, ...), so
    slow drifts of a shared machine's load hit all of them alike. `warmup` untimed rounds come first.
    Returns `{name: {"wall": [...], "cpu": [...]}}`; CPU time (all threads of this process) is far less
    sensitive than wall time to other processes competing for the cores.
    """
    names = list(fns)
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if r >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def matmul_peak(sizes: Sequence[int], repeats: int = 5, dtype: str = "float32") -> dict[str, Any]:
    """Measured matrix-multiply throughput of this machine in `dtype` ("float32" or "bfloat16"), GFLOP/s.

    Times `n x n @ n x n` for each size with a jitted `jnp.dot` and with `torch.mm` (best of `repeats`);
    `peak` is the best of all, the denominator of the "% of peak" columns.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    result: dict[str, Any] = {"jax": {}, "torch": {}, "dtype": dtype}
    for n in sizes:
        a = np.random.default_rng(n).standard_normal((n, n), dtype=np.float32)
        ja, ta = jnp.asarray(a, dtype), torch.from_numpy(a).to(getattr(torch, dtype))
        dot = jax.jit(jnp.dot)
        flops = 2.0 * n**3
        times = interleaved_times(
            {"jax": lambda: dot(ja, ja).block_until_ready(), "torch": lambda: torch.mm(ta, ta)},
            repeats,
        )
        for name, ts in times.items():
            result[name][n] = flops / min(ts["wall"]) / 1e9
    result["peak"] = max(v for name in ("jax", "torch") for v in result[name].values())
    return result


def run_worker(module: str, args: Sequence[str], timeout: float = 600) -> dict[str, Any]:
    """Runs `python -m module *args` in a fresh process and returns the last JSON object it prints
    (workers report their own peak RSS with `peak_rss_mib`)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} {' '.join(args)} printed no JSON result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Restarts the peak-RSS count of this process (Linux `/proc/self/clear_refs`), so that `peak_rss_mib`
    measures from now on rather than since start-up."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM) since start-up or the last `reset_peak_rss`, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def set_prng_impl(name: str | None) -> None:
    """Makes `name` (e.g. 'rbg'; None: leave JAX's default) the PRNG of every key made from now on, the
    trainer's dropout keys included."""
    if name:
        import jax

        jax.config.update("jax_default_prng_impl", name)


def lower_and_compile(fn, *args) -> tuple[Any, float, float]:
    """`fn.lower(*args).compile()` (a jitted `fn`): the compiled program, lower seconds, compile seconds."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    middle = time.perf_counter()
    compiled = lowered.compile()
    return compiled, middle - start, time.perf_counter() - middle


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant digits, None as 'n/a'."""

    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def columns_table(rows: Sequence[dict], columns: Sequence[tuple[str, str | Callable[[dict], Any]]]) -> str:
    """`markdown_table` of `rows` with `columns` (header, row key or function of the row)."""
    cells = [[get(r) if callable(get) else r[get] for _, get in columns] for r in rows]
    return markdown_table([header for header, _ in columns], cells)
