"""Tests of `train.data.flow`: file formats byte by byte, dataset layouts, exact synthetic flow, transforms,
metrics and the flow panel."""

import os
import pickle
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from perceiver_jax.flow import flow_to_color, normalize_frames
from train.data.flow import (
    PANEL_GAP,
    Affine,
    FlowEvalTransform,
    FlowFiles,
    FlowPair,
    FlowTrainTransform,
    FlyingChairsSource,
    Kitti2015Source,
    Layer,
    SintelSource,
    SyntheticFlowSource,
    decode_png_rgb16,
    endpoint_error,
    flow_metric_sums,
    load_flow_files,
    read_flo,
    read_kitti_flow,
    render_layers,
    sample_bilinear,
    save_flow_panel,
    summarize_flow_metrics,
    write_flo,
    write_kitti_flow,
)

H, W = 6, 8  # frame size of the hand-made dataset trees


def random_frame(rng: np.random.Generator, height: int = H, width: int = W) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_flow(rng: np.random.Generator, height: int = H, width: int = W) -> np.ndarray:
    """Flow on KITTI's 1/64 px grid, so that every format stores it exactly."""
    return (rng.integers(-640, 640, (height, width, 2)) / 64).astype(np.float32)


def save_image(path: str, frame: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(frame).save(path)


def reference_flo_bytes(flow: np.ndarray) -> bytes:
    """The Middlebury layout written field by field: 'PIEH', width, height, then u, v per pixel row-major."""
    height, width = flow.shape[:2]
    values = [float(flow[y, x, c]) for y in range(height) for x in range(width) for c in range(2)]
    return b"PIEH" + struct.pack("<ii", width, height) + struct.pack(f"<{len(values)}f", *values)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Independent PNG chunk parser: `[(type, data)]`, asserting every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def png_with_filters(samples: np.ndarray, filters: list[int]) -> bytes:
    """A 16-bit RGB PNG whose row y uses filter `filters[y]`, encoded byte by byte from the PNG spec:
    Filt(x) = Orig(x) - Pred(a = left, b = up, c = up-left), 6 bytes per pixel, zeros outside the image."""
    height, width = samples.shape[:2]
    rows = [list(samples[y].astype(">u2").tobytes()) for y in range(height)]
    bpp, stream = 6, bytearray()
    for y, kind in enumerate(filters):
        stream.append(kind)
        for i, orig in enumerate(rows[y]):
            a = rows[y][i - bpp] if i >= bpp else 0
            b = rows[y - 1][i] if y > 0 else 0
            c = rows[y - 1][i - bpp] if y > 0 and i >= bpp else 0
            p = a + b - c
            paeth = (
                a
                if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c)
                else b
                if abs(p - b) <= abs(p - c)
                else c
            )
            pred = [0, a, b, (a + b) // 2, paeth][kind]
            stream.append((orig - pred) % 256)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(stream)))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------- .flo


def test_flo_bytes_follow_the_middlebury_layout_and_round_trip(tmp_path):
    flow = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) * np.float32(1.5) - 4
    path = tmp_path / "a.flo"
    write_flo(path, flow)
    data = path.read_bytes()
    assert data[:4] == b"PIEH" and struct.unpack("<f", data[:4])[0] == 202021.25
    assert struct.unpack("<ii", data[4:12]) == (3, 2)  # width, then height
    assert data == reference_flo_bytes(flow)
    np.testing.assert_array_equal(read_flo(path), flow)

    other = tmp_path / "b.flo"  # a file written by the independent writer reads back too
    flow = random_flow(np.random.default_rng(0), 5, 7)
    other.write_bytes(reference_flo_bytes(flow))
    out = read_flo(other)
    assert out.dtype == np.float32 and out.shape == (5, 7, 2)
    np.testing.assert_array_equal(out, flow)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"PIEX" + d[4:], "not a .flo file"),
        (lambda d: d[:-4], "truncated"),
        (lambda d: d + b"\0" * 8, "8 trailing bytes"),
        (lambda d: d[:4] + struct.pack("<ii", 0, 2) + d[12:], "width 0"),
        (lambda d: d[:4] + struct.pack("<ii", 3, 10**6) + d[12:], "height 1000000"),
        (lambda d: d[:10], "shorter than the 12-byte"),
    ],
)
def test_corrupt_flo_files_raise_clear_errors(tmp_path, mutate, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(mutate(reference_flo_bytes(np.zeros((2, 3, 2), np.float32))))
    with pytest.raises(ValueError, match=message) as error:
        read_flo(path)
    assert "bad.flo" in str(error.value)


def test_flo_rejects_missing_files_and_bad_flow(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        read_flo(tmp_path / "missing.flo")
    with pytest.raises(ValueError, match="height, width, 2"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="float"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 2), np.int32))


# ---------------------------------------------------------------------------------------------- KITTI


def test_kitti_png_bytes_hold_big_endian_16_bit_rgb_samples(tmp_path):
    rng = np.random.default_rng(1)
    flow = random_flow(rng, 3, 5)
    valid = rng.random((3, 5)) > 0.3
    path = tmp_path / "flow.png"
    write_kitti_flow(path, flow, valid)

    chunks = png_chunks(path.read_bytes())
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (5, 3, 16, 2, 0, 0, 0)  # w, h, depth 16, RGB
    rows = zlib.decompress(chunks[1][1])
    assert len(rows) == 3 * (1 + 5 * 6)
    for y in range(3):
        row = rows[y * 31 : (y + 1) * 31]
        assert row[0] == 0  # filter type none
        samples = struct.unpack(">15H", row[1:])
        for x in range(5):
            if valid[y, x]:
                expected = (int(flow[y, x, 0] * 64 + 32768), int(flow[y, x, 1] * 64 + 32768), 1)
            else:
                expected = (0, 0, 0)
            assert samples[3 * x : 3 * x + 3] == expected

    out_flow, out_valid = read_kitti_flow(path)
    assert out_flow.dtype == np.float32 and out_valid.dtype == np.float32
    np.testing.assert_array_equal(out_valid, valid.astype(np.float32))
    np.testing.assert_array_equal(out_flow, np.where(valid[..., None], flow, 0))


def test_kitti_reader_undoes_every_png_row_filter():
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 65536, (7, 4, 3)).astype(np.uint16)
    png = png_with_filters(samples, [0, 1, 2, 3, 4, 4, 3])
    np.testing.assert_array_equal(decode_png_rgb16(png), samples)


def test_kitti_rejects_bad_pngs_and_unencodable_flow(tmp_path):
    eight_bit = tmp_path / "rgb8.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(eight_bit)
    with pytest.raises(ValueError, match="bit depth 8"):
        read_kitti_flow(eight_bit)
    good = tmp_path / "good.png"
    write_kitti_flow(good, np.zeros((4, 4, 2), np.float32), np.ones((4, 4)))
    data = bytearray(good.read_bytes())
    data[-20] ^= 0xFF  # a byte of the IDAT chunk's data
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        read_kitti_flow(corrupt)
    with pytest.raises(ValueError, match="512"):
        write_kitti_flow(tmp_path / "far.png", np.full((2, 2, 2), 600, np.float32), np.ones((2, 2)))
    with pytest.raises(ValueError, match="valid must have shape"):
        write_kitti_flow(tmp_path / "x.png", np.zeros((2, 2, 2), np.float32), np.ones((3, 2)))


# ---------------------------------------------------------------------------------------------- layouts


@pytest.fixture
def sintel(tmp_path):
    """Scenes alley (frames 1-3, flows 1-2) and bamboo (frames 1-2, flow 1), clean pass only."""
    rng = np.random.default_rng(3)
    root, data = tmp_path / "Sintel", {}
    for scene, count in (("alley", 3), ("bamboo", 2)):
        frames = [random_frame(rng) for _ in range(count)]
        for i, frame in enumerate(frames, start=1):
            save_image(str(root / "training" / "clean" / scene / f"frame_{i:04d}.png"), frame)
        for i in range(1, count):
            flow = random_flow(rng)
            os.makedirs(root / "training" / "flow" / scene, exist_ok=True)
            write_flo(root / "training" / "flow" / scene / f"frame_{i:04d}.flo", flow)
            data[(scene, i)] = (frames[i - 1], frames[i], flow)
    return root, data


def test_sintel_pairs_consecutive_frames_with_their_flow(sintel):
    root, data = sintel
    source = SintelSource(root, "clean")
    assert len(source) == 3
    expected = [("alley", 1), ("alley", 2), ("bamboo", 1)]
    for record, (scene, i) in zip(source.records, expected):
        assert record.frame1.endswith(os.path.join("clean", scene, f"frame_{i:04d}.png"))
        assert record.frame2.endswith(os.path.join("clean", scene, f"frame_{i + 1:04d}.png"))
        pair = load_flow_files(record)
        frame1, frame2, flow = data[(scene, i)]
        np.testing.assert_array_equal(pair.frames, np.stack([frame1, frame2]))
        np.testing.assert_array_equal(pair.flow, flow)
        np.testing.assert_array_equal(pair.valid, np.ones((H, W), np.float32))
    with pytest.raises(FileNotFoundError, match="final"):  # the final pass is absent
        SintelSource(root, "final")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        SintelSource(root / "nowhere")
    with pytest.raises(ValueError, match="render_pass"):
        SintelSource(root, "albedo")


def test_sintel_errors_at_load_name_the_files(sintel):
    root, _ = sintel
    save_image(
        str(root / "training" / "clean" / "alley" / "frame_0002.png"), np.zeros((H + 1, W, 3), np.uint8)
    )
    source = SintelSource(root)
    with pytest.raises(ValueError, match="differ in size") as error:
        load_flow_files(source[0])
    assert "frame_0002.png" in str(error.value)
    (root / "training" / "flow" / "bamboo" / "frame_0001.flo").write_bytes(b"PIEH")
    with pytest.raises(ValueError, match="bamboo.*frame_0001.flo"):
        load_flow_files(source[2])
    with pytest.raises(FileNotFoundError, match="no frame pairs"):
        SintelSource(root.parent)  # a folder without training/flow


def test_flying_chairs_pairs_and_train_val_split(tmp_path):
    rng = np.random.default_rng(4)
    root, flows = tmp_path / "FlyingChairs_release", []
    for i in (1, 2, 3):
        save_image(str(root / "data" / f"{i:05d}_img1.ppm"), random_frame(rng))
        save_image(str(root / "data" / f"{i:05d}_img2.ppm"), random_frame(rng))
        flows.append(random_flow(rng))
        write_flo(root / "data" / f"{i:05d}_flow.flo", flows[-1])
    source = FlyingChairsSource(root)
    assert [os.path.basename(r.flow) for r in source.records] == [f"{i:05d}_flow.flo" for i in (1, 2, 3)]
    np.testing.assert_array_equal(load_flow_files(source[1]).flow, flows[1])
    with pytest.raises(FileNotFoundError, match="FlyingChairs_train_val.txt"):
        FlyingChairsSource(root, "train")
    (root / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n")
    assert [os.path.basename(r.frame1) for r in FlyingChairsSource(root, "train").records] == [
        "00001_img1.ppm",
        "00003_img1.ppm",
    ]
    assert [os.path.basename(r.frame1) for r in FlyingChairsSource(root, "val").records] == ["00002_img1.ppm"]
    (root / "FlyingChairs_train_val.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match="one label"):
        FlyingChairsSource(root, "val")
    os.remove(root / "data" / "00002_img2.ppm")
    with pytest.raises(FileNotFoundError, match="00002_img2.ppm"):
        FlyingChairsSource(root)


def test_kitti_2015_pairs_with_sparse_flow(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "KITTI"
    for stem in ("000000", "000001"):
        save_image(str(root / "training" / "image_2" / f"{stem}_10.png"), random_frame(rng))
        save_image(str(root / "training" / "image_2" / f"{stem}_11.png"), random_frame(rng))
    flow, valid = random_flow(rng), rng.random((H, W)) > 0.5
    os.makedirs(root / "training" / "flow_occ")
    write_kitti_flow(root / "training" / "flow_occ" / "000000_10.png", flow, valid)
    write_kitti_flow(root / "training" / "flow_occ" / "000001_10.png", flow, np.ones((H, W)))
    source = Kitti2015Source(root)
    assert len(source) == 2 and source[1].frame2.endswith("000001_11.png")
    pair = load_flow_files(source[0])
    np.testing.assert_array_equal(pair.valid, valid.astype(np.float32))
    np.testing.assert_array_equal(pair.flow, np.where(valid[..., None], flow, 0))
    with pytest.raises(FileNotFoundError, match="no frame pairs"):
        Kitti2015Source(root / "training")


# ---------------------------------------------------------------------------------------------- synthetic


def smooth_texture(height: int, width: int) -> np.ndarray:
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    channels = [np.sin(0.3 * x + 0.2 * y), np.cos(0.25 * y - 0.1 * x), np.sin(0.2 * x) * np.cos(0.3 * y)]
    return (127.5 + 100 * np.stack(channels, axis=-1)).astype(np.float32)


def test_a_pure_integer_translation_moves_every_pixel_exactly():
    identity = Affine(np.eye(2), np.zeros(2))
    background = Layer(smooth_texture(40, 50), identity, Affine(np.eye(2), np.array([3.0, -2.0])), None)
    pair, visible = render_layers([background], (20, 30))
    np.testing.assert_array_equal(pair.flow, np.broadcast_to(np.float32([3, -2]), (20, 30, 2)))
    frame1, frame2 = pair.frames.astype(np.int64)
    np.testing.assert_array_equal(
        frame2[0:18, 3:30], frame1[2:20, 0:27]
    )  # frame2[y + v, x + u] = frame1[y, x]
    expected_visible = np.zeros((20, 30))
    expected_visible[2:, :27] = 1  # pixels landing inside frame 2
    np.testing.assert_array_equal(visible, expected_visible)


def test_synthetic_flow_warps_frame2_onto_frame1_where_visible():
    source = SyntheticFlowSource((48, 64), length=4, seed=7, max_translation=6.0)
    for index in range(len(source)):
        pair, visible = source.render(index)
        assert pair.frames.shape == (2, 48, 64, 3) and pair.frames.dtype == np.uint8
        assert pair.flow.shape == (48, 64, 2) and pair.flow.dtype == np.float32
        assert visible.mean() > 0.5
        y, x = np.meshgrid(np.arange(48), np.arange(64), indexing="ij")
        grid = np.stack([x, y], axis=-1).astype(np.float64)
        frame1, frame2 = pair.frames.astype(np.float64)
        keep = visible > 0

        def warp_error(flow: np.ndarray) -> float:
            warped = sample_bilinear(frame2, grid + flow)
            return float(np.mean(np.abs(warped - frame1)[keep]))

        exact, shifted = warp_error(pair.flow), warp_error(pair.flow + np.float32([1.0, 0.0]))
        assert exact < 4.0 and shifted > 2 * exact, (index, exact, shifted)


def test_synthetic_pairs_depend_only_on_seed_and_index_and_pickle():
    source = SyntheticFlowSource((33, 47), length=3, seed=11)
    first, again = source[1], pickle.loads(pickle.dumps(source))[1]
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.flow, again.flow)
    assert not np.array_equal(first.flow, source[2].flow)
    assert not np.array_equal(first.frames, SyntheticFlowSource((33, 47), 3, seed=12)[1].frames)
    assert len(np.unique(first.flow.reshape(-1, 2), axis=0)) > 10  # moving layers, not one translation
    with pytest.raises(IndexError):
        source[3]


def test_synthetic_background_alone_without_rotation_or_scaling_is_a_constant_flow():
    source = SyntheticFlowSource((30, 40), 2, max_foreground=0, max_rotation=0.0, max_scale_change=0.0)
    flow = source[0].flow
    np.testing.assert_allclose(flow, np.broadcast_to(flow[0, 0], flow.shape), atol=1e-5)
    assert 0 < np.abs(flow[0, 0]).max() <= 10.0


def test_synthetic_contrast_scales_both_frames_about_frame1s_mean_and_keeps_the_flow():
    kwargs = dict(max_foreground=2, max_translation=2.0)
    plain, stretched = (SyntheticFlowSource((24, 32), 2, contrast=(c, c), **kwargs)[1] for c in (1.0, 3.0))
    np.testing.assert_array_equal(stretched.flow, plain.flow)
    frames = plain.frames.astype(np.float64)
    expected = frames[0].mean(axis=(0, 1)) + (frames - frames[0].mean(axis=(0, 1))) * 3.0
    unclipped = (expected > 1) & (expected < 254)
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(stretched.frames[unclipped], expected[unclipped], atol=2.0)  # 3 x rounding
    assert stretched.frames.astype(np.float64).std() > 1.5 * frames.std()  # clipping takes some
    with pytest.raises(ValueError, match="contrast"):
        SyntheticFlowSource((24, 32), 2, contrast=(2.0, 1.0))


# ---------------------------------------------------------------------------------------------- transforms


@pytest.fixture(scope="module")
def pair() -> FlowPair:
    rng = np.random.default_rng(6)
    valid = (rng.random((20, 30)) > 0.2).astype(np.float32)
    return FlowPair(
        np.stack([random_frame(rng, 20, 30), random_frame(rng, 20, 30)]), random_flow(rng, 20, 30), valid
    )


def test_train_transform_crops_deterministically_from_the_rng(pair):
    transform = FlowTrainTransform((12, 16))
    a = transform(pair, np.random.default_rng(0))
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "frames": ((2, 12, 16, 3), np.float32),
        "flow": ((12, 16, 2), np.float32),
        "valid": ((12, 16), np.float32),
        "weights": ((), np.float32),
    }
    assert a["weights"] == 1 and a["frames"].min() >= -1 and a["frames"].max() <= 1
    b = pickle.loads(pickle.dumps(transform))(pair, np.random.default_rng(0))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    others = [transform(pair, np.random.default_rng(seed)) for seed in range(1, 6)]
    assert any(not np.array_equal(a["flow"], o["flow"]) for o in others)
    flows = [o["flow"] for o in [a] + others]
    for flow in flows:  # every crop (flipped or not) is a window of the original flow
        candidates = [pair.flow, pair.flow[:, ::-1] * np.float32([-1, 1])]
        assert any(
            np.array_equal(flow, c[t : t + 12, s : s + 16])
            for c in candidates
            for t in range(9)
            for s in range(15)
        )


def test_flip_mirrors_frames_and_negates_u_and_zero_strength_keeps_colours(pair):
    flipped = FlowTrainTransform((20, 30), flip_prob=1.0, strength=0.0)(pair, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped["flow"][..., 0], -pair.flow[:, ::-1, 0])
    np.testing.assert_array_equal(flipped["flow"][..., 1], pair.flow[:, ::-1, 1])
    np.testing.assert_array_equal(flipped["valid"], pair.valid[:, ::-1])
    np.testing.assert_allclose(flipped["frames"], normalize_frames(pair.frames[:, :, ::-1]), atol=1e-5)
    jittered = FlowTrainTransform((20, 30), flip_prob=0.0)(pair, np.random.default_rng(0))
    np.testing.assert_array_equal(jittered["flow"], pair.flow)
    assert np.abs(jittered["frames"] - normalize_frames(pair.frames)).mean() > 0.01


def test_eval_transform_keeps_full_frames_or_centre_crops(pair):
    full = FlowEvalTransform()(pair)
    np.testing.assert_array_equal(full["frames"], normalize_frames(pair.frames))
    np.testing.assert_array_equal(full["flow"], pair.flow)
    centre = FlowEvalTransform((10, 20))(pair)
    np.testing.assert_array_equal(centre["flow"], pair.flow[5:15, 5:25])
    np.testing.assert_array_equal(centre["valid"], pair.valid[5:15, 5:25])


def test_transforms_read_file_records_and_reject_small_frames(sintel, pair):
    root, data = sintel
    record = SintelSource(root)[0]
    example = FlowEvalTransform()(record)
    np.testing.assert_array_equal(example["flow"], data[("alley", 1)][2])
    with pytest.raises(ValueError, match="smaller than crop_size") as error:
        FlowTrainTransform((H + 1, W))(record, np.random.default_rng(0))
    assert "frame_0001.png" in str(error.value)
    with pytest.raises(ValueError, match="smaller than crop_size"):
        FlowEvalTransform((21, 30))(pair)
    with pytest.raises(TypeError, match="FlowFiles or FlowPair"):
        FlowEvalTransform()("frame.png")
    assert isinstance(record, FlowFiles)


# ---------------------------------------------------------------------------------------------- metrics


def metric_case():
    """EPE [[0, 5], [2, 1]] (differences (0, 0), (3, 4), (0, 2), (1, 0)); the EPE-1 pixel is invalid."""
    truth = np.zeros((2, 2, 2), np.float32)
    prediction = np.float32([[[0, 0], [3, 4]], [[0, 2], [1, 0]]])
    valid = np.float32([[1, 1], [1, 0]])
    return prediction, truth, valid


def test_metrics_match_hand_computed_values_in_numpy_and_jax():
    prediction, truth, valid = metric_case()
    np.testing.assert_allclose(endpoint_error(prediction, truth), [[0, 5], [2, 1]])
    expected = {"epe": 7.0, "count": 3.0, "outliers_1px": 2.0, "outliers_3px": 1.0, "outliers_5px": 0.0}
    numpy_sums = flow_metric_sums(prediction, truth, valid)
    jax_sums = jax.jit(flow_metric_sums)(jnp.asarray(prediction), jnp.asarray(truth), jnp.asarray(valid))
    assert isinstance(jax_sums["epe"], jax.Array) and not isinstance(numpy_sums["epe"], jax.Array)
    for sums in (numpy_sums, jax_sums):
        assert {k: float(v) for k, v in sums.items()} == expected
    assert summarize_flow_metrics(numpy_sums) == pytest.approx(
        {"epe": 7 / 3, "outliers_1px": 2 / 3, "outliers_3px": 1 / 3, "outliers_5px": 0.0}
    )
    all_valid = flow_metric_sums(prediction, truth)
    assert float(all_valid["epe"]) == 8 and float(all_valid["count"]) == 4


def test_metric_sums_add_across_a_batch_and_check_shapes():
    prediction, truth, valid = metric_case()
    batch = flow_metric_sums(
        np.stack([prediction, truth]), np.stack([truth, truth]), np.stack([valid, valid])
    )
    assert float(batch["epe"]) == 7 and float(batch["count"]) == 6 and float(batch["outliers_1px"]) == 2
    with pytest.raises(ValueError, match="one shape"):
        endpoint_error(prediction, truth[:1])
    with pytest.raises(ValueError, match="valid must have shape"):
        flow_metric_sums(prediction, truth, valid[:1])
    with pytest.raises(ValueError, match="count 0"):
        summarize_flow_metrics(flow_metric_sums(prediction, truth, np.zeros_like(valid)))


def test_flow_panel_shows_prediction_truth_and_error(tmp_path):
    rng = np.random.default_rng(8)
    truth = rng.normal(0, 3, (10, 12, 2)).astype(np.float32)
    prediction = truth + rng.normal(0, 1, truth.shape).astype(np.float32)
    valid = np.ones((10, 12), np.float32)
    valid[0, :4] = 0
    save_flow_panel(tmp_path / "panel.png", prediction, truth, valid)
    panel = np.asarray(Image.open(tmp_path / "panel.png"))
    assert panel.shape == (10, 3 * 12 + 2 * PANEL_GAP, 3)
    magnitude = max(
        np.hypot(*np.moveaxis(prediction, -1, 0)).max(), np.hypot(*np.moveaxis(truth, -1, 0))[1:].max()
    )
    magnitude = max(magnitude, np.hypot(*truth[0, 4:].T).max())
    np.testing.assert_array_equal(panel[:, :12], flow_to_color(prediction, magnitude))
    truth_panel = panel[:, 12 + PANEL_GAP : 24 + PANEL_GAP]
    np.testing.assert_array_equal(truth_panel[1:], flow_to_color(truth, magnitude)[1:])
    assert (truth_panel[0, :4] == 0).all()
    error = panel[:, 24 + 2 * PANEL_GAP :, 0].astype(np.float64)
    epe = np.hypot(*np.moveaxis(prediction - truth, -1, 0))
    epe[~(valid > 0)] = 0
    np.testing.assert_allclose(error, np.rint(epe / epe.max() * 255), atol=1)
    assert (panel[:, 12 : 12 + PANEL_GAP] == 255).all()
