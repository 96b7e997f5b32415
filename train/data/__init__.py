"""Host-side data: random-access sources of records and the transforms that turn a record into an example.

A source has `len(source)` and `source[i] -> record`; a transform is `transform(record, rng) -> example`, a
dict of numpy arrays of fixed shapes (all randomness from the `np.random.Generator`; eval transforms ignore
it). Every example carries `weights` (1.0; the pipeline sets 0 on padding). `train.pipeline` batches them
with Grain. Modules: `text` (byte corpora, masked LM), `labelled_text` (CSV / TSV / JSONL), `images` and
`augment` (image folders, digits, DeepMind's ImageNet augmentation), `flow` (optical-flow formats, datasets,
synthetic flow), `multimodal` (video + audio + label clips).
"""

from __future__ import annotations

from typing import Any, Sequence


class Subset:
    """The records `indices` of `source`, a random-access source itself (picklable)."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[self.indices[index]]


def every_kth(source: Any, k: int) -> tuple[Subset, Subset]:
    """(train, eval) views of `source`: record i goes to eval when i % k == 0 (a fixed split)."""
    if k < 2:
        raise ValueError(f"the eval split takes every k-th record; k must be >= 2, got {k}.")
    indices = range(len(source))
    return Subset(source, [i for i in indices if i % k]), Subset(source, indices[::k])
