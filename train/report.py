"""Observability: metrics to TensorBoard and `metrics.jsonl`, the loss-curve PNG and the final summary."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
from tensorboardX import SummaryWriter  # noqa: E402


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`: dicts with `step`, `split` ('train' or 'eval') and scalars."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    """Writes scalars to TensorBoard (`workdir/tensorboard`, tags `split/name`) and to
    `workdir/metrics.jsonl`. Records after `resume_step` (left by an interrupted run that resumes from
    `resume_step`) are dropped, so the file holds one history. Inactive when `enabled` is False (processes
    other than 0)."""

    def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Records scalar `metrics` of `split` at `step`."""
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(step=step, split=split, **metrics)) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self.enabled:
            self.tensorboard.close()


def plot_curves(workdir: str, headline: str, headline_name: str, baseline_name: str) -> str:
    """Draws train/eval loss and the eval `headline` metric (with the baseline) from `metrics.jsonl` into
    `workdir/loss_curve.png`; returns its path."""
    records = read_metrics(workdir)

    def series(split, key):  # (steps, values)
        return zip(*[(r["step"], r[key]) for r in records if r["split"] == split and key in r])

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "eval"):
        points = list(series(split, "loss"))
        if points:
            left.plot(*points, marker="o" if split == "eval" else None, label=f"{split} loss")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend()
    points = list(series("eval", headline))
    if points:
        right.plot(*points, marker="o", label=headline_name)
        right.plot(*series("eval", "baseline"), linestyle="--", label=baseline_name)
        right.legend()
    right.set(xlabel="step", ylabel=headline_name, title=f"eval {headline_name}")
    fig.tight_layout()
    path = os.path.join(workdir, "loss_curve.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_summary(workdir: str, summary: dict) -> None:
    """Prints the run's summary and writes it to `workdir/summary.json`."""
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    timing = (
        f"{summary['seconds']:.0f}s, first step incl. compilation {summary['first_step_seconds'] or 0:.1f}s"
    )
    if summary["steps_per_second"]:
        timing += f", then {summary['steps_per_second']:.2f} steps/s"
    if summary["step"] < summary["num_train_steps"]:
        print(
            f"\n{summary['task']}: stopped after step {summary['step']} of {summary['num_train_steps']} "
            f"({timing}); "
            "rerun with the same --workdir to resume."
        )
        return
    headline = summary["headline"]
    print(
        f"\n{summary['task']}: {summary['step']} steps ({timing})\n"
        f"  eval loss {summary['eval_loss']:.4f}\n"
        f"  {summary['headline_name']} {summary[f'eval_{headline}']:.4f} vs {summary['baseline_name']} "
        f"{summary['eval_baseline']:.4f}\n"
        f"  loss curve: {summary['loss_curve']}"
    )
