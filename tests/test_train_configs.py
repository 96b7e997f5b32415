"""The shipped configs trace their train step (shapes only, without data) and hold models HF can build; the
pod config has the official model size and shards 8 ways; every model field can be set from the command
line."""

import dataclasses
import functools
import importlib
import os
import sys
import typing

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from perceiver_jax import PerceiverConfig
from perceiver_jax.official import NUM_PARAMETERS
from train import build, partitioning, tasks

CONFIGS = sorted(
    f[:-3]
    for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs"))
    if f.endswith(".py") and f[0] != "_"
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_traces_a_train_step_of_its_task(name):
    """The config's model, optimiser, task and batch fit together: its whole train step traces (shapes
    only), returns a state of the same shapes, a scalar loss and a scalar gradient norm."""
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    task = tasks.get_task(config.task)
    run = build.build(config, task, build.model_config_of(config), partitioning.make_mesh(1, 1, 1))
    with run.context():
        state, sums, stats = jax.eval_shape(run.step.train, run.abstract_state, run.abstract_batch)
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    assert shapes(state) == shapes(run.abstract_state)
    assert sums["loss"].shape == () and stats["grad_norm"].shape == ()
    assert all(x.shape[0] == config.global_batch_size for x in jax.tree.leaves(run.abstract_batch))
    if name != "default":
        assert f"python -m train --config configs/{name}.py" in module.__doc__
        assert "EXPECTED" not in module.__doc__
    build.model_config_of(config).to_hf_dict()  # a model HF can build: `export_hf=True` writes its folder


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


def _other_value(value, annotation):
    """A value of `annotation` different from `value` (only the command line's parsing is checked)."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if len(kinds) > 1:  # image_size: an int or a pair
        return (32, 48)
    kind = typing.get_origin(kinds[0]) or kinds[0]
    if kind is bool:
        return not value
    if kind in (int, float):
        return (value or 1) * 3
    if kind is str:
        return "other"
    if kind is tuple:
        is_names = typing.get_args(kinds[0])[0] is str  # architectures (None by default)
        return ("A", "B") if is_names else (3, 5, 7, 9)[: len(value)]
    return {0: "cat", 1: "dog"}  # a mapping


def _leaves(obj, prefix=""):
    """(dotted field path, value, annotation) of every field of `obj`, decoder groups expanded."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", value, hints[field.name]


def _parse(argv, monkeypatch):
    """The trainer's `--config` flag parsed from `argv` (ml_collections reads the overrides in sys.argv)."""
    monkeypatch.setattr(sys, "argv", argv)
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
    flag_values(argv)
    return flag_values.config


def test_every_model_field_is_settable_from_the_command_line(monkeypatch):
    leaves = list(_leaves(PerceiverConfig()))
    wanted = {path: _other_value(value, annotation) for path, value, annotation in leaves}
    config = _parse(
        ["train", "--config=configs/default.py"]
        + [f"--config.model.{path}={v if isinstance(v, str) else repr(v)}" for path, v in wanted.items()],
        monkeypatch,
    )
    parsed = config.model.to_dict()
    for path, value in wanted.items():
        got = functools.reduce(lambda d, k: d[k], path.split("."), parsed)
        assert got == value, path
    assert len(wanted) > 80  # every field, the decoder groups' included


def test_command_line_image_size_pair_and_class_names_reach_the_model(monkeypatch):
    config = _parse(
        ["train", "--config=configs/digits_tiny.py", "--config.model.image_size=(32, 48)",
         "--config.model.id2label={0: 'cat', 1: 'dog'}"],
        monkeypatch,
    )  # fmt: skip
    model_config = build.model_config_of(config)
    assert model_config.image_hw == (32, 48)
    assert model_config.num_labels == 2 and model_config.id2label == {0: "cat", 1: "dog"}
