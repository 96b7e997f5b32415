"""Checkpoints that survive damage, and the trainer's clear errors (what failed, where, what to do).

Runs are the tiny MLM of `test_train` (6 steps, checkpoints every 2, and Orbax keeps step 1's); a run
stopped after step 4 and damaged in its newest checkpoint must resume from step 2 and end with the losses
of an uninterrupted run.
"""

import errno
import glob
import os
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import pytest
from test_train import ROOT, _compilation_cache, checkpoint_steps, tiny_config, train_losses  # noqa: F401

from perceiver_jax import PerceiverConfig, PerceiverForImageClassificationConvProcessing, from_pretrained
from train import checkpoint, trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    trainer.train_and_evaluate(tiny_config(), str(workdir))
    return train_losses(workdir)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped after step 4 (checkpoints 2 and 4), copied for each test."""
    workdir = tmp_path_factory.mktemp("stopped")
    trainer.train_and_evaluate(tiny_config(stop_after_step=4), str(workdir))
    return workdir


@pytest.fixture
def run_dir(stopped, tmp_path):
    shutil.copytree(stopped, tmp_path / "run")
    return tmp_path / "run"


def _largest_tensor_file(step_dir) -> str:
    return max(glob.glob(f"{step_dir}/state/**/d/*", recursive=True), key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))


DAMAGE = {
    "truncated tensor file": lambda d: _truncate(_largest_tensor_file(d)),
    "truncated manifest": lambda d: _truncate(f"{d}/state/manifest.ocdbt"),
    "deleted item": lambda d: shutil.rmtree(f"{d}/meta"),
    "bit rot": lambda d: _flip_byte(_largest_tensor_file(d)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous_one(
    run_dir, uninterrupted, damage, caplog
):
    assert checkpoint_steps(run_dir) == [1, 2, 4]  # Orbax always keeps the first step's
    DAMAGE[damage](run_dir / "checkpoints" / "4")
    caplog.set_level("WARNING", logger="train")
    summary = trainer.train_and_evaluate(tiny_config(), str(run_dir))
    assert "checkpoint at step 4 is damaged" in caplog.text and "resuming from step 2" in caplog.text
    assert os.path.isdir(run_dir / "checkpoints_damaged" / "4")  # kept, never deleted
    assert summary["step"] == 6 and train_losses(run_dir) == uninterrupted


def test_no_readable_checkpoint_is_an_error_that_keeps_them(run_dir):
    for step in (1, 2, 4):
        _truncate(_largest_tensor_file(run_dir / "checkpoints" / str(step)))
    with pytest.raises(RuntimeError, match="no readable checkpoint.*step 4: .*step 2: .*step 1: "):
        trainer.train_and_evaluate(tiny_config(), str(run_dir))
    assert sorted(os.listdir(run_dir / "checkpoints_damaged")) == ["1", "2", "4"]


def test_max_checkpoints_0_keeps_every_checkpoint(tmp_path):
    trainer.train_and_evaluate(tiny_config(max_checkpoints=0, checkpoint_every=1), str(tmp_path))
    assert checkpoint_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_a_second_trainer_on_a_workdir_in_use_refuses(tmp_path):
    code = (
        "import sys, time; from train.checkpoint import WorkdirLock; lock = WorkdirLock(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RuntimeError, match=rf"is in use by process {holder.pid} on .* use another --workdir"
        ):
            trainer.train_and_evaluate(tiny_config(), str(tmp_path))
        assert not os.path.exists(tmp_path / "checkpoints")
    finally:
        holder.kill()
        holder.wait()


def test_a_run_refused_at_setup_releases_the_workdir_and_leaves_nothing_behind(tmp_path):
    missing = str(tmp_path / "corpus" / "*.txt")
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("kept")
    for workdir in (fresh, existing):
        with pytest.raises(FileNotFoundError, match="no file matches"):
            trainer.train_and_evaluate(tiny_config(**{"data.files": missing}), str(workdir))
    assert not fresh.exists()  # the workdir the refused run made is gone
    assert sorted(os.listdir(existing)) == [".lock", "notes.txt"]  # a user's folder is left as it was
    checkpoint.WorkdirLock(str(existing)).release()  # the refused run released its lock in this process


def test_a_full_disk_during_a_save_is_one_clear_error_and_the_run_resumes(
    run_dir, uninterrupted, monkeypatch
):
    saves = []
    real_save = grain.checkpoint.CheckpointHandler.save

    def save(self, directory, item=None, args=None):
        saves.append(directory)
        if len(saves) == 1:  # the save of step 6
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real_save(self, directory, item, args)

    monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", save)
    with pytest.raises(checkpoint.CheckpointWriteError) as error:
        trainer.train_and_evaluate(tiny_config(), str(run_dir))
    message = str(error.value)
    assert "\n" not in message and "no space left on device" in message
    assert "the previous checkpoint (step 4) is intact" in message and "rerun to resume" in message
    monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", real_save)
    assert trainer.train_and_evaluate(tiny_config(), str(run_dir))["step"] == 6
    assert train_losses(run_dir) == uninterrupted


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optimizer": "lamb"}, "optimizer: checkpoint 'adamw', config 'lamb'"),
        ({"clip_grad_norm": 0.0}, "gradient_clipping: checkpoint True, config False"),
        ({"num_train_steps": 3}, r"at step 4, past config.num_train_steps=3: nothing is left to train"),
    ],
)
def test_resuming_with_settings_the_checkpoint_cannot_take(run_dir, changes, message):
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(tiny_config(**changes), str(run_dir))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"log_every": 0}, r"config.log_every=0 must be a positive integer"),
        ({"eval_every": 0}, r"config.eval_every=0 must be a positive integer"),
        ({"checkpoint_every": 0}, r"config.checkpoint_every=0 must be a positive integer"),
        ({"global_batch_size": 0}, r"config.global_batch_size=0 must be a positive integer"),
        ({"learning_rate": -1e-3}, r"config.learning_rate=-0.001 must be >= 0"),
        ({"label_smoothing": 1.5}, r"config.label_smoothing=1.5 must be in \[0, 1\)"),
        ({"data.mask_prob": 0.0}, r"config.data.mask_prob=0.0 must be in \(0, 1\]"),
        ({"data.mask_prob": 1.5}, r"config.data.mask_prob=1.5 must be in \(0, 1\]"),
        ({"max_checkpoints": -1}, r"config.max_checkpoints=-1 must be >= 0 \(0 keeps every checkpoint\)"),
    ],
)
def test_bad_trainer_fields_are_named_with_the_fix(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(tiny_config(**changes), str(tmp_path))


def test_the_command_line_names_an_unknown_field(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/mlm_tiny.py", f"--workdir={tmp_path}",
         "--config.num_train_steps=5", "--config.model.num_layers=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --config.model.num_layers is not a field of the config ('num_layers' Did you mean "
        '"num_labels" instead of "num_layers"?); configs/default.py lists them.'
    )


def test_library_inputs_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Settings.dtype='bf16' is not a supported dtype; use one of"):
        from_pretrained(str(tmp_path), dtype="bf16")
    config = PerceiverConfig(
        num_latents=4, d_latents=16, num_self_attends_per_block=1, num_self_attention_heads=2,
        num_cross_attention_heads=1, d_model=322, image_size=32,
    )  # fmt: skip
    model = PerceiverForImageClassificationConvProcessing(config)
    variables = jax.jit(model.init)(jax.random.key(0), **model.example_inputs())
    with pytest.raises(ValueError, match=r"3x3 images are too small for the conv stem .* at least 5 pixels"):
        model.apply(variables, jnp.zeros((1, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"batch size 0; a batch needs at least one example"):
        model.apply(variables, jnp.zeros((0, 32, 32, 3)))
