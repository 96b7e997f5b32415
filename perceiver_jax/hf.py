"""Hugging Face weights in and out: `from_pretrained`, `save_pretrained` and the state-dict mapping.

Every Flax parameter path maps to one HF key (or one per layer for the scanned self-attention stack);
the table below holds the few names that differ. Reading `model.safetensors` needs no torch; a legacy
`pytorch_model.bin` needs torch installed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from perceiver_jax.config import PerceiverConfig
from perceiver_jax.heads import HEADS, PerceiverHead
from perceiver_jax.settings import Settings

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


def load_hf_state_dict(folder: str) -> dict[str, np.ndarray]:
    """Reads `model.safetensors` (no torch needed) or `pytorch_model.bin` (needs torch) from `folder`."""
    safetensors_path = os.path.join(folder, "model.safetensors")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(safetensors_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"{safetensors_path} is not a readable safetensors file ({e}); re-download or "
                "re-save the checkpoint."
            ) from e
    if os.path.isfile(bin_path):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{bin_path} is a torch pickle: install torch to read it, or convert the folder "
                "to model.safetensors."
            ) from e
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a corrupt pickle
            raise ValueError(f"{bin_path} could not be read by torch ({e}).") from e
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    raise FileNotFoundError(f"{folder!r} has neither model.safetensors nor pytorch_model.bin.")


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


def convert_state_dict(model: PerceiverHead, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """HF state dict -> Flax variables of `model`, or ValueError listing missing/unexpected/mis-shaped keys."""
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

        def show(keys):
            return (
                "\n    " + "\n    ".join(keys[:20]) + ("\n    ..." if len(keys) > 20 else "")
                if keys
                else " none"
            )

        raise ValueError(
            f"checkpoint does not match {type(model).__name__} with this config "
            f"(wrong head or model size?).\n  missing keys ({len(missing)}):{show(missing)}\n"
            f"  unexpected keys ({len(unexpected)}):{show(unexpected)}\n"
            f"  mis-shaped keys ({len(misshaped)}):{show(misshaped)}"
        )
    return {
        c: traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat_out[c].items()}) for c in flat_out
    }


def from_pretrained(
    path: str,
    *,
    dtype: Any = None,
    settings: Settings | None = None,
    head: str | None = None,
    **head_kwargs,
) -> tuple[PerceiverHead, dict[str, Any]]:
    """Loads a HF Perceiver folder (`config.json` + weights) as `(model, variables)`.

    The head class comes from `architectures` in config.json unless `head` names one. `settings` (default
    `Settings()`) say how it computes; `dtype` is a shortcut for `settings.dtype` (parameters stay
    float32). `head_kwargs` go to the head (e.g. `chunk_size`).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a folder; expected a HF model folder with config.json.")
    settings = settings or Settings()
    if dtype is not None:
        settings = settings.replace(dtype=dtype)
    config = PerceiverConfig.from_hf(path)
    model = head_from_config(config, head)(config, settings=settings, **head_kwargs)
    return model, convert_state_dict(model, load_hf_state_dict(path))


def save_pretrained(model: PerceiverHead, variables: Mapping[str, Any], path: str) -> None:
    """Writes `model`/`variables` as a HF folder (config.json + model.safetensors) that
    `transformers.<HeadClass>.from_pretrained(path)` loads with identical outputs."""
    from safetensors.numpy import save_file

    name = next((k for k, v in HEADS.items() if v is type(model)), None)
    if name is None:
        raise ValueError(
            f"{type(model).__name__} is not a HF Perceiver head; cannot save it for transformers."
        )
    config = model.config.replace(architectures=(name,))
    state = to_hf_state_dict(variables)
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, "model.safetensors.tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
