"""The scaling table: the trainer's step compiled for TPU slices by `python -m train.aot` (compiler
estimates, no TPU needed), for the paper's pretraining / ImageNet runs, over meshes and remat settings.

    python -m benchmarks.scaling --output benchmarks/scaling.json    # compiles (hours on a 2-core CPU)
    python -m benchmarks.scaling --table benchmarks/scaling.json     # the markdown table of RESULTS.md
    python -m benchmarks.scaling --output benchmarks/scaling.json --slices v5p-64 --models language  # a part

Each compile runs in its own process (`python -m train.aot --json`), so one that fails or runs out of
memory does not stop the others; results are appended to the JSON file as they come, and rerunning skips
the ones already there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import common

# name -> (config, paper batch, where the paper gives it).
MODELS = {
    "language-perceiver MLM, 2048 bytes": ("configs/language_perceiver.py", 2048, "Perceiver IO Table 12"),
    "vision-perceiver-conv ImageNet, 224 px": ("configs/imagenet_conv.py", 1024, "Perceiver IO App. A.1"),
}
# slice name (Cloud TPU naming) -> (topology, chips).
SLICES = {
    "v5e-256": ("v5e:16x16", 256),
    "v5p-64": ("v5p:4x4x4", 64),
    "v4-128": ("v4:4x4x4", 128),
    "v6e-256": ("v6e:16x16", 256),
}


def candidates(devices: int) -> list[dict[str, object]]:
    """The meshes and remat settings tried on `devices` devices."""
    return [
        dict(data=1, fsdp=devices, remat="none"),
        dict(data=devices // 8, fsdp=8, remat="none"),
        dict(data=1, fsdp=devices, remat="dots"),
    ]


def compile_one(config: str, topology: str, batch: int, setting: dict[str, object], timeout: int) -> dict:
    """One `train.aot` run; its JSON report, or {'error': ...}."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "report.json")
        args = [
            sys.executable, "-m", "train.aot", "--config", config, "--topology", topology, "--json", out,
            f"--config.global_batch_size={batch}", f"--config.mesh.data={setting['data']}",
            f"--config.mesh.fsdp={setting['fsdp']}", "--config.mesh.tensor=1",
            f"--config.remat={setting['remat']}",
        ]  # fmt: skip
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"compile took over {timeout} s"}
        if os.path.exists(out):
            with open(out) as f:
                return json.load(f)
    return {"error": failure(result.stdout, result.stderr)}


def failure(stdout: str, stderr: str) -> str:
    """What went wrong in a `train.aot` run that wrote no report: a crash of the compiler process
    (Python's fatal-error report names the signal), else its last line of output."""
    crash = [line for line in stderr.splitlines() if line.startswith("Fatal Python error:")]
    if crash:
        return f"the compiler crashed ({crash[0].removeprefix('Fatal Python error:').strip()})"
    lines = [line for line in stdout.splitlines() if line.strip()] or stderr.strip().splitlines() or ["?"]
    return lines[-1]


def run(output: str, timeout: int, slices: list[str] | None = None, models: list[str] | None = None) -> None:
    """Compiles every setting of `models` (substrings of the `MODELS` names; None: all) on `slices`
    (None: all) not yet in `output`, appending each result as a JSON line."""
    done = []
    if os.path.exists(output):
        with open(output) as f:
            done = [json.loads(line) for line in f if line.strip()]
    seen = {(r["model"], r["slice"], json.dumps(r["setting"], sort_keys=True)) for r in done}
    for model, (config, batch, _) in MODELS.items():
        if models and not any(m in model for m in models):
            continue
        for slice_name, (topology, devices) in SLICES.items():
            if slices and slice_name not in slices:
                continue
            for setting in candidates(devices):
                key = (model, slice_name, json.dumps(setting, sort_keys=True))
                if key in seen:
                    continue
                report = compile_one(config, topology, batch, setting, timeout)
                row = {**report, "model": model, "slice": slice_name, "topology": topology}
                row.update(batch=batch, setting=setting)
                print(
                    json.dumps({k: row.get(k) for k in ("model", "slice", "setting", "mfu_bound", "error")}),
                    flush=True,
                )
                with open(output, "a") as f:
                    f.write(json.dumps(row) + "\n")


def table(path: str) -> str:
    """The markdown table of the results in `path`: per model and slice, every setting tried, the best
    (highest MFU bound among those that fit) marked."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    headers = ["model (batch, source)", "slice", "mesh data x fsdp", "remat", "memory / chip", "fits"]
    headers += ["est. step", "MFU bound"]
    cells = []
    for model, (_, batch, source) in MODELS.items():
        for slice_name in SLICES:
            group = [r for r in rows if r["model"] == model and r["slice"] == slice_name]
            fitting = [
                r for r in group if not r.get("error") and r.get("total_bytes", 0) <= r.get("hbm_bytes", 0)
            ]
            best = max(fitting, key=lambda r: r.get("mfu_bound") or 0, default=None)
            for r in group:
                s = r["setting"]
                first = [f"{model} ({batch}, {source})", slice_name, f"{s['data']} x {s['fsdp']}", s["remat"]]
                if r.get("error"):
                    cells.append(first + ["-", f"no: {r['error'][:60]}", "-", "-"])
                    continue
                memory = f"{r['total_bytes'] / 2**30:.1f} of {r['hbm_bytes'] / 2**30:.0f} GiB"
                fits = "yes" if r["total_bytes"] <= r["hbm_bytes"] else "no"
                mfu = f"{100 * (r['mfu_bound'] or 0):.0f}%" + (" **best**" if r is best else "")
                cells.append(first + [memory, fits, f"{(r['estimated_seconds'] or 0) * 1e3:.1f} ms", mfu])
    return common.markdown_table(headers, cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", help="compile every setting, appending JSON lines to this file")
    parser.add_argument("--table", help="print the markdown table of this JSON-lines file")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per compile (both programs)")
    parser.add_argument("--slices", nargs="+", choices=sorted(SLICES), help="only these slices")
    parser.add_argument("--models", nargs="+", help="only the models whose names contain one of these")
    args = parser.parse_args(argv)
    if args.output:
        run(args.output, args.timeout, args.slices, args.models)
    if args.table:
        print(table(args.table))


if __name__ == "__main__":
    main()
