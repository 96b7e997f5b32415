"""Every head trains: image classification (three heads), fine-tuning an HF checkpoint on labelled text,
optical flow and multimodal autoencoding; exact resume after kill -9 (worker processes, augmentation
randomness included), restore onto another mesh, sharding, export to HF folders transformers loads.

Runs are a few steps of tiny models on the offline data (digits, synthetic flow and clips, a CSV written
here); compilation dominates, so the persistent compilation cache of `test_train` is on.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import traverse_util
from helpers import max_rel_err, save_random_hf
from PIL import Image
from test_train import ROOT, _compilation_cache, train_losses  # noqa: F401

from configs import default
from perceiver_jax import from_pretrained
from train import build, trainer
from train.data import flow as flow_data
from train.tasks import get_task

COMMON = dict(
    num_latents=8, d_latents=32, num_self_attends_per_block=1, num_self_attention_heads=2,
    num_cross_attention_heads=1, attention_probs_dropout_prob=0.0,
)  # fmt: skip
IMAGE_WIDTHS = {"image_learned": 512, "image_fourier": 261, "image_conv": 322}


def config_for(task, steps=4, **changes):
    """A `task` run of `steps` steps of batch 8 on one device, checkpointing every step."""
    config = default.get_config()
    config.task = task
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    config.global_batch_size, config.num_train_steps, config.warmup_steps = 8, steps, min(1, steps - 1)
    config.log_every, config.eval_every, config.checkpoint_every, config.num_eval_batches = 1, 100, 1, 1
    config.learning_rate = 3e-3
    if task.startswith("image_"):
        config.model = default.model(**COMMON, d_model=IMAGE_WIDTHS[task], num_labels=10, image_size=16)
    elif task == "optical_flow":
        config.model = default.model(**COMMON, d_model=322, train_size=(8, 12))
        config.data.frame_size, config.data.num_train_pairs, config.data.num_eval_pairs = (12, 16), 32, 8
        config.data.num_report_pairs = 1
    elif task == "multimodal_autoencoding":
        config.model = default.model(
            **COMMON, d_model=16, num_labels=3, num_frames=2, image_size=8, audio_samples_per_frame=16,
            samples_per_patch=8, output_shape=(1, 2, 8, 8), output_num_channels=16,
            _label_trainable_num_channels=16,
        )  # fmt: skip
        config.data.num_train_clips, config.data.num_eval_clips, config.data.num_report_clips = 32, 8, 1
        config.data.num_points = dict(image=32, audio=2)
    config.update_from_flattened_dict(changes)
    return config


def final_state(workdir):
    """The newest checkpoint's state, as saved (params, model_state, ...), numpy."""
    directory = os.path.join(workdir, "checkpoints")
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step()
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


# --- Image classification.


@pytest.mark.parametrize("task", sorted(IMAGE_WIDTHS))
def test_image_heads_train_and_report_top1_and_top5(task, tmp_path):
    summary = trainer.train_and_evaluate(config_for(task, steps=3), str(tmp_path))
    assert summary["step"] == 3 and 0 <= summary["eval_accuracy"] <= summary["eval_top5_accuracy"] <= 1
    assert 0 < summary["eval_baseline"] <= 1
    losses = train_losses(tmp_path)
    assert len(losses) == 3 and np.all(np.isfinite(losses))


@pytest.fixture(scope="module")
def conv_reference(tmp_path_factory):
    """An uninterrupted 4-step conv-head run with MixUp / CutMix, RandAugment and Grain worker processes."""
    workdir = tmp_path_factory.mktemp("conv_reference")
    trainer.train_and_evaluate(config_for("image_conv", **{"data.num_workers": 2}), str(workdir))
    return workdir


def _kill_after(config, workdir, step):
    """Runs the trainer in a subprocess and kills it (SIGKILL) once checkpoint `step` is complete."""
    config_file = workdir.parent / f"{workdir.name}_config.py"
    config_file.write_text(
        "import json\nimport ml_collections\n\n\ndef get_config():\n"
        f"    return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    process = subprocess.Popen(
        [sys.executable, "-m", "train", f"--config={config_file}", f"--workdir={workdir}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not os.path.exists(workdir / "checkpoints" / str(step) / "commit_success.txt"):
        assert process.poll() is None and time.time() < deadline, "the run ended before it was killed"
        time.sleep(0.2)
    workers = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    orphans = [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    assert not orphans, f"input workers {orphans} outlived the killed trainer"
    return workers


def _children(pid):
    """Pids of the live processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if entry.isdigit() and int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return children


def test_conv_head_resumes_exactly_after_kill_9(conv_reference, tmp_path):
    """Same loss sequence as the uninterrupted run; BatchNorm statistics restored and counted exactly."""
    workdir = tmp_path / "run"
    config = config_for("image_conv", **{"data.num_workers": 2})
    assert len(_kill_after(config, workdir, step=2)) >= 2  # its input workers, gone with it
    trainer.train_and_evaluate(config, str(workdir))
    assert train_losses(workdir) == train_losses(conv_reference)
    ours, reference = final_state(workdir), final_state(conv_reference)
    stats = traverse_util.flatten_dict(ours["model_state"]["batch_stats"])
    for path, value in stats.items():
        np.testing.assert_array_equal(
            value, traverse_util.flatten_dict(reference["model_state"]["batch_stats"])[path]
        )
    count = next(v for p, v in stats.items() if p[-1] == "num_batches_tracked")
    assert int(count) == 4  # one training batch per step
    mean = next(v for p, v in stats.items() if p[-1] == "mean")
    assert np.abs(mean).max() > 0  # the statistics moved from their initial zeros


def test_conv_head_restores_onto_another_mesh(conv_reference, tmp_path):
    config = config_for("image_conv", stop_after_step=2)
    trainer.train_and_evaluate(config, str(tmp_path))
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
    trainer.train_and_evaluate(config_for("image_conv", **mesh), str(tmp_path))
    np.testing.assert_allclose(train_losses(tmp_path), train_losses(conv_reference), rtol=2e-4)


def test_text_pipeline_with_workers_resumes_exactly_after_kill_9(tmp_path):
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    config = config_for("mlm", **{"data.num_workers": 2, "data.seq_len": 32})
    config.model = default.model(
        **COMMON, d_model=16, max_position_embeddings=32, mlm_decoder=dict(num_heads=2, qk_channels=16)
    )
    trainer.train_and_evaluate(config, str(reference))
    _kill_after(config, workdir, step=2)
    trainer.train_and_evaluate(config, str(workdir))
    assert train_losses(workdir) == train_losses(reference)


def _write_images(folder, sizes):
    for index, size in enumerate(sizes):
        os.makedirs(folder / f"class{index % 2}", exist_ok=True)
        rgb = np.random.default_rng(index).integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"class{index % 2}" / f"{index}.png")


def test_image_folders_of_mixed_sizes_train_and_bad_folders_fail_clearly(tmp_path):
    good = tmp_path / "good"
    _write_images(good, [(20, 24), (31, 17), (16, 16), (40, 28)] * 4)
    changes = {"data.train_dir": str(good), "data.eval_fraction": 0.25, "model.num_labels": 2}
    summary = trainer.train_and_evaluate(
        config_for("image_fourier", steps=1, **changes), str(tmp_path / "run1")
    )
    assert summary["step"] == 1  # mixed sizes are cropped and resized to model.image_size
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no .jpg/.jpeg/.png images. Found cats/: nothing"):
        trainer.train_and_evaluate(
            config_for("image_fourier", **{"data.train_dir": str(empty)}), str(tmp_path / "r2")
        )
    broken = tmp_path / "broken"
    _write_images(broken, [(16, 16)] * 16)
    (broken / "class0" / "0.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match=r"0\.png"):
        trainer.train_and_evaluate(
            config_for("image_fourier", steps=2, **{"data.train_dir": str(broken), "model.num_labels": 2}),
            str(tmp_path / "r3"),
        )


# --- Fine-tuning a Hugging Face checkpoint on labelled text.

TEXT_MODEL = dict(
    COMMON, d_model=16, max_position_embeddings=32, mlm_decoder=dict(num_heads=2, qk_channels=16)
)


def _csv(path, rows, columns=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory):
    """A `transformers.PerceiverForMaskedLM.save_pretrained` folder of the tiny text model."""
    folder = tmp_path_factory.mktemp("hf_mlm")
    hf_config = transformers.PerceiverConfig(
        **{k: v for k, v in TEXT_MODEL.items() if k != "mlm_decoder"},
        architectures=["PerceiverForMaskedLM"],
    )
    transformers.PerceiverForMaskedLM(hf_config).save_pretrained(folder)  # HF's own init and decoder
    return folder


def _text_config(tmp_path, **changes):
    rows = [
        (f"{word} {i}", label)
        for i in range(40)
        for word, label in (("apples", "fruit"), ("carrots", "vegetable"))
    ]
    config = config_for("text_classification", steps=1, **{"data.seq_len": 32, "learning_rate": 0.0})
    config.model = default.model(**TEXT_MODEL)
    config.data.train_file = _csv(tmp_path / "train.csv", rows)
    config.update_from_flattened_dict(changes)
    return config


def test_fine_tuning_from_an_hf_mlm_folder_on_a_csv(hf_mlm, tmp_path):
    config = _text_config(tmp_path, init_from=str(hf_mlm), export_hf=True)
    summary = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["step"] == 1
    hf_state = transformers.PerceiverForMaskedLM.from_pretrained(hf_mlm).state_dict()
    params = final_state(tmp_path / "run")["params"]["perceiver"]
    latents = np.asarray(params["encoder"]["latents"])
    np.testing.assert_array_equal(latents, hf_state["perceiver.embeddings.latents"].numpy())
    table = np.asarray(params["input_preprocessor"]["embeddings"]["embedding"])
    np.testing.assert_array_equal(table, hf_state["perceiver.input_preprocessor.embeddings.weight"].numpy())
    kernel = np.asarray(params["encoder"]["self_attends"]["attention"]["query"]["kernel"][0])
    np.testing.assert_array_equal(
        kernel, hf_state["perceiver.encoder.self_attends.0.attention.self.query.weight"].numpy().T
    )
    exported = transformers.PerceiverForSequenceClassification.from_pretrained(tmp_path / "run" / "hf")
    assert exported.config.id2label == {0: "fruit", 1: "vegetable"}


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"data.label_column": "category"},
            r"no label column 'category'; the columns are \['text', 'label'\]",
        ),
        ({"data.eval_file": "EVAL_UNSEEN"}, r"1 label\(s\) not in the training file: 'meat'"),
    ],
)
def test_labelled_text_errors(tmp_path, changes, message):
    if changes.get("data.eval_file") == "EVAL_UNSEEN":
        changes = {"data.eval_file": _csv(tmp_path / "eval.csv", [("beef", "meat"), ("apples", "fruit")])}
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(_text_config(tmp_path, **changes), str(tmp_path / "run"))


def test_init_from_an_hf_folder_of_another_modality_is_refused(tmp_path):
    folder = tmp_path / "vision"
    hf_config = transformers.PerceiverConfig(**COMMON, d_model=261, image_size=16, num_labels=3)
    save_random_hf(transformers.PerceiverForImageClassificationFourier, hf_config, folder)
    with pytest.raises(ValueError, match=r"holds a PerceiverForImageClassificationFourier.*another modality"):
        trainer.train_and_evaluate(_text_config(tmp_path, init_from=str(folder)), str(tmp_path / "run"))


# --- Optical flow and multimodal autoencoding.


def test_export_of_a_model_hf_cannot_express_is_refused_before_training(tmp_path):
    config = config_for("optical_flow", export_hf=True, **{"model.flow_num_bands": 1, "model.d_model": 70})
    with pytest.raises(ValueError, match=r"export_hf=True, but Fields \['flow_num_bands'\]"):
        trainer.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("task", ["optical_flow", "multimodal_autoencoding"])
def test_flow_and_multimodal_train_resume_shard_and_export(task, tmp_path):
    reference, resumed, sharded = tmp_path / "reference", tmp_path / "resumed", tmp_path / "sharded"
    summary = trainer.train_and_evaluate(config_for(task, export_hf=True), str(reference))
    assert summary["step"] == 4 and np.isfinite(summary["eval_loss"]) and "eval_baseline" in summary
    trainer.train_and_evaluate(config_for(task, stop_after_step=2), str(resumed))
    trainer.train_and_evaluate(config_for(task), str(resumed))
    assert train_losses(resumed) == train_losses(reference)
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "num_train_steps": 2}
    trainer.train_and_evaluate(config_for(task, **mesh), str(sharded))
    np.testing.assert_allclose(train_losses(sharded), train_losses(reference)[:2], rtol=2e-4)

    model, variables = from_pretrained(str(reference / "hf"))
    hf_model = getattr(transformers, type(model).__name__).from_pretrained(reference / "hf").eval()
    rng = np.random.default_rng(0)
    if task == "optical_flow":
        patches = rng.standard_normal((2, 2, 8, 12, 27)).astype(np.float32)
        ours = {"logits": model.apply(variables, jnp.asarray(patches))}
        with torch.no_grad():
            theirs = {
                "logits": hf_model(inputs=torch.tensor(np.moveaxis(patches, -1, 2).copy())).logits.numpy()
            }
        assert os.listdir(reference / "flow")  # the report's pictures
        pair = flow_data.as_flow_pair(flow_data.SyntheticFlowSource((12, 16), 8, seed=2)[0])  # eval pair 0
        zero_epe = np.linalg.norm(pair.flow, axis=-1).mean()
        np.testing.assert_allclose(summary["eval_full_frame_baseline"], zero_epe, rtol=1e-5)
    else:
        video = rng.uniform(0, 1, (2, 2, 8, 8, 3)).astype(np.float32)
        audio = rng.uniform(-1, 1, (2, 32, 1)).astype(np.float32)
        label = np.eye(3, dtype=np.float32)[[0, 2]]
        points = {"image": np.arange(0, 128, 3), "audio": np.arange(4)}
        inputs = {"image": jnp.asarray(video), "audio": jnp.asarray(audio), "label": jnp.asarray(label)}
        ours = model.apply(
            variables, inputs, subsampled_output_points={k: jnp.asarray(v) for k, v in points.items()}
        )
        torch_inputs = {"image": torch.tensor(video.transpose(0, 1, 4, 2, 3).copy()),
                        "audio": torch.tensor(audio), "label": torch.tensor(label)}  # fmt: skip
        torch_points = {**{k: torch.tensor(v) for k, v in points.items()}, "label": None}
        with torch.no_grad():
            theirs = hf_model(inputs=torch_inputs, subsampled_output_points=torch_points).logits
        theirs = {k: v.numpy() for k, v in theirs.items()}
    for key, value in theirs.items():
        assert max_rel_err(np.asarray(ours[key]), value) <= 1e-5, key
    jax.clear_caches()


def test_multimodal_baseline_is_the_mean_frame_of_the_batch_not_of_the_clip():
    """The printed baseline does not see the clip (like zero flow): grey clips of two levels score finite
    baseline PSNR while each clip's own mean frame (`clip_mean_psnr`, the oracle) reproduces them; an
    example of weight 0 (eval padding) does not move the mean."""
    config = config_for("multimodal_autoencoding")
    model_config = build.model_config_of(config)
    task = get_task("multimodal_autoencoding")
    levels = np.array([0.2, 0.6, 1.0], np.float32)
    batch = {
        "image": np.broadcast_to(levels[:, None, None, None, None], (3, 2, 8, 8, 3)).copy(),
        "audio": np.zeros((3, 32, 1), np.float32),
        "label": np.zeros((3, 3), np.float32),
        "targets": np.zeros(3, np.int32),
        "weights": np.array([1, 1, 0], np.float32),
    }
    _, _, prepared = task.prepare(jax.tree.map(jnp.asarray, batch), None, config, model_config)
    np.testing.assert_allclose(prepared["image_baseline"], 0.4, rtol=1e-6)  # (0.2 + 0.6) / 2
    np.testing.assert_allclose(prepared["image_clip_mean"], prepared["image_targets"], rtol=1e-6)
    outputs = {"image": prepared["image_baseline"], "audio": prepared["audio_targets"],
               "label": jnp.zeros((3, 3))}  # fmt: skip
    summary = task.summarize(task.loss(outputs, prepared, config, False))
    assert abs(summary["baseline"] - summary["image_psnr"]) < 1e-3  # the baseline's own PSNR
    assert abs(summary["baseline"] - 20 * np.log10(1 / 0.2)) < 1e-3  # error 0.2 on both weighted clips


def test_multimodal_mean_frames_are_read_at_each_points_own_pixel():
    """Still clips of random pictures: at every decoded point (any frame) each clip's own mean frame is the
    target itself and the baseline is the weighted mean of the clips' pictures at that pixel."""
    config = config_for("multimodal_autoencoding")
    model_config = build.model_config_of(config)
    task = get_task("multimodal_autoencoding")
    pictures = np.random.default_rng(0).uniform(size=(3, 1, 8, 8, 3)).astype(np.float32)
    batch = {
        "image": np.broadcast_to(pictures, (3, 2, 8, 8, 3)).copy(),
        "audio": np.zeros((3, 32, 1), np.float32),
        "label": np.zeros((3, 3), np.float32),
        "targets": np.zeros(3, np.int32),
        "weights": np.array([1, 1, 0], np.float32),
    }
    kwargs, _, prepared = task.prepare(jax.tree.map(jnp.asarray, batch), None, config, model_config)
    points = np.asarray(kwargs["subsampled_output_points"]["image"])
    assert points.max() >= 64  # some points lie in the second frame
    np.testing.assert_allclose(prepared["image_clip_mean"], prepared["image_targets"], rtol=1e-6)
    expected = pictures[:2].mean(axis=0).reshape(64, 3)[points % 64]
    np.testing.assert_allclose(prepared["image_baseline"], np.broadcast_to(expected, (3, *expected.shape)),
                               rtol=1e-6)  # fmt: skip
