"""Deterministic, resumable, multi-host input pipelines over byte corpora.

documents (the embedded `pydoc_data.topics` text, or user files memory-mapped) -> fixed-length byte
`Windows`, every `holdout_every`-th one held out for eval -> task examples (a source: `len(source)` and
`source(index, rng) -> dict of arrays`) -> global batches (`BatchIterator`), of which each process builds
only the rows its devices hold (`local_rows`, `to_global`).

Determinism: epoch e visits the examples in a permutation seeded by (seed, e), and example i's randomness
(its masking) comes from a generator seeded by (seed, e, i). A batch therefore depends only on the
iterator state {seed, epoch, position}, which checkpoints store, and not on the number of processes.
"""

from __future__ import annotations

import glob
import os
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from perceiver_jax.tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SEP_ID, VOCAB_SIZE

Example = dict[str, np.ndarray]
Source = Callable[[int, np.random.Generator], Example]  # plus __len__


def embedded_corpus() -> bytes:
    """The default corpus: Python's `pydoc_data.topics` (79 help topics, ~466 KB of English), UTF-8."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics)).encode()


def load_documents(files: str | Sequence[str]) -> list[np.ndarray]:
    """Byte documents (uint8 `(n,)` arrays): the embedded corpus when `files` is empty, else every file
    matched by `files` (comma-separated glob patterns, or a list of them), memory-mapped.

    Raises FileNotFoundError naming every pattern that matches no file.
    """
    patterns = [p for p in files.split(",") if p] if isinstance(files, str) else list(files)
    if not patterns:
        return [np.frombuffer(embedded_corpus(), np.uint8)]
    paths, missing = [], []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
        paths += matches
        if not matches:
            missing.append(pattern)
    if missing:
        raise FileNotFoundError(f"config.data.files: no file matches {missing}.")
    docs = [np.memmap(p, np.uint8, mode="r") for p in paths if os.path.getsize(p)]
    if not docs:
        raise ValueError(f"config.data.files: every file is empty: {paths}.")
    return docs


class Windows:
    """Byte windows of `length` bytes cut from each document at multiples of `length` (a document's last
    window may be shorter). Numbered over all documents, window w belongs to the eval split when
    `w % holdout_every == 0`, else to the train split: a fixed split, whatever the seed."""

    def __init__(self, docs: list[np.ndarray], length: int, split: str, holdout_every: int):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
        if holdout_every < 2:
            raise ValueError(f"config.data.holdout_every must be >= 2, got {holdout_every}.")
        self.docs, self.length = docs, length
        doc_ids = np.concatenate([np.full(-(-len(d) // length), i) for i, d in enumerate(docs)])
        starts = np.concatenate([np.arange(0, len(d), length) for d in docs])
        keep = (np.arange(len(starts)) % holdout_every == 0) == (split == "eval")
        self.doc_ids, self.starts = doc_ids[keep], starts[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        """Window i: uint8 `(<= length,)`."""
        start = self.starts[i]
        return np.asarray(self.docs[self.doc_ids[i]][start : start + self.length])


def encode(window: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes `(n,)`, n <= seq_len - 2 -> (ids `[CLS] bytes+6 [SEP] [PAD]...` int32 `(seq_len,)`, attention
    mask int32 `(seq_len,)`), the `PerceiverTokenizer` encoding padded to `seq_len`."""
    ids = np.zeros(seq_len, np.int32)
    ids[0], ids[1 : len(window) + 1], ids[len(window) + 1] = (
        CLS_ID,
        window.astype(np.int32) + NUM_SPECIAL_TOKENS,
        SEP_ID,
    )
    return ids, (ids != 0).astype(np.int32)


def mask_bytes(ids: np.ndarray, rng: np.random.Generator, mask_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking on byte ids `(T,)`: each byte (never a special token or padding) is picked with
    probability `mask_prob`; a picked byte becomes [MASK] (80%), a random byte (10%) or stays (10%).

    Returns (masked ids int32 `(T,)`, float32 `(T,)` 1 at the picked positions).
    """
    picked = (ids >= NUM_SPECIAL_TOKENS) & (rng.random(ids.shape) < mask_prob)
    action = rng.random(ids.shape)
    masked = np.where(picked & (action < 0.8), MASK_ID, ids)
    randomised = picked & (action >= 0.8) & (action < 0.9)
    masked[randomised] = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, randomised.sum())
    return masked.astype(np.int32), picked.astype(np.float32)


class MaskedBytes:
    """Masked-LM examples: window -> `inputs` (masked ids), `attention_mask`, `targets` (the original ids)
    and `weights` (1 where masked: the loss positions), all `(seq_len,)`."""

    def __init__(self, windows: Windows, seq_len: int, mask_prob: float):
        self.windows, self.seq_len, self.mask_prob = windows, seq_len, mask_prob

    def __len__(self) -> int:
        return len(self.windows)

    def __call__(self, index: int, rng: np.random.Generator) -> Example:
        ids, attention_mask = encode(self.windows[index], self.seq_len)
        inputs, weights = mask_bytes(ids, rng, self.mask_prob)
        return dict(inputs=inputs, attention_mask=attention_mask, targets=ids, weights=weights)


class WordOrder:
    """Sequence classification built from a text corpus: is the snippet's word order real (label 0) or
    were its space-separated words shuffled (label 1)? Shuffling keeps the bytes and their counts, so only
    word order tells the classes apart. The label and the shuffle of window w are fixed (seeded by w), so
    this is a fixed labelled dataset, half of each class in expectation.

    Examples: `inputs`, `attention_mask` `(seq_len,)`, `targets` (the label) and `weights` (1.0) scalars.
    """

    LABELS = ("real", "shuffled")

    def __init__(self, windows: Windows, seq_len: int):
        self.windows, self.seq_len = windows, seq_len

    def __len__(self) -> int:
        return len(self.windows)

    def __call__(self, index: int, rng: np.random.Generator) -> Example:
        del rng  # the dataset is fixed: its randomness depends on the window only
        window = self.windows[index]
        fixed = np.random.default_rng(
            [0x5EC, int(self.windows.starts[index]), int(self.windows.doc_ids[index])]
        )
        label = int(fixed.integers(2))
        if label:
            words = bytes(window).split(b" ")
            window = np.frombuffer(b" ".join(words[i] for i in fixed.permutation(len(words))), np.uint8)
        inputs, attention_mask = encode(window, self.seq_len)
        return dict(
            inputs=inputs, attention_mask=attention_mask, targets=np.int32(label), weights=np.float32(1)
        )


def local_rows(sharding: jax.sharding.Sharding, global_batch: int) -> np.ndarray:
    """Global batch rows whose data this process must provide, ascending: the union of the row ranges of
    its devices' shards under `sharding` (a sharding of the leading, batch dimension)."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    return np.array(sorted({r for (rows,) in index_map.values() for r in range(*rows.indices(global_batch))}))


def to_global(local: Example, sharding: jax.sharding.Sharding, global_batch: int) -> dict[str, jax.Array]:
    """This process's rows (arrays `(len(local_rows), ...)`) -> global arrays `(global_batch, ...)`."""
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
        for k, v in local.items()
    }


def _stack(examples: list[Example]) -> Example:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class BatchIterator:
    """Endless global batches of a source's examples, reshuffled every epoch; yields this process's rows.

    Batch k of epoch e holds examples `permutation(seed, e)[position : position + global_batch]` with
    `position = k * global_batch`; the incomplete tail of an epoch is dropped. The state
    {seed, epoch, position} (`state` / `restore`) is JSON and identical on every process.
    """

    def __init__(self, source: Source, global_batch: int, rows: np.ndarray, seed: int):
        if len(source) < global_batch:
            raise ValueError(
                f"the training split has {len(source)} examples, fewer than one global batch ({global_batch}): "
                "use more data, a shorter config.data.seq_len or a smaller config.global_batch_size."
            )
        self.source, self.global_batch, self.rows = source, global_batch, rows
        self.seed, self.epoch, self.position = seed, 0, 0
        self._order = (None, None)

    def state(self) -> dict[str, int]:
        """The position of the next batch, JSON-serialisable."""
        return dict(seed=self.seed, epoch=self.epoch, position=self.position)

    def restore(self, state: dict[str, int]) -> None:
        """Continues from `state()` of an earlier iterator over the same source."""
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        if self.position + self.global_batch > len(self.source):
            self.epoch, self.position = self.epoch + 1, 0
        if self._order[0] != self.epoch:
            self._order = (
                self.epoch,
                np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source)),
            )
        indices = self._order[1][self.position + self.rows]
        self.position += self.global_batch
        return _stack([self.source(i, np.random.default_rng([self.seed, self.epoch, i])) for i in indices])


def eval_batches(
    source: Source, global_batch: int, rows: np.ndarray, seed: int, max_batches: int
) -> Iterator[Example]:
    """The eval split in order, in global batches (at most `max_batches`; -1: all), this process's rows.

    Masking is fixed (seeded by (seed, index)). The last batch is padded with copies of example 0 whose
    `weights` are zero, so sums over batches count every example once.
    """
    num_batches = -(-len(source) // global_batch)
    for b in range(num_batches if max_batches < 0 else min(num_batches, max_batches)):
        examples = []
        for i in b * global_batch + rows:
            index = int(i) if i < len(source) else 0
            example = source(index, np.random.default_rng([seed, index]))
            example["weights"] = example["weights"] * np.float32(i < len(source))
            examples.append(example)
        yield _stack(examples)
