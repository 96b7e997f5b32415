"""Input pipelines on Grain: global batches, of which each process builds only the rows its devices hold.

Train: the source in a global order (shuffled with `seed`, reshuffled every epoch, repeated) -> the rows of
each global batch this process holds (`local_rows`) -> each example's transform with a generator seeded
by (seed, its global position) -> batches of this process's rows -> optional worker processes
(`mp_prefetch`) that transform and batch while the device steps. A batch is a function of (seed, its
index) alone: not of the number of processes, workers or devices. The iterator state (Grain's, saved in
the checkpoint) counts the batches consumed; with another process count it is rebuilt from that count.

Eval: the eval source in order, in global batches; the last one is padded with copies of example 0 whose
`weights` are 0, so sums over batches count every example once.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import grain
import jax
from absl import flags
import numpy as np

Example = dict[str, np.ndarray]
Transform = Callable[[Any, np.random.Generator], Example]


def local_rows(sharding: jax.sharding.Sharding, global_batch: int) -> np.ndarray:
    """Global batch rows whose data this process must provide, ascending: the union of the row ranges of
    its devices' shards under `sharding` (a sharding of the leading, batch dimension)."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    return np.array(sorted({r for (rows,) in index_map.values() for r in range(*rows.indices(global_batch))}))


def to_global(local: Example, sharding: jax.sharding.Sharding, global_batch: int) -> dict[str, jax.Array]:
    """This process's rows (arrays `(len(local_rows), ...)`) -> global arrays `(global_batch, ...)`."""
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:]), local
    )


class _LocalRows(grain.MapDataset):
    """Element j of this process: `(position, record)` with position = b * global_batch + rows[r], for
    (b, r) = divmod(j, len(rows)), the r-th of its rows of global batch b."""

    def __init__(self, parent: grain.MapDataset, rows: np.ndarray, global_batch: int):
        super().__init__(parent)
        self._rows, self._global_batch = [int(r) for r in rows], global_batch

    def __len__(self) -> int:
        return len(self._parent) // self._global_batch * len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, len(self._rows))
        position = batch * self._global_batch + self._rows[row]
        return position, self._parent[position]


class _Apply:
    """`(position, record)` -> `transform(record, np.random.default_rng([seed, position]))` (picklable, so
    Grain worker processes can run it)."""

    def __init__(self, transform: Transform, seed: int):
        self.transform, self.seed = transform, seed

    def __call__(self, element: tuple[int, Any]) -> Example:
        position, record = element
        return self.transform(record, np.random.default_rng([self.seed, position]))


class _Padded(grain.MapDataset):
    """The source extended to a multiple of `global_batch` with copies of element 0 of weight 0."""

    def __init__(self, parent: grain.MapDataset, global_batch: int):
        super().__init__(parent)
        self._length = -(-len(parent) // global_batch) * global_batch

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return (index < len(self._parent), self._parent[index if index < len(self._parent) else 0])


class _ApplyEval:
    """`(position, (real, record))` -> the transformed record (generator seeded by (seed, position)), its
    `weights` zeroed when it only pads the last batch."""

    def __init__(self, transform: Transform, seed: int):
        self.transform, self.seed = transform, seed

    def __call__(self, element: tuple[int, tuple[bool, Any]]) -> Example:
        position, (real, record) = element
        example = self.transform(record, np.random.default_rng([self.seed, position]))
        return {**example, "weights": example["weights"] * np.float32(real)}


def train_batches(
    source: Any,
    transform: Transform | Sequence[tuple[int, Transform]],
    *,
    global_batch: int,
    rows: np.ndarray,
    seed: int,
    num_workers: int = 0,
    start_batch: int = 0,
) -> grain.DatasetIterator:
    """Endless batches (dicts of `(len(rows), ...)` arrays) of this process's rows of the global batches
    `start_batch`, `start_batch + 1`, ... (see the module docstring); `num_workers` > 0 transforms in that
    many worker processes. `transform` may be a curriculum: ((first batch, transform), ...) from batch 0,
    each transform applied from its first batch to the next one's."""
    if len(source) < global_batch:
        raise ValueError(
            f"the training set has {len(source)} examples, fewer than one global batch ({global_batch}); "
            "use a smaller config.global_batch_size or more data."
        )
    phases = ((0, transform),) if callable(transform) else tuple(transform)
    examples = _LocalRows(grain.MapDataset.source(source).seed(seed).shuffle().repeat(), rows, global_batch)
    ends = [start for start, _ in phases[1:]] + [None]
    batches = grain.MapDataset.concatenate(
        [
            examples.map(_Apply(phase, seed)).batch(len(rows), drop_remainder=True)[start:end]
            for (start, phase), end in zip(phases, ends)
        ]
    )
    read = grain.ReadOptions(num_threads=max(num_workers, 1), prefetch_buffer_size=2)
    iterator = batches[start_batch:].to_iter_dataset(read)
    if num_workers > 0:
        # Grain's workers read absl flags; outside absl.app (tests) parse none.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iterator = iterator.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=_exit_with_parent
        )
    return iter(iterator)


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker initialiser: the worker exits within a second of the trainer's death, even by kill -9
    (Grain's workers otherwise outlive a killed parent)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def eval_batches(
    source: Any,
    transform: Transform,
    *,
    global_batch: int,
    rows: np.ndarray,
    seed: int,
    max_batches: int = -1,
) -> Iterator[Example]:
    """The eval split in order, in global batches (at most `max_batches`; -1: all), this process's rows;
    example i transformed with a generator seeded by (seed, i), so every eval sees the same examples."""
    padded = _LocalRows(_Padded(grain.MapDataset.source(source), global_batch), rows, global_batch)
    batches = padded.map(_ApplyEval(transform, seed)).batch(len(rows))
    count = len(batches) if max_batches < 0 else min(len(batches), max_batches)
    return (batches[i] for i in range(count))
