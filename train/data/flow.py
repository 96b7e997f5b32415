"""Data for training the optical-flow head: file formats, dataset layouts, exact synthetic pairs,
augmentation, metrics.

Training recipe (DeepMind released no flow training code; sources and our reading of them)
-----------------------------------------------------------------------------------------
What the sources say:
- Data: AutoFlow (Sun et al., CVPR 2021, arXiv 2104.14544), "a synthetic dataset consisting of 400,000
  annotated image pairs"; frames at 368x496; the network sees, per pixel, the 3x3 patches of both frames
  (54 values) (HF model card `deepmind/optical-flow-perceiver`). Reported EPE 1.81 Sintel.clean, 2.42
  Sintel.final, 4.98 KITTI (paper, Table 4). Hyperparameters are in the paper's appendix (model card).
- Curriculum (F. Ding, deepmind-research issue #281): "the default curriculum for AutoFlow, which
  gradually increases the severity of augmentations over time, with an additional phase where we
  completely disable all augmentations"; in that phase "we feed each image pair twice in a batch, once
  forward and once reversed"; AutoFlow's supplement has the details; the optical-flow colab holds "the
  exact model that we used".
- AutoFlow's augmentation (google-research/opticalflow-autoflow, `src/dataset_lib/augmentations`, the
  "pwc" setting): random scale / rotation / squeeze / translation of the pair with small relative changes
  for frame 2 (a `schedule_coeff` scales them), a crop (320x448 there), horizontal flip with p = 0.5 (no
  vertical flip), FlowNet2's PCA colour augmentation of both frames, a colour / gamma / brightness /
  contrast jitter of frame 2 alone (std 0.02 * `schedule_coeff`), Gaussian noise of std ~ U(0, 0.06) on
  [0, 1] images, and flow targets divided by 20 (`FLOW_SCALE_FACTOR`, as the head's output).
- AutoFlow's data (paper, Fig. 2): a 2D layered scene; each layer is a random image cut by a random
  mask, moved by a random flow field and warped; the layers are alpha-composited back to front, then
  motion blur and fog are added; the renderer's hyperparameters (motion, shape, appearance) are learned
  so that a network trained on the data does well on a target set.

Our interpretation where they are silent (or could not be consulted here):
- Loss: mean end-point error over valid pixels (`flow_metric_sums`) of the head's output times 20 (in
  pixels; 20 times the EPE against flow / 20 targets); one scale, as the head has one output resolution.
- Crops must be the head's `train_size` (368x496 for the released weights: its position encodings are
  fixed to it); evaluation covers full frames with `perceiver_jax.flow.compute_optical_flow`'s tiling.
- Augmentation here is CPU-cheap: random crop, horizontal flip (u negated), photometric jitter shared by
  both frames plus a smaller one for frame 2 alone, and Gaussian noise, all scaled by a `strength` in
  [0, 1] so that a trainer can ramp it up (the curriculum) and switch it off (the final phase); no
  spatial scale/rotation augmentation and no reversed pairs (they need the backward flow).
- Optimizer, learning rate, batch size and number of steps: the trainer's config states its own.
- `SyntheticFlowSource` is a small AutoFlow-like generator (hard masks, affine motions, no blur or fog)
  for offline demos and tests, not a substitute for AutoFlow's 400k pairs.

Contents
--------
- Files: Middlebury `.flo` (`read_flo`, `write_flo`), KITTI 16-bit PNG flow (`read_kitti_flow`,
  `write_kitti_flow`; PNG coded here with zlib, as Pillow reads 16-bit RGB PNGs as 8-bit).
- Sources of records (`len(source)`, `source[i]`): `SintelSource`, `FlyingChairsSource`,
  `Kitti2015Source` give `FlowFiles` (paths); `SyntheticFlowSource` gives `FlowPair` (arrays).
- Transforms record -> example: `FlowTrainTransform(crop_size)(record, rng)`, `FlowEvalTransform()(record)`;
  examples are `{'frames': float32 (2, H, W, 3) in [-1, 1], 'flow': float32 (H, W, 2) pixels,
  'valid': float32 (H, W), 'weights': float32 ()}`.
- Metrics on numpy or jax arrays: `endpoint_error`, `flow_metric_sums` (sums and counts, to aggregate over
  batches), `summarize_flow_metrics`; and `save_flow_panel` (prediction | truth | error as one PNG).

Flow convention (`perceiver_jax.flow`): `flow[y, x] = (u, v)` pixels, u right, v down, frame1's pixel
`(x, y)` moves to `(x + u, y + v)` in frame2.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import struct
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from perceiver_jax.flow import flow_to_color, normalize_frames

Example = dict[str, np.ndarray]
PathLike = str | os.PathLike

# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowFiles:
    """A record of a file dataset: two frames (any format Pillow reads) and their flow (`.flo`, or a
    KITTI `.png`)."""

    frame1: str
    frame2: str
    flow: str


@dataclasses.dataclass(frozen=True, eq=False)
class FlowPair:
    """Two frames and the flow from the first to the second.

    frames: uint8 `(2, H, W, 3)`; flow: float32 `(H, W, 2)` pixels; valid: float32 `(H, W)`, 1 where the
    flow is known (0 at KITTI's unlabelled pixels and `.flo`'s "unknown" values; the flow there is 0).
    """

    frames: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


# ----------------------------------------------------------------------------------------------------
# Middlebury .flo
# ----------------------------------------------------------------------------------------------------

FLO_MAGIC = b"PIEH"  # the float32 202021.25, little-endian
FLO_MAX_SIDE = 99999  # Middlebury's flowIO.cpp rejects larger widths and heights as corrupt
FLO_UNKNOWN = 1e9  # |u| or |v| above this marks an unknown flow (Middlebury's UNKNOWN_FLOW_THRESH)
_FLO_HEADER = struct.Struct("<4sii")


def read_flo(path: PathLike) -> np.ndarray:
    """A Middlebury `.flo` file -> float32 `(H, W, 2)` (u, v).

    Layout (little-endian): the bytes "PIEH" (float32 202021.25), int32 width, int32 height, then
    `H * W * 2` float32: u and v interleaved, rows top to bottom. Raises ValueError for a wrong magic, a
    width or height outside [1, 99999], or a size that is not exactly `12 + 8 * W * H` bytes.
    """
    data = _read_bytes(path)
    if len(data) < _FLO_HEADER.size:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the 12-byte .flo header.")
    magic, width, height = _FLO_HEADER.unpack_from(data)
    if magic != FLO_MAGIC:
        raise ValueError(
            f"{path}: not a .flo file: starts with {magic!r}, expected {FLO_MAGIC!r} (202021.25)."
        )
    for name, side in (("width", width), ("height", height)):
        if not 1 <= side <= FLO_MAX_SIDE:
            raise ValueError(f"{path}: corrupt .flo header: {name} {side} is outside [1, {FLO_MAX_SIDE}].")
    expected = _FLO_HEADER.size + 8 * width * height
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else f"{len(data) - expected} trailing bytes"
        raise ValueError(
            f"{path}: corrupt .flo file ({problem}): {len(data)} bytes, expected {expected} for "
            f"{width}x{height} flow."
        )
    flow = np.frombuffer(data, "<f4", offset=_FLO_HEADER.size).reshape(height, width, 2)
    return flow.astype(np.float32)


def write_flo(path: PathLike, flow: np.ndarray) -> None:
    """Writes float `(H, W, 2)` flow as a Middlebury `.flo` file (layout in `read_flo`)."""
    flow = _check_flow(flow, "flow")
    height, width = flow.shape[:2]
    if height > FLO_MAX_SIDE or width > FLO_MAX_SIDE:
        raise ValueError(f"flow of {height}x{width} is larger than .flo's {FLO_MAX_SIDE} pixels a side.")
    with open(path, "wb") as f:
        f.write(_FLO_HEADER.pack(FLO_MAGIC, width, height) + flow.astype("<f4").tobytes())


def _flo_valid(flow: np.ndarray) -> np.ndarray:
    """float32 `(H, W)`: 1 where u and v are finite and at most `FLO_UNKNOWN` in magnitude."""
    known = np.all(np.isfinite(flow) & (np.abs(flow) <= FLO_UNKNOWN), axis=-1)
    return known.astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# 16-bit RGB PNG and KITTI flow
# ----------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, compression, filter, interlace
_RGB16_BYTES_PER_PIXEL = 6
KITTI_SCALE = 64.0  # stored value = flow * 64 + 2**15
KITTI_OFFSET = 2.0**15


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png_rgb16(samples: np.ndarray) -> bytes:
    """uint16 `(H, W, 3)` -> PNG bytes: IHDR (bit depth 16, colour type 2 = RGB, no interlace), one IDAT
    of zlib-compressed rows each led by filter byte 0 (none) and holding big-endian samples, IEND."""
    if samples.dtype != np.uint16 or samples.ndim != 3 or samples.shape[-1] != 3:
        raise ValueError(f"samples must be uint16 (height, width, 3); got {samples.dtype} {samples.shape}.")
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, width * _RGB16_BYTES_PER_PIXEL // 2).view(np.uint8)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)
    header = _IHDR.pack(width, height, 16, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes()))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunks(data: bytes, path: PathLike) -> list[tuple[bytes, bytes]]:
    """PNG bytes -> `[(type, data), ...]` up to IEND, CRCs checked."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file (no PNG signature).")
    chunks, offset = [], len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise ValueError(f"{path}: truncated PNG: no IEND chunk.")
        length, kind = struct.unpack_from(">I4s", data, offset)
        body = data[offset + 8 : offset + 8 + length]
        crc_at = offset + 8 + length
        if crc_at + 4 > len(data):
            raise ValueError(f"{path}: truncated PNG: chunk {kind!r} runs past the end of the file.")
        if struct.unpack_from(">I", data, crc_at)[0] != zlib.crc32(kind + body):
            raise ValueError(f"{path}: corrupt PNG: CRC mismatch in chunk {kind!r}.")
        chunks.append((kind, body))
        offset = crc_at + 4
        if kind == b"IEND":
            return chunks


def _paeth(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    """The PNG Paeth predictor: whichever of left, up, up-left is nearest `left + up - up_left`."""
    to_left, to_up, to_up_left = np.abs(up - up_left), np.abs(left - up_left), np.abs(left + up - 2 * up_left)
    return np.where(
        (to_left <= to_up) & (to_left <= to_up_left), left, np.where(to_up <= to_up_left, up, up_left)
    )


def _unfilter(scanlines: np.ndarray, bytes_per_pixel: int, path: PathLike) -> np.ndarray:
    """PNG scanlines uint8 `(H, 1 + W * bpp)` (filter byte, filtered bytes) -> raw bytes `(H, W, bpp)`.

    A byte depends on its left, up and up-left neighbours (PNG filters 1-4), so the rows are skewed
    (row y shifted right by y) and decoded one anti-diagonal at a time, each a vectorised step.
    """
    height = scanlines.shape[0]
    width = (scanlines.shape[1] - 1) // bytes_per_pixel
    filters = scanlines[:, 0]
    if filters.max(initial=0) > 4:
        raise ValueError(f"{path}: corrupt PNG: filter type {int(filters.max())} (PNG defines 0-4).")
    filtered = scanlines[:, 1:].reshape(height, width, bytes_per_pixel).astype(np.int32)
    if not filters.any():
        return filtered.astype(np.uint8)
    # Cell (x, y) lives at skewed[y + 1, x + y + 2]; row 0 and the cells left of each row stay 0, which is
    # what PNG prescribes for bytes before a row's start and above the first row.
    skewed = np.zeros((height + 1, width + height + 1, bytes_per_pixel), np.int32)
    skewed_filtered = np.zeros((height, width + height - 1, bytes_per_pixel), np.int32)
    for y in range(height):
        skewed_filtered[y, y : y + width] = filtered[y]
    for diagonal in range(width + height - 1):
        top, bottom = max(0, diagonal - width + 1), min(height - 1, diagonal)
        kind = filters[top : bottom + 1, None]
        left = skewed[top + 1 : bottom + 2, diagonal + 1]
        up = skewed[top : bottom + 1, diagonal + 1]
        up_left = skewed[top : bottom + 1, diagonal]
        prediction = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, up, (left + up) >> 1, _paeth(left, up, up_left)],
            default=0,
        )
        skewed[top + 1 : bottom + 2, diagonal + 2] = (
            skewed_filtered[top : bottom + 1, diagonal] + prediction
        ) & 255
    return np.stack([skewed[y + 1, y + 2 : y + 2 + width] for y in range(height)]).astype(np.uint8)


def decode_png_rgb16(data: bytes, path: PathLike = "<bytes>") -> np.ndarray:
    """PNG bytes of a 16-bit RGB, non-interlaced image (any PNG row filters) -> uint16 `(H, W, 3)`."""
    chunks = _png_chunks(data, path)
    if chunks[0][0] != b"IHDR" or len(chunks[0][1]) != _IHDR.size:
        raise ValueError(f"{path}: corrupt PNG: the first chunk is not a 13-byte IHDR.")
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack(chunks[0][1])
    if (depth, colour) != (16, 2) or interlace or compression or filtering:
        raise ValueError(
            f"{path}: expected a 16-bit RGB non-interlaced PNG (KITTI flow); got bit depth {depth}, colour "
            f"type {colour}, interlace {interlace}."
        )
    try:
        raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error as error:
        raise ValueError(f"{path}: corrupt PNG image data: {error}.") from None
    row_bytes = 1 + width * _RGB16_BYTES_PER_PIXEL
    if len(raw) != height * row_bytes:
        raise ValueError(
            f"{path}: corrupt PNG: {len(raw)} bytes of image data, expected {height * row_bytes} for "
            f"{width}x{height} 16-bit RGB."
        )
    scanlines = np.frombuffer(raw, np.uint8).reshape(height, row_bytes)
    samples = _unfilter(scanlines, _RGB16_BYTES_PER_PIXEL, path).reshape(height, width * 3 * 2)
    return samples.view(">u2").reshape(height, width, 3).astype(np.uint16)


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A KITTI flow PNG -> (flow float32 `(H, W, 2)` pixels, valid float32 `(H, W)`).

    Channels (uint16): u and v stored as `flow * 64 + 2**15`, then valid (> 0 where labelled). Unlabelled
    pixels get flow 0.
    """
    samples = decode_png_rgb16(_read_bytes(path), path)
    valid = samples[..., 2] > 0
    flow = (samples[..., :2].astype(np.float32) - np.float32(KITTI_OFFSET)) / np.float32(KITTI_SCALE)
    return np.where(valid[..., None], flow, 0).astype(np.float32), valid.astype(np.float32)


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray) -> None:
    """Writes flow `(H, W, 2)` and valid `(H, W)` (nonzero = labelled) as a KITTI flow PNG.

    Labelled pixels store `round(flow * 64 + 2**15)` and valid 1 (the devkit truncates instead of
    rounding; both decode alike), unlabelled pixels store 0 in all three channels, as the devkit does.
    Raises ValueError where labelled flow falls outside the encodable [-512, 512 - 1/64] pixels.
    """
    flow = _check_flow(flow, "flow")
    valid = np.asarray(valid)
    if valid.shape != flow.shape[:2]:
        raise ValueError(
            f"valid must have shape {flow.shape[:2]} (the flow's height, width); got {valid.shape}."
        )
    valid = valid != 0
    stored = np.rint(flow.astype(np.float64) * KITTI_SCALE + KITTI_OFFSET)
    if np.any(valid[..., None] & ((stored < 0) | (stored > 65535) | ~np.isfinite(stored))):
        raise ValueError(
            "flow at valid pixels must be finite and within [-512, 512 - 1/64] px for KITTI PNG."
        )
    samples = np.zeros(flow.shape[:2] + (3,), np.uint16)
    samples[valid, :2] = stored[valid]
    samples[valid, 2] = 1
    with open(path, "wb") as f:
        f.write(encode_png_rgb16(samples))


# ----------------------------------------------------------------------------------------------------
# Loading records
# ----------------------------------------------------------------------------------------------------


def _read_bytes(path: PathLike) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        return f.read()


def _check_flow(flow: np.ndarray, name: str) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2 or 0 in flow.shape:
        raise ValueError(
            f"{name} must have shape (height, width, 2) with height, width >= 1; got {flow.shape}."
        )
    if not np.issubdtype(flow.dtype, np.floating):
        raise TypeError(f"{name} must be a float array; got dtype {flow.dtype}.")
    return flow


def read_frame(path: PathLike) -> np.ndarray:
    """An image file (PNG, PPM, ...) -> uint8 RGB `(H, W, 3)`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such frame: {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_flow_files(record: FlowFiles) -> FlowPair:
    """Reads a `FlowFiles` record; raises ValueError if the frames and the flow differ in size."""
    frames = [read_frame(record.frame1), read_frame(record.frame2)]
    if record.flow.lower().endswith(".png"):
        flow, valid = read_kitti_flow(record.flow)
    else:
        flow = read_flo(record.flow)
        valid = _flo_valid(flow)
        flow = np.where(valid[..., None] > 0, flow, 0).astype(np.float32)
    sizes = {
        record.frame1: frames[0].shape[:2],
        record.frame2: frames[1].shape[:2],
        record.flow: flow.shape[:2],
    }
    if len(set(sizes.values())) != 1:
        raise ValueError(
            "frames and flow differ in size (height, width): "
            + ", ".join(f"{p}: {s}" for p, s in sizes.items())
        )
    return FlowPair(np.stack(frames), flow, valid)


def as_flow_pair(record: FlowFiles | FlowPair) -> FlowPair:
    """The `FlowPair` of a record: a `FlowFiles` is read from disk, a `FlowPair` returned as is."""
    if isinstance(record, FlowFiles):
        return load_flow_files(record)
    if isinstance(record, FlowPair):
        return record
    raise TypeError(f"a flow record must be FlowFiles or FlowPair; got {type(record).__name__}.")


# ----------------------------------------------------------------------------------------------------
# Dataset layouts
# ----------------------------------------------------------------------------------------------------


class FlowFileSource:
    """A random-access source of `FlowFiles` records: `len(source)`, `source[i]`."""

    def __init__(self, records: Sequence[FlowFiles], description: str):
        if not records:
            raise FileNotFoundError(f"no frame pairs with flow found: {description}.")
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> FlowFiles:
        return self.records[index]


def _check_root(root: PathLike, dataset: str, expected: str) -> str:
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset} root {root} is not a folder; it should hold {expected}.")
    return root


def _require_files(records: list[FlowFiles], dataset: str) -> list[FlowFiles]:
    missing = [p for r in records for p in (r.frame1, r.frame2, r.flow) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{dataset}: {len(missing)} files of listed pairs are missing: {shown}.")
    return records


class SintelSource(FlowFileSource):
    """MPI-Sintel training pairs: `training/<pass>/<scene>/frame_%04d.png` (pass 'clean' or 'final')
    frames i and i + 1 with flow `training/flow/<scene>/frame_%04d.flo` of frame i, scenes sorted."""

    def __init__(self, root: PathLike, render_pass: str = "clean"):
        if render_pass not in ("clean", "final"):
            raise ValueError(f"Sintel render_pass must be 'clean' or 'final'; got {render_pass!r}.")
        root = _check_root(root, "Sintel", "training/{clean,final}/<scene>/ and training/flow/<scene>/")
        records = []
        for flow in sorted(glob.glob(os.path.join(root, "training", "flow", "*", "frame_*.flo"))):
            scene, name = os.path.basename(os.path.dirname(flow)), os.path.basename(flow)
            match = re.fullmatch(r"frame_(\d+)\.flo", name)
            if match is None:
                raise ValueError(f"Sintel: flow file {flow} is not named frame_<number>.flo.")
            index = int(match.group(1))
            frames = os.path.join(root, "training", render_pass, scene)
            records.append(
                FlowFiles(
                    os.path.join(frames, f"frame_{index:04d}.png"),
                    os.path.join(frames, f"frame_{index + 1:04d}.png"),
                    flow,
                )
            )
        super().__init__(_require_files(records, "Sintel"), f"Sintel: no {root}/training/flow/*/frame_*.flo")


FLYING_CHAIRS_SPLIT_FILE = "FlyingChairs_train_val.txt"
FLYING_CHAIRS_SPLITS = {"train": 1, "val": 2}


class FlyingChairsSource(FlowFileSource):
    """FlyingChairs pairs `data/%05d_img1.ppm`, `%05d_img2.ppm`, flow `%05d_flow.flo`, sorted by number.

    split 'all' keeps every pair; 'train' / 'val' keep the pairs marked 1 / 2 on their line (line i for
    the i-th pair) of `FlyingChairs_train_val.txt` in `root`.
    """

    def __init__(self, root: PathLike, split: str = "all"):
        if split not in ("all", *FLYING_CHAIRS_SPLITS):
            raise ValueError(f"FlyingChairs split must be 'all', 'train' or 'val'; got {split!r}.")
        root = _check_root(root, "FlyingChairs", "data/%05d_img1.ppm, %05d_img2.ppm, %05d_flow.flo")
        records = [
            FlowFiles(img1, img1[: -len("img1.ppm")] + "img2.ppm", img1[: -len("img1.ppm")] + "flow.flo")
            for img1 in sorted(glob.glob(os.path.join(root, "data", "*_img1.ppm")))
        ]
        _require_files(records, "FlyingChairs")
        if split != "all" and records:
            labels = _read_split_file(os.path.join(root, FLYING_CHAIRS_SPLIT_FILE), len(records))
            records = [r for r, label in zip(records, labels) if label == FLYING_CHAIRS_SPLITS[split]]
        super().__init__(records, f"FlyingChairs split {split!r}: no {root}/data/*_img1.ppm in it")


def _read_split_file(path: str, num_pairs: int) -> list[int]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FlyingChairs split file {path} is missing; use split='all' or add it.")
    with open(path) as f:
        labels = f.read().split()
    if len(labels) != num_pairs or any(label not in ("1", "2") for label in labels):
        raise ValueError(
            f"{path} must hold one label, 1 (train) or 2 (val), per pair: {num_pairs} labels; got "
            f"{len(labels)} tokens, values {sorted(set(labels))[:5]}."
        )
    return [int(label) for label in labels]


class Kitti2015Source(FlowFileSource):
    """KITTI 2015 training pairs `training/image_2/%06d_10.png`, `%06d_11.png` with flow
    `training/flow_occ/%06d_10.png` (sparse: `valid` marks the labelled pixels)."""

    def __init__(self, root: PathLike):
        root = _check_root(root, "KITTI 2015", "training/image_2/ and training/flow_occ/")
        images = os.path.join(root, "training", "image_2")
        records = []
        for flow in sorted(glob.glob(os.path.join(root, "training", "flow_occ", "*_10.png"))):
            stem = os.path.basename(flow)[: -len("_10.png")]
            records.append(
                FlowFiles(
                    os.path.join(images, f"{stem}_10.png"), os.path.join(images, f"{stem}_11.png"), flow
                )
            )
        super().__init__(
            _require_files(records, "KITTI 2015"), f"KITTI 2015: no {root}/training/flow_occ/*_10.png"
        )


# ----------------------------------------------------------------------------------------------------
# Synthetic pairs with exact flow (AutoFlow-like layers)
# ----------------------------------------------------------------------------------------------------

# Real images bundled with scikit-image (no download); grey ones are used as grey RGB.
TEXTURE_IMAGES = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
    "brick", "grass", "gravel",
)  # fmt: skip


STAR_VERTICES = 8  # radii of a foreground layer's shape


@functools.lru_cache(maxsize=1)
def texture_images() -> tuple[np.ndarray, ...]:
    """The `TEXTURE_IMAGES` as float32 RGB `(h, w, 3)` in [0, 255] (loaded once per process)."""
    import skimage.data

    images = [np.asarray(getattr(skimage.data, name)(), np.float32) for name in TEXTURE_IMAGES]
    return tuple(np.repeat(im[..., None], 3, axis=-1) if im.ndim == 2 else im[..., :3] for im in images)


@dataclasses.dataclass(frozen=True, eq=False)
class Affine:
    """The map `p -> matrix @ p + offset` of points `p = (x, y)`."""

    matrix: np.ndarray  # (2, 2)
    offset: np.ndarray  # (2,)

    @staticmethod
    def similarity(center: np.ndarray, angle: float, scale: float, translation: np.ndarray) -> Affine:
        """Rotation by `angle` (radians, x towards y) and scaling about `center`, then `translation`."""
        cos, sin = np.cos(angle), np.sin(angle)
        matrix = scale * np.array([[cos, -sin], [sin, cos]])
        center = np.asarray(center, np.float64)
        return Affine(matrix, center - matrix @ center + np.asarray(translation, np.float64))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Points `(..., 2)` -> their images `(..., 2)`, float64."""
        return points @ self.matrix.T + self.offset

    def inverse(self) -> Affine:
        matrix = np.linalg.inv(self.matrix)
        return Affine(matrix, -matrix @ self.offset)


@dataclasses.dataclass(frozen=True, eq=False)
class StarShape:
    """The region `|p - center| <= r(angle of p - center)`, `r` interpolated linearly between `radii`
    at equally spaced angles (a random star-shaped polygon in polar coordinates)."""

    center: np.ndarray  # (2,)
    radii: np.ndarray  # (n,)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Points `(..., 2)` -> bool `(...)`."""
        d = points - self.center
        n = len(self.radii)
        position = (np.arctan2(d[..., 1], d[..., 0]) + np.pi) / (2 * np.pi) * n
        k = np.floor(position).astype(np.int64) % n
        frac = position - np.floor(position)
        boundary = (1 - frac) * self.radii[k] + frac * self.radii[(k + 1) % n]
        return np.hypot(d[..., 0], d[..., 1]) <= boundary


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A scene layer: colour `texture[to_texture(p)]` (bilinear, mirrored at the borders) at frame-1
    point `p` inside `shape` (everywhere if None: the background), moved to `motion(p)` in frame 2."""

    texture: np.ndarray  # float32 (h, w, 3) in [0, 255]
    to_texture: Affine
    motion: Affine
    shape: StarShape | None


def _mirror(coordinate: np.ndarray, size: int) -> np.ndarray:
    """Coordinates reflected into [0, size - 1] (symmetric about the first and last pixel)."""
    if size == 1:
        return np.zeros_like(coordinate)
    period = 2 * (size - 1)
    c = np.mod(coordinate, period)
    return np.where(c > size - 1, period - c, c)


def sample_bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`image` `(h, w, c)` at points `(..., 2)` (x, y), bilinear, mirrored at the borders -> `(..., c)`."""
    h, w = image.shape[:2]
    x, y = _mirror(points[..., 0], w), _mirror(points[..., 1], h)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
    return (1 - fy) * top + fy * bottom


def _top_layers(layers: Sequence[Layer], frame_points: Sequence[np.ndarray]) -> np.ndarray:
    """int `(H, W)`: the index of the topmost layer whose shape holds `frame_points[l]` (layer l's own
    coordinates of each pixel); 0, the background, where none does."""
    top = np.zeros(frame_points[0].shape[:-1], np.int64)
    for index, (layer, points) in enumerate(zip(layers, frame_points)):
        if layer.shape is not None:
            top[layer.shape.contains(points)] = index
    return top


def _composite(layers: Sequence[Layer], frame_points: Sequence[np.ndarray], top: np.ndarray) -> np.ndarray:
    """float64 `(H, W, 3)` in [0, 255]: each pixel coloured by its top layer's texture at its point."""
    image = np.zeros(top.shape + (3,), np.float64)
    for index, (layer, points) in enumerate(zip(layers, frame_points)):
        mask = top == index
        image[mask] = sample_bilinear(layer.texture, layer.to_texture(points[mask]))
    return image


def render_layers(
    layers: Sequence[Layer], size: tuple[int, int], contrast: float = 1.0
) -> tuple[FlowPair, np.ndarray]:
    """Renders back-to-front `layers` (the first a background, `shape` None) at `size` `(H, W)`, both
    frames' deviations from frame 1's mean colour multiplied by `contrast` (then clipped to [0, 255]; the
    same map on both frames, so the flow stays exact).

    Frame 1 shows at pixel p the top layer l holding p; frame 2 shows at pixel q the top layer holding
    `motion_l^-1(q)`. The flow at p is `motion_l(p) - p` for frame 1's top layer l: exact by construction.

    Returns (the pair, all pixels valid; visible float32 `(H, W)`: 1 where frame 1's pixel lands inside
    frame 2 and no layer above its own covers it there).
    """
    if not layers or layers[0].shape is not None or any(layer.shape is None for layer in layers[1:]):
        raise ValueError("layers must be a background (shape None) followed by shaped foreground layers.")
    height, width = size
    y, x = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    grid = np.stack([x, y], axis=-1)

    top1 = _top_layers(layers, [grid] * len(layers))
    frame1 = _composite(layers, [grid] * len(layers), top1)
    flow = np.zeros((height, width, 2), np.float64)
    for index, layer in enumerate(layers):
        mask = top1 == index
        flow[mask] = layer.motion(grid[mask]) - grid[mask]

    sources = [layer.motion.inverse()(grid) for layer in layers]  # frame-2 pixels in layer coordinates
    frame2 = _composite(layers, sources, _top_layers(layers, sources))

    landing = grid + flow
    inside = (landing[..., 0] >= 0) & (landing[..., 0] <= width - 1)
    inside &= (landing[..., 1] >= 0) & (landing[..., 1] <= height - 1)
    covered = np.zeros((height, width), bool)
    for index, layer in enumerate(layers[1:], start=1):
        covered |= (top1 < index) & layer.shape.contains(layer.motion.inverse()(landing))
    frames = np.stack([frame1, frame2]) * contrast + frame1.mean(axis=(0, 1)) * (1 - contrast)  # exact at 1
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    pair = FlowPair(frames, flow.astype(np.float32), np.ones((height, width), np.float32))
    return pair, (inside & ~covered).astype(np.float32)


def _random_motion(
    rng: np.random.Generator,
    center: np.ndarray,
    max_translation: float,
    max_rotation: float,
    max_scale: float,
) -> Affine:
    return Affine.similarity(
        center,
        rng.uniform(-max_rotation, max_rotation),
        np.exp(rng.uniform(-max_scale, max_scale)),
        rng.uniform(-max_translation, max_translation, 2),
    )


def _random_texture_map(
    rng: np.random.Generator, texture: np.ndarray, frame_center: np.ndarray, scale: tuple[float, float]
) -> Affine:
    """Frame points -> texture pixels: a random rotation, `U(*scale)` texture pixels per frame pixel, the
    frame centre sent to a random texture point."""
    h, w = texture.shape[:2]
    target = rng.uniform([0, 0], [w - 1, h - 1])
    return Affine.similarity(
        frame_center, rng.uniform(-np.pi, np.pi), rng.uniform(*scale), target - frame_center
    )


def sample_layers(
    rng: np.random.Generator,
    size: tuple[int, int],
    max_foreground: int,
    max_translation: float,
    max_rotation: float,
    max_scale_change: float,
    texture_scale: tuple[float, float] = (0.5, 1.0),
) -> list[Layer]:
    """A random scene: a background and 1 to `max_foreground` (none if 0) star-shaped foreground layers
    (`STAR_VERTICES` radii, each 0.5-1.5 times a mean of 0.1-0.35 times the frame's shorter side). Each
    layer has a random `texture_images()` texture and a random similarity motion about its centre:
    translation in `[-max_translation, max_translation]` px per axis, rotation in
    `[-max_rotation, max_rotation]` rad, scale `exp(U(-max_scale_change, max_scale_change))`. Textures are
    sampled at `U(*texture_scale)` texture pixels per frame pixel (below 0.5: magnified, smoother frames)."""
    height, width = size
    images = texture_images()
    frame_center = np.array([(width - 1) / 2, (height - 1) / 2])
    motion = (max_translation, max_rotation, max_scale_change)

    def textured(center: np.ndarray, shape: StarShape | None) -> Layer:
        texture = images[rng.integers(len(images))]
        return Layer(
            texture,
            _random_texture_map(rng, texture, frame_center, texture_scale),
            _random_motion(rng, center, *motion),
            shape,
        )

    layers = [textured(frame_center, None)]
    for _ in range(rng.integers(1, max_foreground, endpoint=True) if max_foreground else 0):
        center = rng.uniform([0, 0], [width - 1, height - 1])
        radius = rng.uniform(0.1, 0.35) * min(height, width)
        layers.append(textured(center, StarShape(center, radius * rng.uniform(0.5, 1.5, STAR_VERTICES))))
    return layers


class SyntheticFlowSource:
    """`length` synthetic pairs of frames `size` `(H, W)` with exact flow (all pixels valid), AutoFlow-style
    (`sample_layers`, `render_layers`) from real images bundled with scikit-image, at a contrast drawn
    from `U(*contrast)` (magnified photographs are smooth: 2-4 gives a small model gradients to learn
    from). Pair i depends only on `(seed, i)`. `source[i]` is a `FlowPair`; `source.render(i)` also gives
    its visibility map."""

    def __init__(
        self,
        size: tuple[int, int],
        length: int,
        seed: int = 0,
        max_foreground: int = 3,
        max_translation: float = 10.0,
        max_rotation: float = 0.1,
        max_scale_change: float = 0.1,
        texture_scale: tuple[float, float] = (0.5, 1.0),
        contrast: tuple[float, float] = (1.0, 1.0),
    ):
        if len(size) != 2 or any(not isinstance(n, (int, np.integer)) or n < 1 for n in size):
            raise ValueError(f"size must be (height, width), positive integers; got {size!r}.")
        if length < 1 or seed < 0 or max_foreground < 0:
            raise ValueError(
                f"length must be >= 1, seed and max_foreground >= 0; got {length}, {seed}, {max_foreground}."
            )
        if min(max_translation, max_rotation, max_scale_change) < 0:
            raise ValueError("max_translation, max_rotation and max_scale_change must be >= 0.")
        if not 0 < texture_scale[0] <= texture_scale[1]:
            raise ValueError(
                f"texture_scale must be (low, high) with 0 < low <= high; got {texture_scale!r}."
            )
        if len(contrast) != 2 or not 0 < contrast[0] <= contrast[1]:
            raise ValueError(f"contrast must be (low, high) with 0 < low <= high; got {contrast!r}.")
        self.texture_scale = (float(texture_scale[0]), float(texture_scale[1]))
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.size = (int(size[0]), int(size[1]))
        self.length, self.seed, self.max_foreground = int(length), int(seed), int(max_foreground)
        self.max_translation, self.max_rotation = float(max_translation), float(max_rotation)
        self.max_scale_change = float(max_scale_change)

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> tuple[FlowPair, np.ndarray]:
        """Pair `index` and its visibility float32 `(H, W)` (see `render_layers`)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic pairs.")
        rng = np.random.default_rng([self.seed, int(index)])
        layers = sample_layers(
            rng,
            self.size,
            self.max_foreground,
            self.max_translation,
            self.max_rotation,
            self.max_scale_change,
            self.texture_scale,
        )
        return render_layers(layers, self.size, rng.uniform(*self.contrast))

    def __getitem__(self, index: int) -> FlowPair:
        return self.render(index)[0]


# ----------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------


def _check_crop_size(crop_size: Sequence[int]) -> tuple[int, int]:
    crop_size = tuple(crop_size)
    if len(crop_size) != 2 or any(not isinstance(n, (int, np.integer)) or n < 1 for n in crop_size):
        raise ValueError(f"crop_size must be (height, width), positive integers; got {crop_size!r}.")
    return int(crop_size[0]), int(crop_size[1])


def _crop_origin_range(pair: FlowPair, crop_size: tuple[int, int], record: Any) -> tuple[int, int]:
    """`(H - ch, W - cw)`; ValueError naming the record if the frames are smaller than the crop."""
    height, width = pair.flow.shape[:2]
    if height < crop_size[0] or width < crop_size[1]:
        where = record.frame1 if isinstance(record, FlowFiles) else "a synthetic pair"
        raise ValueError(
            f"frames of {height}x{width} ({where}) are smaller than crop_size {crop_size}: use a smaller "
            "crop_size or larger frames."
        )
    return height - crop_size[0], width - crop_size[1]


def _crop(pair: FlowPair, top: int, left: int, crop_size: tuple[int, int]) -> FlowPair:
    rows, cols = slice(top, top + crop_size[0]), slice(left, left + crop_size[1])
    return FlowPair(pair.frames[:, rows, cols], pair.flow[rows, cols], pair.valid[rows, cols])


def _hflip(pair: FlowPair) -> FlowPair:
    """Mirror left-right: pixels move mirrored, so u changes sign."""
    flow = pair.flow[:, ::-1] * np.float32([-1, 1])
    return FlowPair(pair.frames[:, :, ::-1], flow, pair.valid[:, ::-1])


def photometric_jitter(frames: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Colour augmentation of a pair float32 `(2, H, W, 3)` in [0, 1] -> the same, clipped to [0, 1].

    Per frame: channel gains, then gamma, then contrast about 0.5 and brightness shift, then Gaussian
    noise. Gains, gamma, contrast and brightness are shared by both frames (log-gains U(+-0.2), log-gamma
    U(+-0.2), log-contrast U(+-0.3), brightness U(+-0.1)) with frame 2 changed a little more (normal, std
    0.02, as AutoFlow's frame-2 jitter); noise std U(0, 0.06) (AutoFlow). `strength` scales every range;
    0 leaves the frames unchanged.
    """
    s = float(strength)
    ranges = np.array([0.2, 0.2, 0.2, 0.2, 0.3, 0.1])  # log-gains (3), log-gamma, log-contrast, brightness
    shared = rng.uniform(-ranges, ranges) * s
    params = shared + np.outer([0.0, 1.0], rng.normal(0.0, 0.02 * s, 6))  # (2, 6): frame 1, frame 2
    gains, gamma, contrast = np.exp(params[:, :3]), np.exp(params[:, 3]), np.exp(params[:, 4])
    brightness = params[:, 5]
    noise = rng.standard_normal(frames.shape, np.float32) * np.float32(rng.uniform(0.0, 0.06 * s))
    per_frame = (slice(None), None, None, None)  # (2,) -> (2, 1, 1, 1), broadcast over (2, H, W, 3)
    x = np.clip(frames * gains[:, None, None, :], 0.0, 1.0) ** gamma[per_frame]
    x = 0.5 + (x - 0.5) * contrast[per_frame] + brightness[per_frame]
    return np.clip(x + noise, 0.0, 1.0).astype(np.float32)


def _example(frames: np.ndarray, pair: FlowPair) -> Example:
    """frames float in [0, 255] `(2, H, W, 3)` -> the example dict (frames in [-1, 1])."""
    return {
        "frames": normalize_frames(np.ascontiguousarray(frames)),
        "flow": np.ascontiguousarray(pair.flow, np.float32),
        "valid": np.ascontiguousarray(pair.valid, np.float32),
        "weights": np.float32(1.0),
    }


class FlowTrainTransform:
    """record -> a training example: a random `crop_size` `(H, W)` crop, a horizontal flip with
    probability `flip_prob` (u negated), `photometric_jitter` at `strength` (0 = none, 1 = full). A
    curriculum raises `strength` over phases; the final augmentation-free phase uses strength 0 and
    flip_prob 0 (crops only). All randomness comes from `rng`."""

    def __init__(self, crop_size: Sequence[int], flip_prob: float = 0.5, strength: float = 1.0):
        self.crop_size = _check_crop_size(crop_size)
        if not 0 <= flip_prob <= 1 or strength < 0:
            raise ValueError(f"flip_prob must be in [0, 1] and strength >= 0; got {flip_prob}, {strength}.")
        self.flip_prob, self.strength = float(flip_prob), float(strength)

    def __call__(self, record: FlowFiles | FlowPair, rng: np.random.Generator) -> Example:
        pair = as_flow_pair(record)
        max_top, max_left = _crop_origin_range(pair, self.crop_size, record)
        pair = _crop(pair, int(rng.integers(max_top + 1)), int(rng.integers(max_left + 1)), self.crop_size)
        if rng.random() < self.flip_prob:
            pair = _hflip(pair)
        frames = photometric_jitter(pair.frames.astype(np.float32) / 255, rng, self.strength) * 255
        return _example(frames, pair)


class FlowEvalTransform:
    """record -> an evaluation example: the full frames, or their centred `crop_size` crop (so that
    examples of differently sized frames, e.g. KITTI's, stack into batches); no augmentation."""

    def __init__(self, crop_size: Sequence[int] | None = None):
        self.crop_size = None if crop_size is None else _check_crop_size(crop_size)

    def __call__(self, record: FlowFiles | FlowPair, rng: np.random.Generator | None = None) -> Example:
        del rng  # deterministic
        pair = as_flow_pair(record)
        if self.crop_size is not None:
            max_top, max_left = _crop_origin_range(pair, self.crop_size, record)
            pair = _crop(pair, max_top // 2, max_left // 2, self.crop_size)
        return _example(pair.frames.astype(np.float32), pair)


# ----------------------------------------------------------------------------------------------------
# Metrics and visualisation
# ----------------------------------------------------------------------------------------------------

OUTLIER_THRESHOLDS = (1, 3, 5)  # pixels


def _xp(*arrays: Any) -> Any:
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def endpoint_error(prediction: Any, truth: Any) -> Any:
    """End-point error `|prediction - truth|` per pixel: flows `(..., H, W, 2)` -> `(..., H, W)` (numpy or
    jax, matching the inputs)."""
    xp = _xp(prediction, truth)
    if prediction.shape != truth.shape or prediction.shape[-1:] != (2,):
        raise ValueError(
            "prediction and truth must be flows of one shape (..., height, width, 2); got "
            f"{prediction.shape} and {truth.shape}."
        )
    return xp.sqrt(xp.sum(xp.square(prediction - truth), axis=-1))


def flow_metric_sums(prediction: Any, truth: Any, valid: Any = None) -> dict[str, Any]:
    """Sums over pixels, weighted by `valid` `(..., H, W)` (default all 1; for padded batches pass
    `valid * weights[:, None, None]`): `epe` (sum of EPE), `outliers_{1,3,5}px` (pixels with EPE above
    1, 3, 5 px) and `count` (sum of `valid`). Divide by `count` (`summarize_flow_metrics`) after summing
    across batches. Scalars, numpy or jax matching the inputs; works under `jit`."""
    xp = _xp(prediction, truth, valid)
    epe = endpoint_error(prediction, truth)
    valid = xp.ones_like(epe) if valid is None else valid
    if valid.shape != epe.shape:
        raise ValueError(
            f"valid must have shape {epe.shape} (the flow's without its last axis); got {valid.shape}."
        )
    valid = valid.astype(epe.dtype)
    sums = {"epe": xp.sum(epe * valid), "count": xp.sum(valid)}
    for threshold in OUTLIER_THRESHOLDS:
        sums[f"outliers_{threshold}px"] = xp.sum(xp.where(epe > threshold, valid, 0))
    return sums


def summarize_flow_metrics(sums: dict[str, Any]) -> dict[str, float]:
    """`flow_metric_sums` (possibly added across batches) -> mean `epe` and outlier rates
    `outliers_{1,3,5}px` over the valid pixels, floats."""
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("no valid pixels: the metric sums have count 0.")
    return {name: float(value) / count for name, value in sums.items() if name != "count"}


PANEL_GAP = 4  # white pixels between panels


def save_flow_panel(
    path: PathLike, prediction: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
) -> None:
    """Writes one RGB PNG: prediction | truth | end-point error, flows `(H, W, 2)`.

    Both flows are coloured by `flow_to_color` with one maximum magnitude (the larger of the prediction's
    and the valid truth's); the error is grey, white at the largest valid error; pixels with `valid` 0
    (`(H, W)`, default all valid) are black in the truth and error panels.
    """
    prediction, truth = np.asarray(prediction, np.float64), np.asarray(truth, np.float64)
    epe = endpoint_error(prediction, truth)
    known = np.ones(epe.shape, bool) if valid is None else np.asarray(valid) > 0
    if known.shape != epe.shape:
        raise ValueError(f"valid must have shape {epe.shape}; got {known.shape}.")
    magnitude = max(
        float(np.max(np.hypot(*np.moveaxis(prediction, -1, 0)), initial=0)),
        float(np.max(np.hypot(*np.moveaxis(truth, -1, 0))[known], initial=0)),
        1e-6,
    )
    max_error = max(float(np.max(epe[known], initial=0)), 1e-6)
    error = np.repeat(np.rint(np.clip(epe / max_error, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    truth_color = flow_to_color(truth, magnitude)
    truth_color[~known], error[~known] = 0, 0
    gap = np.full((epe.shape[0], PANEL_GAP, 3), 255, np.uint8)
    panel = np.concatenate([flow_to_color(prediction, magnitude), gap, truth_color, gap, error], axis=1)
    Image.fromarray(panel).save(path, format="PNG")
