"""Optical flow, the training DeepMind never released: `PerceiverForOpticalFlow` on frame pairs with flow.

Recipe (Perceiver IO, App. H; deepmind-research #281, #266): AutoFlow (400k synthetic pairs), crops of the
network's 368 x 496 `train_size`, AutoFlow's augmentation curriculum (stronger over time) then a phase
without augmentation; LAMB, batch 512, cosine lr from 4e-4; targets are flows / 20 and the decoder output
is divided by 100, i.e. the network predicts `flow / 20` (`perceiver_jax.flow.FLOW_SCALE_FACTOR`). The
paper states no loss; we minimise the end-point error (EPE) of `20 x output` against the flow in pixels
over the valid pixels, the standard optical-flow loss (RAFT, PWC-Net), and report EPE and the 1/3/5 px
outlier rates.

Data (`config.data.dataset`): 'synthetic' (offline, exact flow: `train.data.flow.SyntheticFlowSource`,
frames `config.data.frame_size` from scikit-image's images), 'sintel', 'flyingchairs' or 'kitti' in
`config.data.root` (FlyingChairs' own train/val split; the others hold out every 10th pair). The
curriculum `config.data.curriculum` is ((first step, augmentation strength, flip probability), ...).
Batches hold `train_size` crops; at each eval `report` also predicts the first
`config.data.num_report_pairs` eval pairs at full frame size (overlapping tiles, `perceiver_jax.flow`)
and writes prediction | truth | error pictures to `<workdir>/flow/`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax import PerceiverConfig
from perceiver_jax.flow import FLOW_SCALE_FACTOR, compute_optical_flow, extract_patches
from train.data import every_kth
from train.data import flow as flow_data
from train.tasks import TASKS, Config, Data, Task

DATASETS = ("synthetic", "sintel", "flyingchairs", "kitti")


def _sources(config: Config):
    dataset, root = config.data.dataset, config.data.root
    if dataset == "synthetic":
        size, motion = tuple(config.data.frame_size), config.data.synthetic_motion
        return (
            flow_data.SyntheticFlowSource(size, config.data.num_train_pairs, seed=1, **motion),
            flow_data.SyntheticFlowSource(size, config.data.num_eval_pairs, seed=2, **motion),
        )
    if dataset == "flyingchairs":
        return flow_data.FlyingChairsSource(root, "train"), flow_data.FlyingChairsSource(root, "val")
    if dataset == "sintel":
        return every_kth(flow_data.SintelSource(root, config.data.render_pass), 10)
    if dataset == "kitti":
        return every_kth(flow_data.Kitti2015Source(root), 10)
    raise ValueError(f"unknown config.data.dataset={dataset!r}; choose one of {DATASETS}.")


def _data(config: Config, model_config: PerceiverConfig, workdir: str) -> Data:
    train, held_out = _sources(config)
    crop = tuple(model_config.train_size)
    phases = tuple(
        (int(start), flow_data.FlowTrainTransform(crop, flip_prob=flip, strength=strength))
        for start, strength, flip in config.data.curriculum
    )
    if not phases or phases[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(phases, phases[1:])):
        raise ValueError(
            f"config.data.curriculum={config.data.curriculum} must be ((0, strength, flip_prob), "
            "(later step, ...), ...) with increasing first steps."
        )
    return Data(train, held_out, phases, flow_data.FlowEvalTransform(crop))


def _example(config: Config, model_config: PerceiverConfig) -> dict[str, np.ndarray]:
    height, width = model_config.train_size
    return dict(
        frames=np.zeros((2, height, width, 3), np.float32),
        flow=np.zeros((height, width, 2), np.float32),
        valid=np.ones((height, width), np.float32),
        weights=np.float32(1),
    )


def _prepare(batch, rng, config: Config, model_config: PerceiverConfig):
    """Frame pairs `(B, 2, H, W, 3)` -> the head's 3x3 patches `(B, 2, H, W, 27)`."""
    return {"inputs": extract_patches(batch["frames"])}, {}, batch


def _loss(outputs, batch, config: Config, train: bool):
    """EPE sums of the prediction in pixels (`FLOW_SCALE_FACTOR x output`) over valid pixels, the
    outlier counts, and the zero-flow baseline's EPE."""
    valid = batch["valid"] * batch["weights"][:, None, None]
    sums = flow_data.flow_metric_sums(outputs * FLOW_SCALE_FACTOR, batch["flow"], valid)
    baseline = flow_data.flow_metric_sums(jnp.zeros_like(batch["flow"]), batch["flow"], valid)
    return dict(loss=sums.pop("epe"), weight=sums.pop("count"), baseline_epe=baseline["epe"], **sums)


def _summarize(sums) -> dict[str, float]:
    count = max(float(sums["weight"]), 1.0)
    summary = {name: float(value) / count for name, value in sums.items() if name not in ("weight",)}
    summary["epe"] = summary["loss"]
    summary["baseline"] = summary.pop("baseline_epe")
    return summary


def _report(
    model, variables, data: Data, config: Config, model_config: PerceiverConfig, workdir: str, step: int
):
    """Full-frame flow of the first eval pairs (tiles of `train_size`): EPE, outliers, zero flow's EPE
    (`full_frame_baseline`), pictures."""
    apply = jax.jit(lambda v, patches: model.apply(v, patches) * FLOW_SCALE_FACTOR)
    folder = os.path.join(workdir, "flow")
    os.makedirs(folder, exist_ok=True)
    sums, zero_flow_sums = {}, {}
    overlap = min(20, min(model_config.train_size) // 4)  # the colab's 20 px, less for small windows
    for i in range(min(config.data.num_report_pairs, len(data.eval))):
        pair = flow_data.as_flow_pair(data.eval[i])
        prediction = compute_optical_flow(
            lambda patches: apply(variables, patches),
            pair.frames[0],
            pair.frames[1],
            model_config.train_size,
            min_overlap=overlap,
        )
        flow_data.save_flow_panel(
            os.path.join(folder, f"step_{step}_pair_{i}.png"), prediction, pair.flow, pair.valid
        )
        for totals, flow in ((sums, prediction), (zero_flow_sums, np.zeros_like(pair.flow))):
            for name, value in flow_data.flow_metric_sums(flow, pair.flow, pair.valid).items():
                totals[name] = totals.get(name, 0.0) + float(value)
    if not sums:
        return {}
    metrics = {f"full_frame_{k}": v for k, v in flow_data.summarize_flow_metrics(sums).items()}
    return {**metrics, "full_frame_baseline": flow_data.summarize_flow_metrics(zero_flow_sums)["epe"]}


TASKS["optical_flow"] = Task(
    "PerceiverForOpticalFlow", _data, _example, _prepare, _loss, _summarize, headline="epe",
    headline_name="end-point error (px)", baseline_name="zero-flow baseline", higher_is_better=False,
    report=_report,
)  # fmt: skip
