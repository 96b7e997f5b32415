"""Byte corpora for masked language modelling: documents -> byte windows -> masked examples.

Documents (the embedded `pydoc_data.topics` text, or user files memory-mapped) are cut into fixed-length
byte `Windows` (a random-access source), every `holdout_every`-th one held out for eval; `MaskBytes`
turns a window into a BERT-masked example with the tokenizer's `[CLS] bytes [SEP]` encoding.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

import numpy as np

from perceiver_jax.tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SEP_ID, VOCAB_SIZE

Example = dict[str, np.ndarray]


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


class MaskBytes:
    """Masked-LM transform: a byte window (uint8 `(n,)`, n <= seq_len - 2) -> `inputs` (masked ids),
    `attention_mask`, `targets` (the original ids) and `weights` (1 where masked: the loss positions),
    all `(seq_len,)`. The masking comes from the given `rng`."""

    def __init__(self, seq_len: int, mask_prob: float):
        self.seq_len, self.mask_prob = seq_len, mask_prob

    def __call__(self, window: np.ndarray, rng: np.random.Generator) -> Example:
        ids, attention_mask = encode(window, self.seq_len)
        inputs, weights = mask_bytes(ids, rng, self.mask_prob)
        return dict(inputs=inputs, attention_mask=attention_mask, targets=ids, weights=weights)
