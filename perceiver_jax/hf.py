"""Hugging Face weights in and out: `from_pretrained`, `save_pretrained` and the state-dict mapping.

Every Flax parameter path maps to one HF key (or one per layer for the scanned self-attention stack);
the table below holds the few names that differ.

Files are those of transformers: `config.json` and `model.safetensors`, or, past `max_shard_size`,
`model.safetensors.index.json` + `model-0000k-of-0000n.safetensors`; legacy `pytorch_model.bin` (and its
index + `pytorch_model-0000k-of-0000n.bin` shards) are read too, with torch. A hub id is downloaded with
`huggingface_hub` (imported only then); reading or writing folders needs neither it nor torch.
"""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util
from flax.core import unfreeze

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.heads import HEADS, PerceiverHead
from perceiver_jax.settings import Settings

# ---------------------------------------------------------------- the state-dict mapping

# Flax module names -> HF module names (anything absent keeps its name).
_MODULE_RENAMES = {
    "query_norm": "attention.self.layernorm1",
    "kv_norm": "attention.self.layernorm2",
    "mlp_norm": "layernorm",
}
_ATTENTION_RENAMES = {
    "query": "self.query",
    "key": "self.key",
    "value": "self.value",
    "output": "output.dense",
}
# Flax leaf names -> HF parameter names, per variable collection.
_LEAF_RENAMES = {
    "params": {"kernel": "weight", "scale": "weight", "embedding": "weight"},
    "batch_stats": {"mean": "running_mean", "var": "running_var"},
}
_STACKED = "self_attends"  # the scanned layer stack: leading axis = HF's layer index
_PROJECTION = "positions_projection"
_SPECIAL_KEYS = {("perceiver", "encoder", "latents"): "perceiver.embeddings.latents"}


def hf_key(collection: str, path: tuple[str, ...], layer: int | None = None) -> str:
    """HF state-dict key of the Flax variable `collection/path` (`layer`: index within the stack)."""
    if path in _SPECIAL_KEYS:
        return _SPECIAL_KEYS[path]
    parts = []
    for i, name in enumerate(path[:-1]):
        if (
            path[i + 1] == _PROJECTION
        ):  # a `PositionEncodingProjector`: HF's projection is the encoding's sibling
            continue
        if name == "attention" and path[i + 1] in _ATTENTION_RENAMES:
            parts.append("attention")
        elif i > 0 and path[i - 1] == "attention" and name in _ATTENTION_RENAMES:
            parts.append(_ATTENTION_RENAMES[name])
        elif name == _STACKED:
            parts.append(f"{_STACKED}.{layer}")
        else:
            parts.append(_MODULE_RENAMES.get(name, name))
    parts.append(_LEAF_RENAMES[collection].get(path[-1], path[-1]))
    return ".".join(parts)


def _to_hf(leaf_name: str, value: np.ndarray) -> np.ndarray:
    """Flax layout -> torch layout (Dense kernels transposed, conv kernels HWIO -> OIHW)."""
    if leaf_name == "kernel":
        return value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
    return value


def _from_hf(leaf_name: str, value: np.ndarray) -> np.ndarray:
    """torch layout -> Flax layout (inverse of `_to_hf`)."""
    if leaf_name == "kernel":
        return value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
    return value


def _flax_entries(variables: Mapping[str, Any]):
    """Yields `(collection, path, layer, hf_key)` for every Flax variable (one per layer when stacked)."""
    for collection in ("params", "batch_stats"):
        if collection not in variables:
            continue
        for path, value in traverse_util.flatten_dict(nn.unbox(dict(variables[collection]))).items():
            layers = [None] if _STACKED not in path else range(value.shape[0])
            for layer in layers:
                yield collection, path, layer, hf_key(collection, path, layer)


def to_hf_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax variables -> HF state dict of numpy arrays in torch layout (float32; BatchNorm's
    `num_batches_tracked` int64, as torch keeps it)."""
    flat = {
        c: traverse_util.flatten_dict(nn.unbox(dict(variables[c])))
        for c in ("params", "batch_stats")
        if c in variables
    }
    state = {}
    for collection, path, layer, key in _flax_entries(variables):
        value = np.asarray(jax.device_get(flat[collection][path]))
        value = value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else np.float32)
        if layer is not None:
            value = value[layer]
        state[key] = np.require(_to_hf(path[-1], value), requirements="C")  # keeps 0-d arrays 0-d
    return state


# ---------------------------------------------------------------- models and their variables


def head_from_config(config: PerceiverConfig, head: str | None = None) -> type[PerceiverHead]:
    """The head class named by `head`, else by the config's `architectures`."""
    name = head or (config.architectures[0] if config.architectures else None)
    if name is None:
        raise ValueError(
            f"config.json has no 'architectures'; pass head=<HF class name>, one of {sorted(HEADS)}."
        )
    if name not in HEADS:
        raise ValueError(f"unsupported Perceiver head {name!r}; supported: {sorted(HEADS)}.")
    return HEADS[name]


def abstract_variables(model: PerceiverHead) -> dict[str, Any]:
    """Shapes and dtypes of `model`'s variables (`jax.ShapeDtypeStruct` leaves, unboxed), nothing computed."""
    shapes = jax.eval_shape(lambda rng: model.init(rng, **model.example_inputs()), jax.random.key(0))
    return nn.unbox(shapes)


def _listing(title: str, items: list[str]) -> str:
    """`  title (n):` and the first 20 items, one per line, for error messages."""
    shown = "".join(f"\n    {item}" for item in items[:20]) + ("\n    ..." if len(items) > 20 else "")
    return f"  {title} ({len(items)}):{shown or ' none'}"


def convert_state_dict(model: PerceiverHead, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """HF state dict -> Flax variables of `model`; ValueError listing missing/unexpected/mis-shaped keys."""
    target = abstract_variables(model)
    flat_target = {c: traverse_util.flatten_dict(target[c]) for c in target}
    flat_out: dict[str, dict[tuple, Any]] = {c: {} for c in target}
    missing, misshaped, used = [], [], set()
    stacked: dict[tuple[str, tuple], list] = {}
    for collection, path, layer, key in _flax_entries(target):
        leaf = flat_target[collection][path]
        shape = leaf.shape[1:] if layer is not None else leaf.shape
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = _from_hf(path[-1], np.asarray(state[key]))
        if value.shape != tuple(shape):
            misshaped.append(
                f"{key}: checkpoint {tuple(np.asarray(state[key]).shape)}, model expects "
                f"{tuple(_to_hf(path[-1], np.zeros(shape, np.float32)).shape)}"
            )
            continue
        value = value.astype(leaf.dtype)
        if layer is None:
            flat_out[collection][path] = value
        else:
            stacked.setdefault((collection, path), []).append(value)
    for (collection, path), values in stacked.items():
        if len(values) == flat_target[collection][path].shape[0]:
            flat_out[collection][path] = np.stack(values)
    unexpected = sorted(set(state) - used)
    if missing or unexpected or misshaped:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__} with this config "
            f"(wrong head or model size?).\n{_listing('missing keys', missing)}\n"
            f"{_listing('unexpected keys', unexpected)}\n{_listing('mis-shaped keys', misshaped)}"
        )
    return {
        c: traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat_out[c].items()}) for c in flat_out
    }


def _shape(leaf: Any) -> tuple[int, ...]:
    """The shape of an array, `ShapeDtypeStruct` or array-like leaf."""
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def check_variables(model: PerceiverHead, variables: Mapping[str, Any]) -> None:
    """Raises TypeError/ValueError unless `variables` has exactly the collections, paths and shapes of
    `model`'s variables (`abstract_variables`); dtypes may differ (e.g. bfloat16 parameters)."""
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"variables must be a dict of collections ({{'params': ...}}), not {type(variables).__name__}."
        )
    expected = traverse_util.flatten_dict(abstract_variables(model))
    param_modules = {path[1] for path in expected if path[0] == "params"}
    if "params" not in variables and variables and set(variables) <= param_modules:
        raise ValueError(
            f"variables has no 'params' collection: its keys {sorted(variables)} are modules of "
            "variables['params']. Pass the whole variables dict ({'params': ...}) as returned by "
            "from_pretrained or model.init, not variables['params']."
        )
    given = traverse_util.flatten_dict(nn.unbox(unfreeze(variables)))
    missing = ["/".join(p) for p in sorted(set(expected) - set(given))]
    unexpected = ["/".join(map(str, p)) for p in sorted(set(given) - set(expected), key=str)]
    misshaped = [
        f"{'/'.join(p)}: variables {_shape(given[p])}, model expects {expected[p].shape}"
        for p in sorted(set(expected) & set(given))
        if _shape(given[p]) != expected[p].shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"variables do not match {type(model).__name__} with this config (variables of another head "
            f"or model size?).\n{_listing('missing variables', missing)}\n"
            f"{_listing('unexpected variables', unexpected)}\n{_listing('mis-shaped variables', misshaped)}"
        )


# ---------------------------------------------------------------- weight files

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
_SHARD_NAME = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)")
_WEIGHT_NAMES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX)


def _is_weight_file(name: str) -> bool:
    """Whether `name` is one of the weight files (or shards) transformers reads from a model folder."""
    return name in _WEIGHT_NAMES or _SHARD_NAME.fullmatch(name) is not None


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of the safetensors file `path`, as numpy arrays (no torch needed)."""
    try:
        return safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); re-download or re-save the checkpoint."
        ) from e


def _read_pytorch_bin(path: str) -> dict[str, np.ndarray]:
    """All tensors of the torch pickle `path` (floats as float32), read with `weights_only=True`."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a torch pickle: install torch to read it, or convert the folder to model.safetensors."
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt pickle
        raise ValueError(f"{path} could not be read by torch ({e}).") from e
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _read_sharded(
    index_path: str, read_shard: Callable[[str], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The tensors of the shards listed in the transformers index `index_path`
    (`{"weight_map": {tensor name: shard file name}}`), each shard read with `read_shard`."""
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{index_path} is not a shard index ({type(e).__name__}: {e}); expected JSON "
            '{"weight_map": {tensor name: shard file name}}. Re-download or re-save the checkpoint.'
        ) from e
    folder = os.path.dirname(index_path)
    state = {}
    for shard in shards:
        path = os.path.join(folder, shard) if isinstance(shard, str) else ""
        if os.path.basename(path) != shard or not os.path.isfile(path):
            raise FileNotFoundError(
                f"shard {shard!r} listed in {index_path} is not a file in {folder}; re-download or re-save "
                "the checkpoint."
            )
        tensors = read_shard(path)
        absent = sorted(k for k, v in weight_map.items() if v == shard and k not in tensors)
        if absent:
            raise ValueError(f"{path} lacks tensors that {index_path} places there: {absent[:5]}.")
        state.update(tensors)
    return state


def load_hf_state_dict(folder: str) -> dict[str, np.ndarray]:
    """The HF state dict saved in `folder`, in transformers' order of preference: `model.safetensors`, the
    safetensors index + shards, `pytorch_model.bin`, the bin index + shards (the last two need torch)."""
    readers = (
        (SAFETENSORS, _read_safetensors),
        (SAFETENSORS_INDEX, functools.partial(_read_sharded, read_shard=_read_safetensors)),
        (PYTORCH_BIN, _read_pytorch_bin),
        (PYTORCH_BIN_INDEX, functools.partial(_read_sharded, read_shard=_read_pytorch_bin)),
    )
    for name, read in readers:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return read(path)
    raise FileNotFoundError(
        f"{folder!r} has neither model.safetensors nor pytorch_model.bin (nor a sharded "
        f"{SAFETENSORS_INDEX} or {PYTORCH_BIN_INDEX}); it holds {sorted(os.listdir(folder))}."
    )


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # transformers': powers of 10


def parse_size(size: int | str) -> int:
    """Bytes in `size`, transformers' `max_shard_size`: an int, or a number and a unit ("200MB", "1.5GB")."""
    if isinstance(size, int) and not isinstance(size, bool):
        num_bytes = size
    else:
        text = size.strip() if isinstance(size, str) else ""
        try:
            num_bytes = int(float(text[:-2]) * _SIZE_UNITS[text[-2:].upper()])
        except (KeyError, ValueError, OverflowError):
            num_bytes = 0
    if num_bytes <= 0:
        raise ValueError(
            f"max_shard_size={size!r} is not a size: give a positive number of bytes or a string like "
            "'200MB' or '5GB' (units KB, MB, GB, TB, powers of 10, as in transformers)."
        )
    return num_bytes


def _split_into_shards(state: Mapping[str, np.ndarray], max_shard_bytes: int) -> dict[str, list[str]]:
    """Shard file name -> tensor names, split as huggingface_hub splits for transformers: tensors in order,
    a new shard when the next one would overflow the current shard, and a shard of its own for a tensor
    larger than `max_shard_bytes`. One shard is `model.safetensors`; n are `model-0000k-of-0000n.safetensors`.
    """
    shards, current, current_bytes = [], [], 0
    for key, value in state.items():
        if value.nbytes > max_shard_bytes:
            shards.append([key])
            continue
        if current_bytes + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += value.nbytes
    if current:
        shards.append(current)
    if len(shards) == 1:
        return {SAFETENSORS: shards[0]}
    return {f"model-{k:05d}-of-{len(shards):05d}.safetensors": keys for k, keys in enumerate(shards, 1)}


def _shard_index(
    shards: Mapping[str, list[str]], state: Mapping[str, np.ndarray], num_parameters: int
) -> str:
    """`model.safetensors.index.json` as transformers writes it (sorted keys, 2-space indent, newline)."""
    index = {
        "metadata": {
            "total_parameters": num_parameters,
            "total_size": sum(value.nbytes for value in state.values()),
        },
        "weight_map": {key: name for name, keys in shards.items() for key in keys},
    }
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


def _write_safetensors(tensors: Mapping[str, np.ndarray], path: str) -> None:
    safetensors.numpy.save_file(dict(tensors), path, metadata={"format": "pt"})


def _write_text(text: str, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _fsync(path: str) -> None:
    """Flushes the file `path` to disk, so that a rename never publishes an unwritten file."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_folder(folder: str, files: Mapping[str, Callable[[str], None]]) -> None:
    """Writes the files `{name: write(path)}` into `folder`, atomically per file.

    Each file is first written to a hidden temporary name in `folder`; only when all are written are they
    renamed into place (in `files` order), and then the weight files of an earlier save that are not among
    them (other shards, `pytorch_model.bin`, ...) are deleted. On any failure while writing, the temporary
    files are removed and `folder` is left as it was.
    """
    os.makedirs(folder, exist_ok=True)
    staged: dict[str, str] = {}
    try:
        for name, write in files.items():
            staged[name] = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
            write(staged[name])
            _fsync(staged[name])
    except BaseException:
        for path in staged.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for name, path in staged.items():
        os.replace(path, os.path.join(folder, name))
    for name in os.listdir(folder):
        if _is_weight_file(name) and name not in files:
            os.remove(os.path.join(folder, name))


# ---------------------------------------------------------------- the Hugging Face Hub

# What `from_pretrained` fetches of a hub repository: the config and one format of weights (safetensors,
# else the legacy torch pickles), never the rest of the repository.
_HUB_PATTERNS = (
    ["config.json", SAFETENSORS, SAFETENSORS_INDEX, "model-*-of-*.safetensors"],
    ["config.json", PYTORCH_BIN, PYTORCH_BIN_INDEX, "pytorch_model-*-of-*.bin"],
)
_HUB_ID = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")  # "name" or "org/name", as the hub spells repositories


def _snapshot_download(repo_id: str, revision: str | None, **hub_options: Any) -> str:
    """The local snapshot folder of hub model `repo_id` at `revision`, downloaded (or found in the
    cache) with `huggingface_hub.snapshot_download`; `hub_options` go to it unchanged."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise ImportError(
            f"{repo_id!r} is not a local folder, so it is read as a Hugging Face Hub id, which needs "
            "huggingface_hub: `pip install huggingface_hub`, or pass the path of a model folder."
        ) from e
    try:
        for patterns in _HUB_PATTERNS:
            folder = huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, **hub_options
            )
            if any(os.path.isfile(os.path.join(folder, name)) for name in patterns[1:3]):
                break
        return folder
    except LocalEntryNotFoundError as e:
        cache = hub_options.get("cache_dir") or constants.HF_HUB_CACHE
        where = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and revision {revision or 'main'!r} of it is not in the "
            f"Hugging Face cache (looked in {where}) and could not be downloaded. Check the id and the "
            "revision; to download it, drop local_files_only=True (and unset HF_HUB_OFFLINE) where the hub "
            f"can be reached; or pass the cache_dir it was downloaded to.\n  huggingface_hub: {e}"
        ) from e


def resolve_folder(
    path_or_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """`path_or_id` if it is a folder, else the snapshot folder of the hub model of that id ("org/name")
    at `revision` (branch, tag or commit; default "main"), from `cache_dir` or downloaded there.

    Raises FileNotFoundError for a path that is no folder, or an id that is not cached when it cannot be
    downloaded; ImportError when the id needs huggingface_hub and it is not installed.
    """
    if os.path.isdir(path_or_id):
        return os.fspath(path_or_id)
    if not isinstance(path_or_id, str) or os.path.exists(path_or_id) or not _HUB_ID.fullmatch(path_or_id):
        raise FileNotFoundError(
            f"{os.fspath(path_or_id)!r} is not a folder; expected a HF model folder with config.json or a "
            "Hugging Face Hub id 'org/name'."
        )
    return _snapshot_download(
        path_or_id, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )


# ---------------------------------------------------------------- loading and saving


def from_pretrained(
    path_or_id: str | os.PathLike,
    *,
    dtype: Any = None,
    settings: Settings | None = None,
    head: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    **head_kwargs,
) -> tuple[PerceiverHead, dict[str, Any]]:
    """Loads a HF Perceiver (`config.json` + weights, sharded or not) as `(model, variables)`.

    Args:
      path_or_id: a model folder, or a Hugging Face Hub id ("org/name") fetched with huggingface_hub
        (config and weights only) into its cache, or found there.
      dtype: shortcut for `settings.dtype`, the computation dtype (parameters stay float32).
      settings: how the model computes (default `Settings()`).
      head: the HF head class name; default: `architectures` in config.json.
      revision, cache_dir, local_files_only, token: for hub ids, as in `huggingface_hub.snapshot_download`
        (a branch, tag or commit; the cache folder; no network; the access token).
      **head_kwargs: go to the head (e.g. `chunk_size`).
    """
    settings = settings or Settings()
    if dtype is not None:
        settings = settings.replace(dtype=dtype)
    folder = resolve_folder(path_or_id, revision, cache_dir, local_files_only, token)
    config = PerceiverConfig.from_hf(folder)
    model = head_from_config(config, head)(config, settings=settings, **head_kwargs)
    return model, convert_state_dict(model, load_hf_state_dict(folder))


def save_pretrained(
    model: PerceiverHead,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    max_shard_size: int | str = "50GB",
) -> None:
    """Writes `model`/`variables` as a HF folder that `transformers.<HeadClass>.from_pretrained(path)`
    loads with identical outputs: config.json and model.safetensors, or, when the weights exceed
    `max_shard_size` (bytes, or "200MB", "5GB": transformers' units and default), the safetensors index and
    shards, named as transformers names them.

    Nothing is written unless the head is a HF one, HF can express the config (`to_hf_dict`) and
    `variables` match the model (`check_variables`). The files are written atomically (`_write_folder`):
    a failure leaves an existing folder as it was, and weight files of an earlier save that this one
    replaces are removed once the new ones are in place.
    """
    name = next((k for k, v in HEADS.items() if v is type(model)), None)
    if name is None:
        raise ValueError(
            f"{type(model).__name__} is not a HF Perceiver head; cannot save it for transformers."
        )
    max_shard_bytes = parse_size(max_shard_size)
    config = json.dumps(
        model.config.replace(architectures=(name,)).to_hf_dict(name), indent=2, sort_keys=True
    )
    check_variables(model, variables)
    state = to_hf_state_dict(variables)
    shards = _split_into_shards(state, max_shard_bytes)
    files = {
        shard: functools.partial(_write_safetensors, {key: state[key] for key in keys})
        for shard, keys in shards.items()
    }
    if len(shards) > 1:
        num_parameters = sum(leaf.size for leaf in jax.tree_util.tree_leaves(nn.unbox(variables["params"])))
        files[SAFETENSORS_INDEX] = functools.partial(_write_text, _shard_index(shards, state, num_parameters))
    files["config.json"] = functools.partial(_write_text, config + "\n")
    _write_folder(os.fspath(path), files)
