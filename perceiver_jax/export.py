"""A head as serialized StableHLO (`jax.export`), for serving from Python or C++.

The exported function is `(variables, inputs[, attention_mask]) -> outputs`, the head's `model.apply` at
inference. The variables are arguments, not constants, so one artifact serves every checkpoint of that
head and config; the leading (batch) axis of every input is the symbolic dimension `batch`, so it serves
any batch size. Every other input dimension and every dtype is fixed at export by the example inputs:

- text heads: token ids `(batch, T)` int32 and the attention mask `(batch, T)` (pass both examples; T is
  the one length served, pad to it);
- image heads `(batch, H, W, 3)`; optical flow `(batch, 2, H, W, 27)`;
- multimodal: the inputs dict (`image`, `audio`, `label`, all batched) and optionally the mask. Keyword
  arguments of `__call__` are fixed at export, not arguments: `subsampled_output_points` given there are
  baked in as constants; without them every output point is decoded.

In Python: `serialize(export_head(...))` -> bytes -> `deserialize` -> `call_exported(exported, variables,
inputs[, attention_mask])`. From C++: `exported.mlir_module_serialized` is a StableHLO portable artifact
whose arguments are the leaves of `(variables, inputs[, attention_mask])` in `jax.tree_util.tree_flatten`
order (dict keys sorted), all kept (`exported.in_avals` gives their shapes, `batch` dynamic); exported
for several `platforms`, it takes the platform index as a first argument.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from flax.core import unfreeze

from perceiver_jax.heads import PerceiverHead
from perceiver_jax.hf import check_variables


def _plain(variables: Mapping[str, Any]) -> dict[str, Any]:
    """`variables` as nested plain dicts of arrays (no FrozenDict, no partitioning boxes): the tree the
    exported function takes."""
    return unfreeze(nn.unbox(variables))


def export_head(
    model: PerceiverHead,
    variables: Mapping[str, Any],
    inputs: Any,
    attention_mask: Any = None,
    *,
    platforms: Sequence[str] | None = None,
    **call_kwargs: Any,
) -> jax.export.Exported:
    """Exports `model.apply(variables, inputs, attention_mask=..., **call_kwargs)` with the variables as
    arguments.

    Args:
      model: a head (any of `HEADS`).
      variables: its variables (arrays or `jax.ShapeDtypeStruct`s; only shapes and dtypes are used).
      inputs: example inputs: an array or `ShapeDtypeStruct` (a dict of them for the multimodal head), each
        with a leading batch axis; their other dimensions and dtypes are the ones served.
      attention_mask: an example mask `(batch, M)` to serve one (None: no mask argument).
      platforms: e.g. ("cpu", "cuda", "tpu"); default: the default backend's platform.
      **call_kwargs: other keyword arguments of the head's `__call__`, fixed at export (arrays become
        constants).

    Returns:
      The `jax.export.Exported` function `(variables, inputs[, attention_mask]) -> outputs`, batch axis
      symbolic.
    """
    check_variables(model, variables)
    (batch,) = jax.export.symbolic_shape("batch")

    def batched(x: Any) -> jax.ShapeDtypeStruct:
        shape = tuple(getattr(x, "shape", ()))
        if not shape:
            raise ValueError(
                f"every input must be an array (or ShapeDtypeStruct) with a leading batch axis; got {x!r}."
            )
        return jax.ShapeDtypeStruct((batch, *shape[1:]), x.dtype)

    def serve(variables: dict[str, Any], *arrays: Any) -> Any:
        return model.apply(
            variables, *arrays[:1], **dict(zip(("attention_mask",), arrays[1:])), **call_kwargs
        )

    variable_specs = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _plain(variables)
    )
    arrays = (inputs,) if attention_mask is None else (inputs, attention_mask)
    exporter = jax.export.export(jax.jit(serve, keep_unused=True), platforms=platforms)
    return exporter(variable_specs, *jax.tree_util.tree_map(batched, arrays))


def serialize(exported: jax.export.Exported) -> bytes:
    """The bytes of `exported` (jax's serialization: the StableHLO module and its calling convention)."""
    return bytes(exported.serialize())


def deserialize(data: bytes) -> jax.export.Exported:
    """The `jax.export.Exported` that `serialize` wrote, or ValueError if `data` is not one."""
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as e:  # the flatbuffer reader raises many types for foreign bytes
        raise ValueError(
            f"data ({len(data)} bytes) is not a serialized jax.export module ({type(e).__name__}: {e}); "
            "write it with perceiver_jax.export.serialize."
        ) from e


def call_exported(
    exported: jax.export.Exported, variables: Mapping[str, Any], inputs: Any, attention_mask: Any = None
) -> Any:
    """Runs the exported head on `variables` (as from `from_pretrained` or `model.init`, boxed or frozen
    alike), `inputs` and (if it was exported with one) `attention_mask`, of the exported shapes past the
    batch axis; returns the head's outputs."""
    arrays = (inputs,) if attention_mask is None else (inputs, attention_mask)
    return exported.call(_plain(variables), *arrays)
