"""`PerceiverTokenizer`: Perceiver's byte-level tokenizer, id-for-id identical to Hugging Face's (numpy only).

Text is encoded as UTF-8 and byte b becomes id b + 6. Ids 0-5 are the special tokens [PAD] [BOS] [EOS]
[MASK] [CLS] [SEP], 262 ids in all. A special token's string inside text (such as "[MASK]") becomes its
id. With special tokens added, a sequence is `[CLS] x [SEP]` and a pair is `[CLS] a [SEP] b [SEP]`.
Padding uses [PAD] (0) and goes on the right.

Padding and truncation follow `transformers.PerceiverTokenizer`, including these less obvious rules:
- `max_length` counts the special tokens, which are never removed. A strategy that cannot remove enough
  tokens leaves the result longer than `max_length`. For example, 'only_second' on a single sequence
  removes nothing, and `max_length=1` still keeps [CLS] and [SEP].
- `max_length` on its own (padding False, truncation None) turns on 'longest_first' truncation. If
  `padding` is set and `truncation` is None, nothing is truncated.
- 'max_length' padding never shortens a sequence; a longer sequence is returned as it is.
- `padding=True` ('longest') ignores `max_length` (with a warning, as HF gives).
- `truncation=True` or `padding='max_length'` without `max_length` use `model_max_length` (2048).
- 'longest_first' on a pair first cuts the longer sequence down to the shorter one's length, then cuts
  both equally; when the number left to cut is odd, the second sequence loses the extra token.

Differences from HF, all limited to inputs HF handles badly:
- Only `str` text is accepted, not pre-tokenized lists or lists of ids (TypeError).
- `max_length < 1` is rejected. HF ignores 0 and removes too much for negative values.
- 'np' and 'jax' tensors are int32. A ragged batch raises instead of giving an object array.
- `vocab_size` is 262, the size of the model's embedding. HF's property returns 256 (bytes only), while
  its `len(tokenizer)` is 262.
- Unknown tokens in `convert_tokens_to_ids` raise instead of giving None.
"""

from __future__ import annotations

import operator
import re
import warnings
from typing import Any, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")  # ids 0..5
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
VOCAB_SIZE = NUM_SPECIAL_TOKENS + 256
PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(NUM_SPECIAL_TOKENS)

_SPECIAL_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
_SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")
_PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
_TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
_TENSOR_TYPES = (None, "np", "jax")


def _drop_last(ids: list[int], n: int) -> list[int]:
    """`ids` without its last `n` items (all of them when n >= len(ids))."""
    return ids[: max(len(ids) - n, 0)]


def _truncate(
    ids: list[int], pair_ids: list[int] | None, n: int, strategy: str
) -> tuple[list[int], list[int] | None]:
    """Removes `n` > 0 tokens from the right, as HF's `truncate_sequences` does."""
    if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
        return _drop_last(ids, n), pair_ids
    if strategy == "only_second":
        return ids, None if pair_ids is None else _drop_last(pair_ids, n)
    # longest_first on a pair: first even out the lengths, then split the rest (the pair gets the odd one).
    first = min(abs(len(pair_ids) - len(ids)), n)
    rest = n - first
    if len(ids) > len(pair_ids):
        n_ids, n_pair = first + rest // 2, rest - rest // 2
    else:
        n_ids, n_pair = rest // 2, first + rest - rest // 2
    return _drop_last(ids, n_ids), _drop_last(pair_ids, n_pair)


def _to_python(ids: Any) -> Any:
    """Turns a numpy/jax/torch array or scalar into (nested) python lists / ints; lists pass through."""
    return ids if isinstance(ids, (int, list, tuple)) else np.asarray(ids).tolist()


def _to_tensor(batch: list[list[int]], return_tensors: str | None) -> Any:
    """Converts a batch of equal-length id lists to a (B, L) int32 numpy or jax array (None: unchanged)."""
    if return_tensors is None:
        return batch
    if len({len(ids) for ids in batch}) > 1:
        raise ValueError(
            "Cannot make a tensor from sequences of different lengths; pad them with padding=True, or "
            "padding='max_length' plus truncation=True when some are longer than max_length."
        )
    array = np.array(batch, dtype=np.int32)
    if return_tensors == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    return array


class PerceiverTokenizer:
    """Byte-level Perceiver tokenizer; see the module docstring for the exact rules."""

    def __init__(self, model_max_length: int = 2048):
        """`model_max_length`: the length used by truncation and 'max_length' padding when `max_length`
        is None."""
        self.model_max_length = model_max_length

    pad_token_id = property(lambda self: PAD_ID, doc="int: id of [PAD] (0).")
    bos_token_id = property(lambda self: BOS_ID, doc="int: id of [BOS] (1).")
    eos_token_id = property(lambda self: EOS_ID, doc="int: id of [EOS] (2).")
    mask_token_id = property(lambda self: MASK_ID, doc="int: id of [MASK] (3).")
    cls_token_id = property(lambda self: CLS_ID, doc="int: id of [CLS] (4).")
    sep_token_id = property(lambda self: SEP_ID, doc="int: id of [SEP] (5).")
    vocab_size = property(lambda self: VOCAB_SIZE, doc="int: number of ids, 262 (6 special + 256 bytes).")

    def __len__(self) -> int:
        """Number of ids, 262 (same as `vocab_size`)."""
        return VOCAB_SIZE

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Maps tokens to ids.

        Args:
          tokens: one token or a sequence of tokens. A token is a special token string ("[MASK]") or a
            single character whose code point is a byte value (0-255).

        Returns:
          an int for one token, or a list of ints with the same length as `tokens`.

        Raises:
          ValueError: when a token is neither of these.
        """
        if not isinstance(tokens, str):
            return [self.convert_tokens_to_ids(token) for token in tokens]
        if tokens in _SPECIAL_IDS:
            return _SPECIAL_IDS[tokens]
        if len(tokens) == 1 and ord(tokens) < 256:
            return ord(tokens) + NUM_SPECIAL_TOKENS
        raise ValueError(f"{tokens!r} is not a token: expected a special token or one byte-valued character.")

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_attention_mask: bool = True,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Tokenizes a sequence, a pair of sequences, or a batch of either.

        Args:
          text: a str, or a list/tuple of B str (a batch).
          text_pair: optional second sequence(s), with the same form as `text` (a batch of B for a batch).
          add_special_tokens: add [CLS]/[SEP] around the sequence(s).
          padding: False/'do_not_pad', True/'longest' (pad to the longest sequence in the batch), or
            'max_length' (pad to `max_length`, or to `model_max_length` if it is None).
          truncation: None (the default: 'longest_first' if only `max_length` is given, otherwise off),
            False/'do_not_truncate', True/'longest_first', 'only_first' or 'only_second'. The limit is
            `max_length` (or `model_max_length`), special tokens included.
          max_length: positive int or None.
          return_attention_mask: also return `attention_mask` (1 for tokens, 0 for padding).
          return_tensors: None (python lists), 'np' (numpy int32) or 'jax' (jax int32).

        Returns:
          dict with `input_ids` and, if asked for, `attention_mask`. Each is a list of L ints for one str,
          a list of B lists for a batch, or an array of shape (1, L) or (B, L) when `return_tensors` is
          set.

        Raises:
          TypeError: a text that is not a str.
          ValueError: an unknown strategy or tensor type, a bad `max_length`, an empty batch, a
            `text_pair` batch whose length differs from `text`, or a ragged batch with `return_tensors`.
        """
        padding, truncation, max_length = self._strategies(padding, truncation, max_length)
        if return_tensors not in _TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {_TENSOR_TYPES}, got {return_tensors!r}.")

        is_batch = isinstance(text, (list, tuple))
        if not is_batch:
            texts, pairs = [text], [text_pair]
        elif not text:
            raise ValueError("`text` is an empty batch.")
        elif text_pair is None:
            texts, pairs = text, [None] * len(text)
        elif isinstance(text_pair, (list, tuple)) and len(text_pair) == len(text):
            texts, pairs = text, text_pair
        else:
            raise ValueError("When `text` is a batch, `text_pair` must be a batch of the same length.")

        input_ids = [
            self._encode_one(a, b, add_special_tokens, truncation, max_length) for a, b in zip(texts, pairs)
        ]
        lengths = [len(ids) for ids in input_ids]
        target = {"longest": max(lengths), "max_length": max_length, "do_not_pad": 0}[padding]
        attention_mask = [[1] * len(ids) + [0] * (target - len(ids)) for ids in input_ids]
        input_ids = [ids + [PAD_ID] * (target - len(ids)) for ids in input_ids]

        out = {"input_ids": input_ids}
        if return_attention_mask:
            out["attention_mask"] = attention_mask
        if return_tensors is None and not is_batch:
            return {key: value[0] for key, value in out.items()}
        return {key: _to_tensor(value, return_tensors) for key, value in out.items()}

    def encode(
        self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, **options: Any
    ) -> list[int] | list[list[int]]:
        """Returns only the `input_ids` of `self(text, text_pair, **options)`: a list of L ints for a str, a
        list of B lists for a batch. `options` are `__call__`'s `add_special_tokens`, `padding`,
        `truncation` and `max_length`."""
        return self(text, text_pair, **options, return_attention_mask=False)["input_ids"]

    def decode(self, token_ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        """Turns ids back into text.

        The bytes are joined and decoded as UTF-8 with errors="replace", so invalid byte sequences become
        U+FFFD. Special tokens become their strings ("[CLS]"), or are dropped with `skip_special_tokens`.

        Args:
          token_ids: an int, a sequence/1-D array of L ints, or a nested sequence/2-D array of B rows.
          skip_special_tokens: drop ids 0-5.

        Returns:
          a str, or a list of B str for 2-D input.

        Raises:
          ValueError: an id outside [0, 262).
          TypeError: an id that is not an integer.
        """
        ids = _to_python(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(_to_python(ids[0]), (list, tuple)):
            return self.batch_decode(ids, skip_special_tokens)
        data = bytearray()
        for i in map(operator.index, ids):
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"Token id {i} is outside the vocabulary [0, {VOCAB_SIZE}).")
            if i >= NUM_SPECIAL_TOKENS:
                data.append(i - NUM_SPECIAL_TOKENS)
            elif not skip_special_tokens:
                data += SPECIAL_TOKENS[i].encode()
        return data.decode("utf-8", errors="replace")

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """Decodes each row of `sequences` (a sequence of B id sequences or a (B, L) array) with `decode`.

        Returns a list of B str.
        """
        return [self.decode(ids, skip_special_tokens) for ids in _to_python(sequences)]

    def _strategies(
        self, padding: bool | str, truncation: bool | str | None, max_length: int | None
    ) -> tuple[str, str, int | None]:
        """Validates the arguments and resolves them, as HF's `_get_padding_truncation_strategies` does.

        Returns (padding, truncation, max_length): strategy names, and the length limit (None only when
        neither padding to a length nor truncation needs one).
        """
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}.")
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True and max_length is not None and truncation in (None, False, "do_not_truncate"):
            warnings.warn(
                "max_length is ignored when padding=True and truncation is off; use padding='max_length'."
            )

        padding = {True: "longest", False: "do_not_pad"}[padding] if isinstance(padding, bool) else padding
        if padding not in _PADDING_STRATEGIES:
            raise ValueError(f"padding must be a bool or one of {_PADDING_STRATEGIES}, got {padding!r}.")
        if truncation is None or isinstance(truncation, bool):
            truncation = "longest_first" if truncation else "do_not_truncate"
        if truncation not in _TRUNCATION_STRATEGIES:
            raise ValueError(
                f"truncation must be a bool, None or one of {_TRUNCATION_STRATEGIES}, got {truncation!r}."
            )

        if max_length is None and (padding == "max_length" or truncation != "do_not_truncate"):
            max_length = self.model_max_length
        return padding, truncation, max_length

    def _encode_one(
        self,
        text: str,
        text_pair: str | None,
        add_special_tokens: bool,
        truncation: str,
        max_length: int | None,
    ) -> list[int]:
        """Ids of one sequence or pair, truncated (special tokens counted) and with special tokens."""
        ids = self._text_to_ids(text)
        pair_ids = None if text_pair is None else self._text_to_ids(text_pair)
        num_special = (2 if pair_ids is None else 3) if add_special_tokens else 0
        if truncation != "do_not_truncate":
            excess = len(ids) + len(pair_ids or ()) + num_special - max_length
            if excess > 0:
                ids, pair_ids = _truncate(ids, pair_ids, excess, truncation)
        if not add_special_tokens:
            return ids + (pair_ids or [])
        if pair_ids is None:
            return [CLS_ID, *ids, SEP_ID]
        return [CLS_ID, *ids, SEP_ID, *pair_ids, SEP_ID]

    @staticmethod
    def _text_to_ids(text: str) -> list[int]:
        """UTF-8 bytes + 6, with special token strings in `text` mapped to their ids."""
        if not isinstance(text, str):
            raise TypeError(f"Text must be a str, got {type(text).__name__}.")
        ids = []
        # With one capture group, re.split alternates plain text (even) and special tokens (odd).
        for k, piece in enumerate(_SPECIAL_SPLIT.split(text)):
            if k % 2:
                ids.append(_SPECIAL_IDS[piece])
            else:
                ids.extend(byte + NUM_SPECIAL_TOKENS for byte in piece.encode("utf-8"))
        return ids
