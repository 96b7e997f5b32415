"""A head as serialized StableHLO (`jax.export`), for serving from Python or C++.

The exported function is `(variables, *inputs) -> outputs`, the head's `model.apply` at inference. The
variables are arguments, not constants, so one artifact serves every checkpoint of that head and config;
the leading (batch) axis of every input is the symbolic dimension `batch`, so it serves any batch size.
Every other input dimension and every dtype is fixed at export by the example inputs:

- text heads: token ids `(batch, T)` int32 and the attention mask `(batch, T)` (pass both examples; T is
  the one length served, pad to it);
- image heads `(batch, H, W, 3)`; optical flow `(batch, 2, H, W, 27)`;
- multimodal: the inputs dict (`image`, `audio`, `label`, all batched) and optionally the mask. Keyword
  arguments of `__call__` are fixed at export, not arguments: `subsampled_output_points` given there are
  baked in as constants; without them every output point is decoded.

In Python: `serialize(export_head(...))` -> bytes -> `deserialize` -> `call_exported(exported, variables,
*inputs)`. From C++: `exported.mlir_module_serialized` is a StableHLO portable artifact whose arguments
are the leaves of `(variables, *inputs)` in `jax.tree_util.tree_flatten` order (dict keys sorted), all
kept (`exported.in_avals` gives their shapes, `batch` dynamic); exported for several `platforms`, it takes
the platform index as a first argument.
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
    *inputs: Any,
    platforms: Sequence[str] | None = None,
    **call_kwargs: Any,
) -> jax.export.Exported:
    """Exports `model.apply(variables, *inputs, **call_kwargs)` with the variables as arguments.

    Args:
      model: a head (any of `HEADS`).
      variables: its variables (arrays or `jax.ShapeDtypeStruct`s; only shapes and dtypes are used).
      *inputs: example positional inputs: arrays or `ShapeDtypeStruct`s (or dicts of them, or None),
        each with a leading batch axis; their other dimensions and dtypes are the ones served.
      platforms: e.g. ("cpu", "cuda", "tpu"); default: the default backend's platform.
      **call_kwargs: keyword arguments of the head's `__call__`, fixed at export (arrays become constants).

    Returns:
      The `jax.export.Exported` function `(variables, *inputs) -> outputs`, batch axis symbolic.
    """
    if not inputs:
        raise TypeError(
            "export_head needs example inputs after the variables, e.g. token ids and mask (batch, T) "
            "for a text head; their shapes past the batch axis and their dtypes are what is served."
        )
    check_variables(model, variables)
    (batch,) = jax.export.symbolic_shape("batch")

    def batched(x: Any) -> jax.ShapeDtypeStruct:
        shape = tuple(getattr(x, "shape", ()))
        if not shape:
            raise ValueError(
                f"every input must be an array (or ShapeDtypeStruct) with a leading batch axis; got {x!r}."
            )
        return jax.ShapeDtypeStruct((batch, *shape[1:]), x.dtype)

    def serve(variables: dict[str, Any], *inputs: Any) -> Any:
        return model.apply(variables, *inputs, **call_kwargs)

    variable_specs = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _plain(variables)
    )
    input_specs = jax.tree_util.tree_map(batched, inputs)
    exporter = jax.export.export(jax.jit(serve, keep_unused=True), platforms=platforms)
    return exporter(variable_specs, *input_specs)


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


def call_exported(exported: jax.export.Exported, variables: Mapping[str, Any], *inputs: Any) -> Any:
    """Runs the exported head on `variables` (as from `from_pretrained` or `model.init`, boxed or frozen
    alike) and `inputs` of the exported shapes past the batch axis; returns the head's outputs."""
    return exported.call(_plain(variables), *inputs)
