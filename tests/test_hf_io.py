"""HF folders in and out: hub ids from a huggingface_hub cache, sharded checkpoints both ways (against
transformers and huggingface_hub's own sharding), and `save_pretrained`'s checks and atomic writes."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from helpers import o1_variables, save_random_hf, tiny_dims
from huggingface_hub import split_state_dict_into_shards_factory, split_torch_state_dict_into_shards
from huggingface_hub.serialization._base import parse_size_to_int

from perceiver_jax import HEADS, from_pretrained, save_pretrained
from perceiver_jax.hf import parse_size, to_hf_state_dict

CLS = "PerceiverForSequenceClassification"
TINY = tiny_dims(vocab_size=20, max_position_embeddings=8, num_labels=3)
CONV = dict(TINY, d_model=322, image_size=8)  # the conv stem (with batch norm) gives 64 + 258 channels
SHARD = "4KB"  # the tiny classifier's ~25 KB of weights make several shards
SHA_MAIN, SHA_OLD = "a" * 40, "0123456789abcdef0123456789abcdef01234567"


def tiny_hf(head=CLS, **overrides):
    return getattr(transformers, head), transformers.PerceiverConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def hf_cls(tmp_path_factory):
    """(folder, torch model) of a random tiny HF text classifier, saved unsharded."""
    folder = tmp_path_factory.mktemp("cls")
    return str(folder), save_random_hf(*tiny_hf(), folder, seed=0)


@pytest.fixture(scope="module")
def hf_cls_sharded(tmp_path_factory):
    """(folder, torch model) of another random tiny classifier, saved by transformers in 4 KB shards."""
    folder = tmp_path_factory.mktemp("cls_sharded")
    return str(folder), save_random_hf(*tiny_hf(), folder, seed=1, max_shard_size=SHARD)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, hf_cls, hf_cls_sharded):
    """A huggingface_hub cache holding `org/tiny-cls`: `main` -> SHA_MAIN (the unsharded classifier), and
    tag `v1` -> SHA_OLD (the sharded one), laid out as huggingface_hub lays it out."""
    cache = tmp_path_factory.mktemp("hub_cache")
    repo = cache / "models--org--tiny-cls"
    for sha, (folder, _) in ((SHA_MAIN, hf_cls), (SHA_OLD, hf_cls_sharded)):
        shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA_MAIN)
    (repo / "refs" / "v1").write_text(SHA_OLD)
    return str(cache)


def assert_same_variables(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def folder_bytes(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def torch_state(torch_model):
    return {k: v.numpy() for k, v in torch_model.state_dict().items()}


# ---------------------------------------------------------------- hub ids


def test_hub_id_from_the_cache(hf_cls, hf_cls_sharded, hub_cache):
    _, expected = from_pretrained(hf_cls[0])
    model, variables = from_pretrained("org/tiny-cls", cache_dir=hub_cache, local_files_only=True)
    assert type(model).__name__ == CLS
    assert_same_variables(variables, expected)
    _, old = from_pretrained(hf_cls_sharded[0])
    for revision in (SHA_OLD, "v1"):
        _, variables = from_pretrained(
            "org/tiny-cls", revision=revision, cache_dir=hub_cache, local_files_only=True
        )
        assert_same_variables(variables, old)


def test_hub_id_not_in_the_cache(hub_cache):
    for repo_id, revision in (("org/absent", None), ("org/tiny-cls", "f" * 40), ("org/tiny-cls", "v2")):
        with pytest.raises(FileNotFoundError) as excinfo:
            from_pretrained(repo_id, revision=revision, cache_dir=hub_cache, local_files_only=True)
        message = str(excinfo.value)
        assert f"{repo_id!r} is not a local folder" in message
        assert f"revision {revision or 'main'!r} of it is not in the Hugging Face cache" in message
        assert os.path.join(hub_cache, "models--" + repo_id.replace("/", "--")) in message
        assert "drop local_files_only=True" in message and "Check the id" in message


def test_hub_options_and_patterns_reach_snapshot_download(hf_cls, tmp_path, monkeypatch):
    """Options pass through; safetensors are fetched, and the torch pickles only when there are none."""
    import huggingface_hub

    bin_only = tmp_path / "bin_only"
    hf_cls[1].config.save_pretrained(bin_only)
    torch.save(hf_cls[1].state_dict(), bin_only / "pytorch_model.bin")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(bin_only) if repo_id == "org/bin-only" else hf_cls[0]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    options = dict(revision="v3", cache_dir=str(tmp_path / "cache"), local_files_only=False, token="a-token")
    _, from_hub = from_pretrained("org/tiny-cls", **options)
    _, from_bin = from_pretrained("org/bin-only", **options)
    assert_same_variables(from_bin, from_hub)
    safetensors_patterns = [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "model-*-of-*.safetensors",
    ]
    bin_patterns = [
        "config.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "pytorch_model-*-of-*.bin",
    ]
    assert calls == [
        ("org/tiny-cls", dict(options, allow_patterns=safetensors_patterns)),
        ("org/bin-only", dict(options, allow_patterns=safetensors_patterns)),
        ("org/bin-only", dict(options, allow_patterns=bin_patterns)),
    ]


def test_folders_load_without_huggingface_hub(hf_cls, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    model, _ = from_pretrained(hf_cls[0])
    assert type(model).__name__ == CLS
    with pytest.raises(ImportError, match="Hugging Face Hub id, which needs huggingface_hub: `pip install"):
        from_pretrained("org/tiny-cls")
    for path in ("./missing", str(tmp_path / "missing"), "a/b/c"):  # paths, not hub ids: no hub lookup
        with pytest.raises(FileNotFoundError, match="is not a folder"):
            from_pretrained(path)


# ---------------------------------------------------------------- sharded checkpoints in


def test_transformers_safetensors_shards_load(hf_cls_sharded, tmp_path):
    folder, torch_model = hf_cls_sharded
    files = sorted(os.listdir(folder))
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files
    assert sum(name.endswith(".safetensors") for name in files) >= 3
    torch_model.save_pretrained(tmp_path)  # the same weights, unsharded
    assert_same_variables(from_pretrained(folder)[1], from_pretrained(str(tmp_path))[1])


def test_pytorch_bin_shards_load(hf_cls, tmp_path):
    """Shards in transformers' legacy torch layout (huggingface_hub's split, `pytorch_model.bin.index.json`),
    which transformers itself reads back identically."""
    folder, torch_model = hf_cls
    state = torch_model.state_dict()
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=SHARD
    )
    assert split.is_sharded
    for name, keys in split.filename_to_tensors.items():
        torch.save({k: state[k] for k in keys}, tmp_path / name)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    torch_model.config.save_pretrained(tmp_path)
    reloaded = getattr(transformers, CLS).from_pretrained(tmp_path)
    for key, value in torch_state(reloaded).items():
        assert np.array_equal(value, state[key].numpy()), key
    assert_same_variables(from_pretrained(str(tmp_path))[1], from_pretrained(folder)[1])


def test_broken_shards(hf_cls_sharded, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(hf_cls_sharded[0], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    os.remove(folder / shard)
    with pytest.raises(FileNotFoundError, match=f"shard '{shard}' listed in .*index.json is not a file"):
        from_pretrained(str(folder))
    (folder / "model.safetensors.index.json").write_text('{"weights": {}}')
    with pytest.raises(ValueError, match="is not a shard index"):
        from_pretrained(str(folder))


# ---------------------------------------------------------------- sharded checkpoints out


@pytest.mark.parametrize(
    "head, hf_kwargs, max_shard_size",
    [(CLS, TINY, SHARD), ("PerceiverForImageClassificationConvProcessing", CONV, "200KB")],
)
def test_our_shards_load_in_transformers(head, hf_kwargs, max_shard_size, tmp_path):
    torch_model = save_random_hf(
        getattr(transformers, head), transformers.PerceiverConfig(**hf_kwargs), tmp_path / "hf"
    )
    torch_model.save_pretrained(tmp_path / "hf_sharded", max_shard_size=max_shard_size)
    model, variables = from_pretrained(str(tmp_path / "hf"))
    save_pretrained(model, variables, tmp_path / "ours", max_shard_size=max_shard_size)

    ours = tmp_path / "ours"
    index_text = (ours / "model.safetensors.index.json").read_text()
    index = json.loads(index_text)
    assert index_text == json.dumps(index, indent=2, sort_keys=True) + "\n"  # transformers' formatting
    theirs = json.loads((tmp_path / "hf_sharded" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == theirs["metadata"]  # total_size and total_parameters
    assert set(index["weight_map"]) == set(theirs["weight_map"])
    state = to_hf_state_dict(variables)
    split = split_state_dict_into_shards_factory(
        state,
        get_storage_size=lambda value: value.nbytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    assert split.is_sharded and index["weight_map"] == split.tensor_to_filename
    assert sorted(os.listdir(ours)) == sorted(
        ["config.json", "model.safetensors.index.json", *split.filename_to_tensors]
    )
    for name, keys in split.filename_to_tensors.items():
        assert sorted(safetensors.numpy.load_file(ours / name)) == sorted(keys)

    reloaded, info = getattr(transformers, head).from_pretrained(ours, output_loading_info=True)
    assert not any(info.values()), info
    expected = torch_state(torch_model)
    assert set(torch_state(reloaded)) == set(expected)
    for key, value in torch_state(reloaded).items():
        assert value.dtype == expected[key].dtype and np.array_equal(value, expected[key]), key


def test_parse_size_is_transformers():
    for size in ("200MB", "5GB", "1.5kb", " 3 TB", "4KB", "0.5GB"):
        assert parse_size(size) == parse_size_to_int(size), size
    assert parse_size(12345) == 12345
    for bad in ("5GiB", "GB", "-1MB", "five GB", "", 0, -3, True, 1.5, None):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


# ---------------------------------------------------------------- saving: checks, atomic writes, stale files


@pytest.fixture
def saved(hf_cls, tmp_path):
    """(model, variables, folder, its bytes) of a good folder that our `save_pretrained` wrote."""
    model, variables = from_pretrained(hf_cls[0])
    folder = tmp_path / "saved"
    save_pretrained(model, variables, folder, max_shard_size=SHARD)
    return model, variables, folder, folder_bytes(folder)


def test_save_checks_before_writing(saved):
    model, variables, folder, before = saved
    config = model.config
    cases = [
        # (model, variables, max_shard_size, error pattern)
        (HEADS[CLS](config.replace(norm_eps=1e-6)), variables, SHARD, "HF cannot express this model"),
        (model, variables["params"], SHARD, r"keys \['perceiver'\] are modules of variables\['params'\]"),
        (model, variables, "5GiB", "max_shard_size='5GiB' is not a size"),
    ]
    for wrong_model, wrong_variables, max_shard_size, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            save_pretrained(wrong_model, wrong_variables, folder, max_shard_size=max_shard_size)
        assert folder_bytes(folder) == before

    mlm_variables = o1_variables(
        HEADS["PerceiverForMaskedLM"](config), 0, **HEADS["PerceiverForMaskedLM"](config).example_inputs()
    )
    with pytest.raises(ValueError, match=f"variables do not match {CLS}") as excinfo:
        save_pretrained(model, mlm_variables, folder)
    message = str(excinfo.value)
    missing, unexpected = message.split("missing variables")[1].split("unexpected variables")
    assert "\n    params/perceiver/decoder/decoder/final_layer/kernel\n" in missing  # the classifier's
    assert "\n    params/embedding_decoder/bias\n" in unexpected  # the masked LM's

    more_latents = o1_variables(
        HEADS[CLS](config.replace(num_latents=6)), 0, **HEADS[CLS](config).example_inputs()
    )
    with pytest.raises(ValueError, match="mis-shaped variables") as excinfo:
        save_pretrained(model, more_latents, folder)
    message = str(excinfo.value)
    assert "mis-shaped variables (1):\n    params/perceiver/encoder/latents: variables (6, 16)" in message
    assert "model expects (4, 16)" in message and "missing variables (0): none" in message
    assert folder_bytes(folder) == before


@pytest.mark.parametrize("fail_at", [1, 3])
def test_failed_write_leaves_the_folder_as_it_was(saved, fail_at, monkeypatch):
    """The safetensors writer dies half-way through shard `fail_at` (disk full): nothing changes."""
    model, variables, folder, before = saved
    real_save_file = safetensors.numpy.save_file
    calls = []

    def failing_save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == fail_at:
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(28, "No space left on device")
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.numpy, "save_file", failing_save_file)
    other = o1_variables(model, 5, **model.example_inputs())
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(model, other, folder, max_shard_size="2KB")
    assert len(calls) == fail_at and all(os.path.dirname(path) == str(folder) for path in calls)
    assert folder_bytes(folder) == before  # no temporary file left either
    assert_same_variables(from_pretrained(str(folder))[1], variables)


def test_stale_weight_files_are_removed(hf_cls, tmp_path):
    folder_name, torch_model = hf_cls
    folder = tmp_path / "folder"
    shutil.copytree(folder_name, folder)
    torch.save(torch_model.state_dict(), folder / "pytorch_model.bin")
    (folder / "README.md").write_text("model card")
    model, variables = from_pretrained(str(folder))
    other = o1_variables(model, 3, **model.example_inputs())

    def weight_files():
        return sorted(name for name in os.listdir(folder) if name not in ("config.json", "README.md"))

    save_pretrained(model, other, folder, max_shard_size="2KB")
    many = weight_files()
    assert "model.safetensors" not in many and "pytorch_model.bin" not in many and len(many) > 4
    assert_same_variables(from_pretrained(str(folder))[1], other)
    save_pretrained(model, variables, folder, max_shard_size=SHARD)
    fewer = weight_files()
    assert len(fewer) < len(many) and not set(fewer) & set(many) - {"model.safetensors.index.json"}
    assert_same_variables(from_pretrained(str(folder))[1], variables)
    save_pretrained(model, other, folder)
    assert weight_files() == ["model.safetensors"]
    assert_same_variables(from_pretrained(str(folder))[1], other)
    assert (folder / "README.md").read_text() == "model card"
