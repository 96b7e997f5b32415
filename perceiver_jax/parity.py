"""Parity check against Hugging Face's torch Perceiver: `python -m perceiver_jax.parity PATH`.

Loads the HF folder PATH with transformers (torch) and with `perceiver_jax.from_pretrained`, feeds both
the same random inputs (with padding where the head takes a mask), and prints the max absolute and
relative error of every output. Exits 1 when an error exceeds the tolerance. Needs torch + transformers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.hf import from_pretrained


def max_relative_error(ours: Any, reference: Any) -> float:
    """`max|ours - reference| / max|reference|` in float64, of arrays of the same shape (numpy or jax);
    the measure every parity check of perceiver-jax reports."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs the reference's {reference.shape}.")
    return float(np.max(np.abs(ours - reference)) / max(float(np.max(np.abs(reference))), 1e-30))


# A head's inputs: (config, rng, batch size) -> (perceiver-jax keyword arguments, torch keyword arguments).
InputFn = Callable[[PerceiverConfig, np.random.Generator, int], tuple[dict, dict]]


def text_inputs(config: PerceiverConfig, rng: np.random.Generator, batch_size: int):
    """Random token ids `(B, T)` with T = max_position_embeddings, rows padded to different lengths."""
    length = config.max_position_embeddings
    ids = rng.integers(0, config.vocab_size, (batch_size, length))
    mask = np.ones((batch_size, length), np.int64)
    for b in range(1, batch_size):
        mask[b, length * (batch_size - b) // (batch_size + 1) :] = 0
    ids = np.where(mask == 1, ids, 0)
    import torch

    return (
        {"inputs": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask)},
        {"inputs": torch.tensor(ids), "attention_mask": torch.tensor(mask)},
    )


def image_inputs(config: PerceiverConfig, rng: np.random.Generator, batch_size: int):
    """Random normal RGB images of `config.image_size`: `(B, H, W, 3)` for jax, `(B, 3, H, W)` for torch."""
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    images = rng.standard_normal((batch_size, height, width, 3)).astype(np.float32)
    import torch

    return (
        {"inputs": jnp.asarray(images)},
        {"inputs": torch.tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))},
    )


def flow_inputs(config: PerceiverConfig, rng: np.random.Generator, batch_size: int):
    """Random normal patch pairs of `config.train_size`: `(B, 2, H, W, 27)` for jax, `(B, 2, 27, H, W)` for
    torch."""
    shape = (batch_size, config.flow_temporal_downsample, *config.train_size, config.flow_frame_channels)
    patches = rng.standard_normal(shape).astype(np.float32)
    import torch

    return (
        {"inputs": jnp.asarray(patches)},
        {"inputs": torch.tensor(np.ascontiguousarray(np.moveaxis(patches, -1, 2)))},
    )


def multimodal_inputs(config: PerceiverConfig, rng: np.random.Generator, batch_size: int):
    """Random normal video `(B, num_frames, H, W, 3)` (H, W = image_size; torch: `(B, T, 3, H, W)`), audio
    `(B, num_frames * audio_samples_per_frame, 1)` and labels; a token mask with rows padded to different
    lengths; random subsampled output points (at most 2048 video and 128 audio points)."""
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    num_samples = config.num_frames * config.audio_samples_per_frame
    video_shape = (batch_size, config.num_frames, height, width, config.multimodal_image_channels)
    video = rng.standard_normal(video_shape).astype(np.float32)
    audio = rng.standard_normal((batch_size, num_samples, 1)).astype(np.float32)
    label = rng.standard_normal((batch_size, config.num_labels)).astype(np.float32)
    t, s = config.multimodal_temporal_downsample, config.multimodal_spatial_downsample
    num_tokens = (
        num_samples // config.samples_per_patch + (config.num_frames // t) * (height // s) * (width // s) + 1
    )
    mask = np.ones((batch_size, num_tokens), np.int64)
    for b in range(1, batch_size):
        mask[b, num_tokens * (batch_size - b) // (batch_size + 1) :] = 0
    num_video_points = int(np.prod(config.output_shape[1:]))
    num_audio_points = num_samples // config.samples_per_patch
    points = {
        "image": rng.permutation(num_video_points)[:2048],
        "audio": rng.permutation(num_audio_points)[:128],
    }
    import torch

    torch_inputs = {
        "image": torch.tensor(np.ascontiguousarray(video.transpose(0, 1, 4, 2, 3))),
        "audio": torch.tensor(audio),
        "label": torch.tensor(label),
    }
    return (
        {
            "inputs": {"image": jnp.asarray(video), "audio": jnp.asarray(audio), "label": jnp.asarray(label)},
            "attention_mask": jnp.asarray(mask),
            "subsampled_output_points": {k: jnp.asarray(v, jnp.int32) for k, v in points.items()},
        },
        {
            "inputs": torch_inputs,
            "attention_mask": torch.tensor(mask),
            "subsampled_output_points": {**{k: torch.tensor(v) for k, v in points.items()}, "label": None},
        },
    )


PARITY_INPUTS: dict[str, InputFn] = {
    "PerceiverForMaskedLM": text_inputs,
    "PerceiverForSequenceClassification": text_inputs,
    "PerceiverForImageClassificationLearned": image_inputs,
    "PerceiverForImageClassificationFourier": image_inputs,
    "PerceiverForImageClassificationConvProcessing": image_inputs,
    "PerceiverForOpticalFlow": flow_inputs,
    "PerceiverForMultimodalAutoencoding": multimodal_inputs,
}


def _as_dict(outputs: Any) -> dict[str, np.ndarray]:
    if isinstance(outputs, dict):
        return {k: np.asarray(v, np.float64) for k, v in outputs.items()}
    return {"logits": np.asarray(outputs, np.float64)}


def compare(path: str, batch_size: int = 2, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Runs HF torch and perceiver-jax on the same inputs; returns `{output: (max_abs_err, max_rel_err)}`.

    The relative error is `max|jax - torch| / max|torch|` per output.
    """
    import torch
    import transformers

    model, variables = from_pretrained(path)
    name = type(model).__name__
    if name not in PARITY_INPUTS:
        raise ValueError(f"no parity inputs defined for {name}.")
    kwargs, torch_kwargs = PARITY_INPUTS[name](model.config, np.random.default_rng(seed), batch_size)
    torch_model = getattr(transformers, name).from_pretrained(path).eval()
    with torch.no_grad():
        reference = torch_model(**torch_kwargs).logits
    if isinstance(reference, dict):
        reference = {k: v.numpy() for k, v in reference.items()}
    else:
        reference = reference.numpy()
    ours = jax.jit(lambda v, kw: model.apply(v, **kw))(variables, kwargs)
    ours, reference = _as_dict(ours), _as_dict(reference)
    errors = {}
    for key, ref in reference.items():
        if ours[key].shape != ref.shape:
            raise ValueError(
                f"output {key!r}: perceiver-jax shape {ours[key].shape} != HF shape {ref.shape}."
            )
        errors[key] = (float(np.max(np.abs(ours[key] - ref))), max_relative_error(ours[key], ref))
    return errors


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 within tolerance, 1 beyond)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "path", help="a HF Perceiver folder (config.json + model.safetensors/pytorch_model.bin)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-5, help="max relative error allowed (default 1e-5)")
    args = parser.parse_args(argv)
    errors = compare(args.path, args.batch_size, args.seed)
    ok = True
    print(f"{'output':<12} {'max abs err':>12} {'max rel err':>12}")
    for key, (abs_err, rel_err) in errors.items():
        ok &= rel_err <= args.rtol
        print(f"{key:<12} {abs_err:>12.3e} {rel_err:>12.3e}{'' if rel_err <= args.rtol else '  FAIL'}")
    print("parity OK" if ok else f"parity FAILED: relative error above {args.rtol:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
