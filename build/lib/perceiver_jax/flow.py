"""Optical flow between two real frames of any size with the optical-flow head, and its visualisation.

HF's `PerceiverForOpticalFlow` only takes pre-built 3x3 patches of exactly `train_size` (368x496). This
module adds what DeepMind's optical-flow colab does around the network, channels-last throughout:

- `normalize_frames`: RGB in [0, 255] -> [-1, 1] as `frames / 255 * 2 - 1` (the colab's `normalize`).
- `extract_patches`: frame pairs `(..., 2, H, W, 3)` -> `(..., 2, H, W, 27)`: for each pixel its 3x3
  neighbourhood, zero-padded at the borders, channel `(dy * 3 + dx) * 3 + c` (dy, dx in 0..2 from the
  top-left neighbour, c the RGB channel). This is DeepMind's `io_processors.patches_for_flow` (zero pad by
  1, then `tf.image.extract_patches` order: patch row, patch column, channel) whose layout the published
  weights (converted to HF) were trained on; HF's `(B, 2, 27, H, W)` input is the same 27 channels moved
  to dim 2 (`torch.nn.functional.unfold` orders them `(c, dy, dx)` instead, see the tests). The
  patches of the two frames are stacked frame-first, so the head's `space_to_depth` reads 54 channels
  as `[frame 1's 27, frame 2's 27]`.
- `compute_optical_flow`: frames larger than `train_size` are covered by overlapping `train_size`
  windows (`tile_origins`), patches are extracted per window as in the colab, the windows run through
  the network `batch_size` at a time, and each window's flow is blended with the colab's weights
  `min(x + 1, w - x, y + 1, h - y)` (1 at a window's border, growing linearly inwards), normalised by the
  summed weights. Frames smaller than `train_size` along an axis are edge-padded (centred, as RAFT's
  `InputPadder` with mode 'replicate') to it and the flow is cropped back.
- `flow_to_color`: the Middlebury colour wheel of Baker et al. (ICCV 2007; Scharstein's `colorcode.cpp`,
  Sun's `computeColor.m`, as in the `flow_vis` package RAFT uses), flow normalised by its largest
  magnitude.

Flow convention (HF, DeepMind, Middlebury): `flow[y, x] = (u, v)` in pixels, u horizontal (right +),
v vertical (down +), such that `frame2[y + v, x + u]` matches `frame1[y, x]`. The network's output is
the flow divided by `FLOW_SCALE_FACTOR` (20, FlowNet's convention for training targets): DeepMind's
colab multiplies the network's output by 20, as does its port to HF's model (the Transformers-Tutorials
Perceiver optical-flow notebook, which builds the same `(dy, dx, c)` patches with `Tensor.unfold`);
`model_flow_fn` applies it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

FLOW_SCALE_FACTOR = 20.0
PATCH_SIZE = 3  # each pixel's patch is its 3x3 neighbourhood

# Middlebury colour wheel segments red->yellow, yellow->green, green->cyan, cyan->blue, blue->magenta,
# magenta->red: (number of hues, how R, G, B vary along the segment).
_WHEEL_SEGMENTS = (
    (15, ("full", "up", "zero")),
    (6, ("down", "full", "zero")),
    (4, ("zero", "full", "up")),
    (11, ("zero", "down", "full")),
    (13, ("up", "zero", "full")),
    (6, ("full", "zero", "down")),
)

FlowFn = Callable[[jax.Array], Any]


def _check_frames(frames: np.ndarray | jax.Array, name: str) -> None:
    """Raises ValueError unless `frames` is `(..., H, W, 3)` with H, W >= 3 and a real dtype."""
    if frames.ndim < 3:
        raise ValueError(f"{name} must have shape (..., height, width, 3); got shape {frames.shape}.")
    if frames.shape[-1] != 3:
        raise ValueError(
            f"{name} must be RGB, channels last (..., height, width, 3); got {frames.shape[-1]} channels "
            f"in shape {frames.shape}."
        )
    height, width = frames.shape[-3], frames.shape[-2]
    if height < PATCH_SIZE or width < PATCH_SIZE:
        raise ValueError(
            f"{name} must be at least {PATCH_SIZE}x{PATCH_SIZE} pixels (one patch); got {height}x{width}."
        )
    if not (jnp.issubdtype(frames.dtype, jnp.integer) or jnp.issubdtype(frames.dtype, jnp.floating)):
        raise TypeError(f"{name} must hold integers or floats; got dtype {frames.dtype}.")


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """RGB values in [0, 255] `(..., H, W, 3)` -> float32 in [-1, 1] (`frames / 255 * 2 - 1`)."""
    frames = np.asarray(frames)
    _check_frames(frames, "frames")
    return (frames.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)).astype(
        np.float32
    )


def extract_patches(frames: np.ndarray | jax.Array) -> jax.Array:
    """Frame pairs `(2, H, W, 3)` or `(B, 2, H, W, 3)` -> 3x3 patches `(2, H, W, 27)` / `(B, 2, H, W, 27)`.

    Channel `(dy * 3 + dx) * 3 + c` holds channel c of the pixel at offset `(dy - 1, dx - 1)`; pixels
    outside the frame are 0. Integer frames become float32; float dtypes are kept. Works under `jit`.
    """
    frames = jnp.asarray(frames)
    if frames.ndim not in (4, 5) or frames.shape[-4] != 2:
        raise ValueError(
            "frames must be a pair (2, height, width, 3) or a batch of pairs (batch, 2, height, width, 3); "
            f"got shape {frames.shape}."
        )
    _check_frames(frames, "frames")
    if not jnp.issubdtype(frames.dtype, jnp.floating):
        frames = frames.astype(jnp.float32)
    height, width = frames.shape[-3], frames.shape[-2]
    border = PATCH_SIZE // 2
    padded = jnp.pad(frames, [(0, 0)] * (frames.ndim - 3) + [(border, border), (border, border), (0, 0)])
    neighbours = [
        padded[..., dy : dy + height, dx : dx + width, :]
        for dy in range(PATCH_SIZE)
        for dx in range(PATCH_SIZE)
    ]
    return jnp.concatenate(neighbours, axis=-1)


def _window_starts(size: int, window: int, min_overlap: int) -> list[int]:
    """Starts of `window`-long windows covering `[0, size)`, neighbours overlapping >= `min_overlap`."""
    return list(range(0, size - window, window - min_overlap)) + [size - window]


def _check_train_size(train_size: Sequence[int]) -> tuple[int, int]:
    train_size = tuple(train_size)
    if len(train_size) != 2 or any(
        not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < PATCH_SIZE for n in train_size
    ):
        raise ValueError(f"train_size must be (height, width), each an integer >= 3; got {train_size!r}.")
    return int(train_size[0]), int(train_size[1])


def tile_origins(
    image_size: Sequence[int], train_size: Sequence[int] = (368, 496), min_overlap: int = 20
) -> list[tuple[int, int]]:
    """Top-left corners `(y, x)` of `train_size` windows that tile an image of `image_size` `(H, W)`.

    Per axis, windows start every `train_size - min_overlap` pixels and the last one is flush with the
    far border, so neighbours overlap by at least `min_overlap` and every window lies inside the image
    (DeepMind's `compute_grid_indices` keeps a window past the border when the stride leaves a short
    remainder, e.g. height 700; this does not). Rows first, then columns. Needs `image_size >= train_size`.
    """
    th, tw = _check_train_size(train_size)
    if len(image_size) != 2 or image_size[0] < th or image_size[1] < tw:
        raise ValueError(
            f"image_size {tuple(image_size)} must be (height, width) at least train_size {(th, tw)}."
        )
    if not isinstance(min_overlap, (int, np.integer)) or not 0 <= min_overlap < min(th, tw):
        raise ValueError(f"min_overlap must be an integer in [0, {min(th, tw)}); got {min_overlap!r}.")
    ys = _window_starts(int(image_size[0]), th, min_overlap)
    xs = _window_starts(int(image_size[1]), tw, min_overlap)
    return [(y, x) for y in ys for x in xs]


def blend_weights(train_size: Sequence[int] = (368, 496)) -> np.ndarray:
    """The colab's blending window `(h, w)` float64: `min(x + 1, w - x, y + 1, h - y)` at pixel (y, x)."""
    th, tw = _check_train_size(train_size)
    y = np.arange(th)[:, None]
    x = np.arange(tw)[None, :]
    return np.minimum(np.minimum(x + 1, tw - x), np.minimum(y + 1, th - y)).astype(np.float64)


def compute_optical_flow(
    flow_fn: FlowFn,
    frame1: np.ndarray,
    frame2: np.ndarray,
    train_size: Sequence[int] = (368, 496),
    min_overlap: int = 20,
    batch_size: int = 1,
    normalize: bool = True,
) -> np.ndarray:
    """Flow from `frame1` to `frame2`, RGB `(H, W, 3)` of any size >= 3x3 -> float32 `(H, W, 2)`.

    Args:
      flow_fn: patches `(batch_size, 2, th, tw, 27)` float32 -> flow `(batch_size, th, tw, 2)` (for the
        head, `model_flow_fn(model, variables)`); called with a fixed batch (the last one is filled with
        copies of its last window), so a jitted `flow_fn` compiles once.
      frame1, frame2: the two frames, same shape, channels last; values in [0, 255] when `normalize`.
      train_size: `(th, tw)`, the window the network takes (the head's `config.train_size`).
      min_overlap: least overlap in pixels of neighbouring windows, in `[0, min(train_size))`.
      batch_size: windows per `flow_fn` call (at most the number of windows is used).
      normalize: map the frames from [0, 255] to [-1, 1] first (`normalize_frames`), as the colab.

    Returns:
      The blended flow, numpy float32 `(H, W, 2)`.
    """
    if not callable(flow_fn):
        raise TypeError(f"flow_fn must be callable (patches -> flow); got {type(flow_fn).__name__}.")
    frame1, frame2 = np.asarray(frame1), np.asarray(frame2)
    for name, frame in (("frame1", frame1), ("frame2", frame2)):
        if frame.ndim != 3:
            raise ValueError(f"{name} must have shape (height, width, 3); got shape {frame.shape}.")
        _check_frames(frame, name)
    if frame1.shape != frame2.shape:
        raise ValueError(
            f"frame1 and frame2 must have the same shape; got {frame1.shape} and {frame2.shape}."
        )
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    th, tw = _check_train_size(train_size)
    frames = np.stack([frame1, frame2])
    frames = normalize_frames(frames) if normalize else frames.astype(np.float32)

    height, width = frame1.shape[:2]
    pad_h, pad_w = max(th - height, 0), max(tw - width, 0)
    top, left = pad_h // 2, pad_w // 2
    frames = np.pad(frames, ((0, 0), (top, pad_h - top), (left, pad_w - left), (0, 0)), mode="edge")
    origins = tile_origins(frames.shape[1:3], (th, tw), min_overlap)

    weights = blend_weights((th, tw))[..., None]
    flow_sum = np.zeros(frames.shape[1:3] + (2,), np.float64)
    weight_sum = np.zeros(frames.shape[1:3] + (1,), np.float64)
    batch_size = min(int(batch_size), len(origins))
    for start in range(0, len(origins), batch_size):
        batch = origins[start : start + batch_size]
        tiles = [frames[:, y : y + th, x : x + tw] for y, x in batch]
        tiles += tiles[-1:] * (batch_size - len(batch))
        flows = np.asarray(flow_fn(extract_patches(np.stack(tiles))))
        if flows.shape != (batch_size, th, tw, 2):
            raise ValueError(
                f"flow_fn returned shape {flows.shape} for patches of shape {(batch_size, 2, th, tw, 27)}; "
                f"expected {(batch_size, th, tw, 2)}."
            )
        for (y, x), flow in zip(batch, flows):
            flow_sum[y : y + th, x : x + tw] += weights * flow
            weight_sum[y : y + th, x : x + tw] += weights
    flow = flow_sum / weight_sum
    return flow[top : top + height, left : left + width].astype(np.float32)


def model_flow_fn(
    model: Any, variables: Mapping[str, Any], flow_scale_factor: float = FLOW_SCALE_FACTOR
) -> Callable[[jax.Array], jax.Array]:
    """A jitted `flow_fn` for `compute_optical_flow` from an optical-flow head and its variables.

    `model.apply(variables, patches)` maps patches `(B, 2, th, tw, 27)` to the network output
    `(B, th, tw, 2)`; the returned function multiplies it by `flow_scale_factor` (pixels).
    """
    apply = jax.jit(lambda params, patches: model.apply(params, patches) * flow_scale_factor)
    return lambda patches: apply(variables, patches)


def predict_flow(
    model: Any,
    variables: Mapping[str, Any],
    frame1: np.ndarray,
    frame2: np.ndarray,
    min_overlap: int = 20,
    batch_size: int = 1,
    flow_scale_factor: float = FLOW_SCALE_FACTOR,
) -> np.ndarray:
    """Flow in pixels `(H, W, 2)` from uint8-range RGB frames `(H, W, 3)` of any size, with an optical-flow
    head (`model.config.train_size` windows); see `compute_optical_flow` for the arguments. Each call
    compiles the network anew: for many frame pairs, build `model_flow_fn` once and call
    `compute_optical_flow` with it."""
    return compute_optical_flow(
        model_flow_fn(model, variables, flow_scale_factor),
        frame1,
        frame2,
        train_size=model.config.train_size,
        min_overlap=min_overlap,
        batch_size=batch_size,
    )


def _color_wheel() -> np.ndarray:
    """The Middlebury colour wheel `(55, 3)` float64 RGB in [0, 255]: red -> yellow -> green -> cyan ->
    blue -> magenta -> (red), each segment ramping one channel by `floor(255 * i / n)`, i < n."""
    rows = []
    for n, channels in _WHEEL_SEGMENTS:
        ramp = np.floor(255 * np.arange(n) / n)
        values = {"full": np.full(n, 255.0), "zero": np.zeros(n), "up": ramp, "down": 255 - ramp}
        rows.append(np.stack([values[c] for c in channels], axis=-1))
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow `(H, W, 2)` -> uint8 RGB `(H, W, 3)` with the Middlebury colour wheel.

    Hue is the direction: +x (right) red, +y (down) orange-yellow, -x cyan-blue, -y blue-magenta.
    Saturation is the magnitude divided by `max_magnitude` (default: the largest magnitude in `flow`,
    plus 1e-5 as `flow_vis`): zero flow is white, the largest fully saturated; magnitudes beyond
    `max_magnitude` are darkened to 75%.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (height, width, 2); got shape {flow.shape}.")
    if not np.all(np.isfinite(flow)):
        raise ValueError("flow holds NaN or infinite values.")
    u, v = flow[..., 0], flow[..., 1]
    if max_magnitude is None:
        max_magnitude = float(np.max(np.hypot(u, v), initial=0.0))
    elif not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be positive; got {max_magnitude!r}.")
    u, v = u / (max_magnitude + 1e-5), v / (max_magnitude + 1e-5)
    radius = np.hypot(u, v)[..., None]
    wheel = _color_wheel() / 255.0
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % len(wheel)
    frac = (position - k0)[..., None]
    color = (1 - frac) * wheel[k0] + frac * wheel[k1]
    color = np.where(radius <= 1, 1 - radius * (1 - color), color * 0.75)
    return np.floor(255 * color).astype(np.uint8)


def save_flow_png(flow: np.ndarray, path: str | os.PathLike, max_magnitude: float | None = None) -> None:
    """Writes `flow_to_color(flow, max_magnitude)` `(H, W, 3)` to `path` as an RGB PNG (Pillow)."""
    Image.fromarray(flow_to_color(flow, max_magnitude)).save(path, format="PNG")
