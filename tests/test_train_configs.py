"""The shipped configs build; the pod config has the official model size and shards 8 ways (shapes only)."""

import importlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import language_perceiver
from perceiver_jax import HEADS
from train import optim, partitioning, tasks

CONFIGS = sorted(
    f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs")) if f[0] != "_"
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_task_model_and_optimizer(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    task = tasks.get_task(config.task)
    model_config = task.model_config(config)
    assert config.data.seq_len <= model_config.max_position_embeddings
    optim.make_optimizer(config, optim.learning_rate_schedule(config))
    if name != "default":
        assert (
            "python -m train --config configs/" + name + ".py"
            in importlib.import_module(f"configs.{name}").__doc__
        )


def test_language_perceiver_has_the_official_size_and_shards_eight_ways():
    config = language_perceiver.get_config()
    task = tasks.get_task(config.task)
    model = HEADS[task.head](task.model_config(config))
    tx = optim.make_optimizer(config, optim.learning_rate_schedule(config))

    def init(rng):
        params = model.init(rng, jnp.zeros((1, config.data.seq_len), jnp.int32))["params"]
        return params, tx.init(params)

    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = jax.tree.leaves(partitioning.state_shardings(boxed, partitioning.make_mesh(1, 8, 1)))
    params, state = nn.unbox(boxed)
    assert sum(x.size for x in jax.tree.leaves(params)) == 201_108_230
    leaves = jax.tree.leaves((params, state))
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    per_device = sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in zip(leaves, shardings))
    assert per_device < 1.01 * total / 8
