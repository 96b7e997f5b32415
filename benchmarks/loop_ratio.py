"""The training loop's speed against the bare jitted step: does the input pipeline (Grain, with its worker
processes, augmentation included) or a host sync ever stall the device?

    python -m benchmarks.loop_ratio                       # mlm_tiny and digits_tiny, 300 steps each
    python -m benchmarks.loop_ratio --configs configs/mlm_tiny.py --steps 500

For each config: `train.trainer.train_and_evaluate` for `--steps` steps in a fresh workdir (its summary's
steps/s: steady state, compilation, eval and checkpoint time excluded), then the run's own `train_step`
on one fixed batch, dispatched `--steps` times without waiting (the same mesh, state and shardings).
Prints one line per config and the ratio loop / bare (the target is >= 0.95).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time

import jax

from train import pipeline, trainer

DEFAULT_CONFIGS = ("configs/mlm_tiny.py", "configs/digits_tiny.py")


def _config(path: str, steps: int):
    spec = importlib.util.spec_from_file_location("benchmarked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.num_train_steps = steps
    config.warmup_steps = min(config.warmup_steps, steps // 2)
    config.eval_every = config.checkpoint_every = steps
    config.init_from = ""
    config.export_hf = False
    return config


def loop_steps_per_second(config) -> float:
    """Steady-state steps/s of the real training loop (the trainer's own timing)."""
    with tempfile.TemporaryDirectory() as workdir:
        return trainer.train_and_evaluate(config, workdir)["steps_per_second"]


def bare_steps_per_second(config, steps: int) -> float:
    """Steps/s of the run's jitted `train_step` on one fixed batch, nothing else in the loop."""
    with tempfile.TemporaryDirectory() as workdir:
        _, data, _, run = trainer.setup(config, workdir)
        rows = pipeline.local_rows(run.batch_sharding, config.global_batch_size)
        local = next(
            pipeline.train_batches(
                data.train, data.train_transform, global_batch=config.global_batch_size, rows=rows,
                seed=config.data.seed,
            )
        )  # fmt: skip
    batch = pipeline.to_global(local, run.batch_sharding, config.global_batch_size)
    with run.context():
        state = run.init(jax.random.key(config.seed))
        state, sums, _ = run.train_step(state, batch)  # compile
        jax.block_until_ready(sums)
        start = time.perf_counter()
        for _ in range(steps):
            state, sums, _ = run.train_step(state, batch)
        jax.block_until_ready((state, sums))
        return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    for path in args.configs:
        config = _config(path, args.steps)
        loop = loop_steps_per_second(config)
        bare = bare_steps_per_second(config, args.steps)
        print(f"{path}: loop {loop:.2f} steps/s, bare step {bare:.2f} steps/s, loop / bare {loop / bare:.3f}")


if __name__ == "__main__":
    main()
