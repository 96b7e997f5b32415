"""`PerceiverTokenizer` gives the same ids, masks and decoded text as `transformers.PerceiverTokenizer`."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from perceiver_jax.tokenizer import PerceiverTokenizer

transformers.logging.set_verbosity_error()
HF = transformers.PerceiverTokenizer()
TOK = PerceiverTokenizer()

TEXTS = [
    "hello world",
    "",
    "a",
    "héllo wörld, ça va? Ñandú",
    "日本語のテキスト",
    "emoji 😀👍🏽 family 👨‍👩‍👧",
    "[MASK]",
    "The [MASK] sat on the [MASK].",
    "[CLS][SEP][PAD][BOS][EOS]",
    "[[MASK]] [mask] [MASK [SEP",
    "tab\tnew\nline\r\x00\x7f",
    "  spaces  ",
    "x" * 40,
]
PAIRS = [("hello", "world"), ("", ""), ("short", "a much longer second sequence"), ("日本語", "[MASK] ok")]
BATCH = TEXTS[:6]
PAIR_BATCH = ([a for a, _ in PAIRS], [b for _, b in PAIRS])

PADDINGS = [False, True, "longest", "max_length", "do_not_pad"]
TRUNCATIONS = [None, False, True, "longest_first", "only_first", "only_second", "do_not_truncate"]
MAX_LENGTHS = [None, 1, 2, 3, 4, 7, 12, 64]


def ignores_max_length(kwargs):
    """HF (and ours) warn that padding=True ignores max_length when truncation is off."""
    return (
        kwargs.get("padding") is True
        and kwargs.get("max_length") is not None
        and kwargs.get("truncation") in (None, False, "do_not_truncate")
    )


def hf_call(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(HF(*args, **kwargs))


def ours(*args, **kwargs):
    """`TOK(...)`, checking it warns exactly when HF does."""
    if ignores_max_length(kwargs):
        with pytest.warns(UserWarning, match="max_length is ignored"):
            return TOK(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return TOK(*args, **kwargs)


def test_hello_world():
    assert TOK("hello world") == {
        "input_ids": [4, 110, 107, 114, 114, 117, 38, 125, 117, 120, 114, 106, 5],
        "attention_mask": [1] * 13,
    }


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_single(text, add_special_tokens):
    expected = hf_call(text, add_special_tokens=add_special_tokens)
    assert ours(text, add_special_tokens=add_special_tokens) == expected
    assert TOK.encode(text, add_special_tokens=add_special_tokens) == expected["input_ids"]
    assert TOK.decode(expected["input_ids"]) == HF.decode(expected["input_ids"])
    assert TOK.decode(expected["input_ids"], skip_special_tokens=True) == HF.decode(
        expected["input_ids"], skip_special_tokens=True
    )


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_pair(pair, add_special_tokens):
    expected = hf_call(*pair, add_special_tokens=add_special_tokens)
    assert ours(*pair, add_special_tokens=add_special_tokens) == expected
    assert TOK.encode(*pair, add_special_tokens=add_special_tokens) == expected["input_ids"]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("truncation", TRUNCATIONS)
@pytest.mark.parametrize("inputs", [(BATCH,), PAIR_BATCH, ("日本語 text",), ("abc", "defgh")])
def test_padding_and_truncation(inputs, padding, truncation):
    for max_length in MAX_LENGTHS:
        for add_special_tokens in (True, False):
            kwargs = dict(
                padding=padding,
                truncation=truncation,
                max_length=max_length,
                add_special_tokens=add_special_tokens,
            )
            assert ours(*inputs, **kwargs) == hf_call(*inputs, **kwargs), kwargs


@pytest.mark.parametrize(
    "kwargs",
    [dict(truncation=True), dict(padding="max_length"), dict(padding="max_length", truncation=True)],
)
def test_model_max_length_is_the_default_limit(kwargs):
    inputs = (["y" * 3000, "short"], ["z" * 10, "w" * 20])
    got = ours(*inputs, **kwargs)
    assert got == hf_call(*inputs, **kwargs)
    assert 2048 in [len(ids) for ids in got["input_ids"]]  # the long row truncated or the short one padded


def test_padding_true_ignores_max_length_with_a_warning():
    with pytest.warns(UserWarning):
        expected = dict(HF(BATCH, padding=True, max_length=3))
    assert ours(BATCH, padding=True, max_length=3) == expected == TOK(BATCH, padding=True)


def test_no_attention_mask():
    kwargs = dict(padding=True, return_attention_mask=False)
    assert ours(BATCH, **kwargs) == hf_call(BATCH, **kwargs) == {"input_ids": TOK.encode(BATCH, padding=True)}


@pytest.mark.parametrize("return_tensors", ["np", "jax"])
@pytest.mark.parametrize(
    "inputs, kwargs",
    [
        (("hello",), {}),
        (("hello", "world"), dict(max_length=6)),
        ((BATCH,), dict(padding=True)),
        (PAIR_BATCH, dict(padding="max_length", max_length=9, truncation="longest_first")),
    ],
)
def test_tensors(inputs, kwargs, return_tensors):
    expected = hf_call(*inputs, return_tensors="np", **kwargs)
    got = TOK(*inputs, return_tensors=return_tensors, **kwargs)
    array_type = np.ndarray if return_tensors == "np" else type(jnp.zeros(1))
    assert got.keys() == expected.keys()
    for key, value in got.items():
        assert isinstance(value, array_type) and value.dtype == np.int32 and value.ndim == 2
        np.testing.assert_array_equal(np.asarray(value), expected[key])


DECODE_CASES = [
    [],
    [4, 110, 107, 5],
    list(range(262)),
    [0xFF + 6, 0xFE + 6],  # bytes that never occur in UTF-8
    [0xE6 + 6, 0x97 + 6],  # a 3-byte character cut short
    [0x80 + 6, 110],  # a lone continuation byte
    [0xF0 + 6, 4, 0x9F + 6, 0x98 + 6, 0x80 + 6],  # a special token inside a 4-byte character
    [0xF0 + 6, 0x9F + 6, 0x98 + 6, 0x80 + 6, 3, 0, 0],  # 😀 [MASK] [PAD] [PAD]
]


@pytest.mark.parametrize("ids", DECODE_CASES)
@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode(ids, skip_special_tokens):
    expected = HF.decode(ids, skip_special_tokens=skip_special_tokens)
    assert TOK.decode(ids, skip_special_tokens=skip_special_tokens) == expected
    assert TOK.decode(np.array(ids, dtype=np.int32), skip_special_tokens=skip_special_tokens) == expected


def test_decode_int_and_batches():
    assert TOK.decode(5) == HF.decode(5) == "[SEP]"
    assert TOK.decode(TOK.encode(TEXTS[4])) == "[CLS]" + TEXTS[4] + "[SEP]"
    rows = TOK(BATCH, padding=True, return_tensors="np")["input_ids"]
    for skip in (False, True):
        expected = HF.batch_decode(rows.tolist(), skip_special_tokens=skip)
        assert TOK.batch_decode(rows, skip_special_tokens=skip) == expected
        assert TOK.batch_decode(jnp.asarray(rows), skip_special_tokens=skip) == expected
        assert TOK.decode(rows.tolist(), skip_special_tokens=skip) == expected
        assert TOK.batch_decode([list(r) for r in rows], skip_special_tokens=skip) == expected


def test_vocabulary():
    tokens = list(HF.all_special_tokens) + [chr(i) for i in range(256)]
    assert TOK.convert_tokens_to_ids(tokens) == HF.convert_tokens_to_ids(tokens)
    assert TOK.convert_tokens_to_ids("[MASK]") == HF.convert_tokens_to_ids("[MASK]") == 3
    for name in ("pad", "bos", "eos", "mask", "cls", "sep"):
        assert getattr(TOK, f"{name}_token_id") == getattr(HF, f"{name}_token_id")
    assert TOK.vocab_size == len(TOK) == len(HF) == 262
    assert TOK.model_max_length == HF.model_max_length == 2048


@pytest.mark.parametrize("text", [123, None, b"bytes", ["ok", 3]])
def test_non_str_text_is_a_type_error(text):
    with pytest.raises(ValueError):
        HF(text)
    with pytest.raises(TypeError, match="must be a str"):
        TOK(text)


def test_ids_are_not_text():
    assert HF([1, 2, 3])["input_ids"] == [4, 1, 2, 3, 5]  # HF takes a list of ints as already-encoded ids
    with pytest.raises(TypeError, match="must be a str"):
        TOK([1, 2, 3])


def test_non_str_pair_is_a_type_error():
    with pytest.raises(TypeError, match="must be a str"):
        TOK("a", 5)
    with pytest.raises(TypeError, match="must be a str"):
        TOK(["a"], [b"b"])


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("a",), dict(padding="foo"), "padding must be"),
        (("a",), dict(truncation="foo"), "truncation must be"),
        (([],), {}, "empty batch"),
        ((["a", "b"], ["c"]), {}, "same length"),
        ((["a", "b"], "c"), {}, "same length"),
    ],
)
def test_errors_shared_with_hf(args, kwargs, match):
    with pytest.raises(ValueError):
        HF(*args, **kwargs)
    with pytest.raises(ValueError, match=match):
        TOK(*args, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("a",), dict(max_length=0, truncation=True), "max_length must be"),
        (("a",), dict(max_length=-1), "max_length must be"),
        (("a",), dict(max_length=2.0), "max_length must be"),
        (("a",), dict(return_tensors="pt"), "return_tensors must be"),
        ((["hello", "hi"],), dict(return_tensors="np"), "different lengths"),
        (
            (["hello", "hi"],),
            dict(padding="max_length", max_length=3, return_tensors="np"),
            "different lengths",
        ),
    ],
)
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TOK(*args, **kwargs)


@pytest.mark.parametrize("ids", [[262], [-1], [4, 300]])
def test_decode_out_of_range(ids):
    with pytest.raises(ValueError):
        HF.decode(ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode(ids)


@pytest.mark.parametrize("token", ["ab", "友", ""])
def test_unknown_token(token):
    with pytest.raises(ValueError, match="not a token"):
        TOK.convert_tokens_to_ids(token)
