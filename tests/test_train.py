"""End-to-end trainer tests on 8 fake CPU devices (tests/conftest.py) with a tiny MLM model.

Every run is 3-6 steps of a 20k-parameter model; the single-device 6-step run (`reference`) is the yardstick
for resumed, two-process and re-meshed runs. Compilation dominates the time, so this module turns on a
persistent compilation cache: runs with identical programs (reference and resume) compile once.
"""

import functools
import json
import os
import shutil
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax.experimental.compilation_cache import compilation_cache

from helpers import tiny_dims

import perceiver_jax
from configs import default, mlm_tiny
from perceiver_jax import PerceiverConfig, PerceiverForSequenceClassification
from train import checkpoint, report, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = tiny_dims(
    num_latents=8, d_latents=32, num_cross_attention_heads=2, max_position_embeddings=32,
    mlm_decoder=dict(num_heads=2, qk_channels=16), attention_probs_dropout_prob=0.1,
)  # fmt: skip


def tiny_config(**changes) -> ml_collections.ConfigDict:
    """mlm_tiny with a 20k-parameter model, batch 8 of 32 tokens, 6 steps on one device; `changes` are
    dotted field names ('mesh.fsdp') -> values."""
    config = mlm_tiny.get_config()
    config.model = default.model(**TINY_MODEL)
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    config.data.seq_len, config.global_batch_size, config.num_train_steps = 32, 8, 6
    config.warmup_steps, config.log_every, config.eval_every, config.num_eval_batches = 1, 1, 100, 1
    config.checkpoint_every = 2
    config.update_from_flattened_dict(changes)
    return config


def train_losses(workdir) -> list[float]:
    """Train losses in metrics.jsonl, by step."""
    return [r["loss"] for r in report.read_metrics(str(workdir)) if r["split"] == "train"]


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(str(tmp_path_factory.mktemp("compilation_cache")))
    yield
    compilation_cache.set_cache_dir(None)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(workdir, train losses, summary) of an uninterrupted 6-step single-device run with dropout."""
    workdir = tmp_path_factory.mktemp("reference")
    summary = trainer.train_and_evaluate(tiny_config(), str(workdir))
    return workdir, train_losses(workdir), summary


def test_reference_run_writes_metrics_checkpoints_and_curve(reference):
    workdir, losses, summary = reference
    assert len(losses) == 6 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert checkpoint_steps(workdir) == [2, 4, 6]
    evals = [r for r in report.read_metrics(str(workdir)) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [6] and 0 < evals[0]["baseline"] < 1
    assert summary["eval_accuracy"] == pytest.approx(evals[0]["accuracy"])
    assert os.path.getsize(os.path.join(workdir, "loss_curve.png")) > 1000
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_reproduces_the_uninterrupted_run_exactly(reference, tmp_path):
    trainer.train_and_evaluate(tiny_config(stop_after_step=3), str(tmp_path))
    assert checkpoint_steps(tmp_path) == [1, 2, 3]
    # A save killed midway leaves an Orbax tmp folder; resuming must ignore it.
    os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234" / "state")
    trainer.train_and_evaluate(tiny_config(), str(tmp_path))
    assert train_losses(tmp_path) == reference[1]


def test_sharding_and_grad_accumulation_match_one_device(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    no_dropout = {"model.attention_probs_dropout_prob": 0.0, "stop_after_step": 3}
    trainer.train_and_evaluate(tiny_config(**no_dropout), str(single))
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "grad_accum_steps": 2}
    trainer.train_and_evaluate(tiny_config(**no_dropout, **mesh), str(sharded))
    np.testing.assert_allclose(train_losses(sharded), train_losses(single), rtol=2e-5)


def test_two_processes_shard_train_checkpoint_and_resume_on_another_mesh(reference, tmp_path, caplog):
    # Two processes x 4 devices, parameters sharded 8 ways (fsdp), stop after step 3.
    config = tiny_config(**{"mesh.fsdp": -1, "stop_after_step": 3})
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "import json\nimport ml_collections\n\n\ndef get_config():\n"
        f"    return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train",
                f"--config={config_file}",
                f"--workdir={tmp_path}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert summary["param_bytes_per_device"] < 1.3 * summary["param_bytes"] / 8
    assert checkpoint_steps(tmp_path) == [1, 2, 3]
    # Grain's iterator state, one file per process, identical: 3 global batches consumed.
    for i in range(2):
        with open(tmp_path / "checkpoints" / "3" / "data" / f"process_{i}-of-2.json") as f:
            assert json.load(f) == {"next_index": 3}
    # Resume in this process on data=2 x tensor=4: the vocabulary (262) does not split 4 ways (replicated).
    caplog.set_level("INFO", logger="train")
    summary = trainer.train_and_evaluate(tiny_config(**{"mesh.data": 2, "mesh.tensor": 4}), str(tmp_path))
    assert "dimension 0 (262) is not divisible by mesh axes tensor" in caplog.text
    assert summary["step"] == 6
    np.testing.assert_allclose(train_losses(tmp_path), reference[1], rtol=1e-4)


def test_fine_tuning_copies_the_mlm_encoder_and_exports(reference, tmp_path, monkeypatch):
    exported = []
    monkeypatch.setattr(perceiver_jax, "save_pretrained", lambda *args: exported.append(args), raising=False)
    config = tiny_config(
        task="text_classification", init_from=str(reference[0]), optimizer="lamb", learning_rate=0.0
    )
    config.update_from_flattened_dict({"num_train_steps": 1, "schedule": "constant", "export_hf": True})
    summary = trainer.train_and_evaluate(config, str(tmp_path))
    assert 0.5 <= summary["eval_baseline"] < 1 and 0 <= summary["eval_accuracy"] <= 1
    [(model, variables, path)] = exported
    assert isinstance(model, PerceiverForSequenceClassification) and path == os.path.join(tmp_path, "hf")
    assert model.config.id2label == {0: "news", 1: "python-docs", 2: "wikipedia"}
    assert variables["params"]["perceiver"]["decoder"]["decoder"]["final_layer"]["kernel"].shape == (32, 3)
    # With a learning rate of 0 the fine-tuned checkpoint still holds exactly the pretrained subtrees.
    model_config = PerceiverConfig.from_dict(TINY_MODEL)
    ids = jnp.zeros((1, 32), jnp.int32)
    head = PerceiverForSequenceClassification(model_config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    wanted = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nn.unbox(jax.eval_shape(lambda key: head.init(key, ids), jax.random.PRNGKey(0))),
    )
    load = functools.partial(
        checkpoint.load_pretrained,
        abstract=wanted,
        model_config=model_config,
        head="PerceiverForSequenceClassification",
        parts=trainer.PRETRAINED,
    )
    pretrained, finetuned = load(str(reference[0])), load(str(tmp_path))
    assert len(jax.tree.leaves(finetuned)) == len(jax.tree.leaves(pretrained)) > 10
    jax.tree.map(np.testing.assert_array_equal, pretrained, finetuned)


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config(learning_rate=1e30, clip_grad_norm=0.0, schedule="constant", checkpoint_every=1)
    with pytest.raises(
        FloatingPointError, match=r"loss is nan at step 2: stopping. The last good checkpoint \(step 1\)"
    ):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert checkpoint_steps(tmp_path) == [1]
    assert len(train_losses(tmp_path)) == 1


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"mesh.data": 16}, ValueError, "needs 16 devices, but only 8"),
        (
            {"mesh.fsdp": 4, "global_batch_size": 6},
            ValueError,
            "multiple of grad_accum_steps=1 x the batch shards",
        ),
        ({"grad_accum_steps": 3}, ValueError, "multiple of grad_accum_steps=3"),
        ({"data.files": "/nonexistent/*.txt,/also/missing.txt"}, FileNotFoundError, "/also/missing.txt"),
        ({"task": "translation"}, ValueError, "unknown config.task='translation'"),
        ({"optimizer": "sgd"}, ValueError, "unknown config.optimizer='sgd'"),
        ({"data.seq_len": 16}, ValueError, "must equal the decoder's output length 32"),
    ],
)
def test_bad_configs_fail_with_clear_errors(tmp_path, changes, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer.train_and_evaluate(tiny_config(**changes), str(tmp_path))


def test_resuming_with_another_model_fails_clearly(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)
    with pytest.raises(ValueError, match="different model(.|\n)*d_latents: checkpoint 32, config 64"):
        trainer.train_and_evaluate(tiny_config(**{"model.d_latents": 64}), str(tmp_path))
