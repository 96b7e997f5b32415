"""The shipped configs build (model, optimiser, state and batch shapes, without data); the pod config has
the official model size and shards 8 ways (shapes only)."""

import importlib
import os

import jax
import numpy as np
import pytest

from perceiver_jax.official import NUM_PARAMETERS
from train import build, partitioning, tasks

CONFIGS = sorted(
    f[:-3]
    for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs"))
    if f.endswith(".py") and f[0] != "_"
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_task_model_and_optimizer(name):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    task = tasks.get_task(config.task)
    run = build.build(config, task, build.model_config_of(config), partitioning.make_mesh(1, 1, 1))
    assert jax.tree.leaves(run.abstract_state.params) and jax.tree.leaves(run.abstract_state.opt_state)
    assert all(x.shape[0] == config.global_batch_size for x in jax.tree.leaves(run.abstract_batch))
    if name != "default":
        assert f"python -m train --config configs/{name}.py" in module.__doc__
        assert "EXPECTED" not in module.__doc__


def test_language_perceiver_has_the_official_size_and_shards_eight_ways():
    config = importlib.import_module("configs.language_perceiver").get_config()
    mesh = partitioning.make_mesh(1, 8, 1)
    run = build.build(config, tasks.get_task(config.task), build.model_config_of(config), mesh)
    assert (
        sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
        == NUM_PARAMETERS["deepmind/language-perceiver"]
    )
    leaves = jax.tree.leaves((run.abstract_state.params, run.abstract_state.opt_state))
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
    assert per_device < 1.01 * total / 8
