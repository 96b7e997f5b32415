"""Tests of users' labelled text files (`train.data.labelled_text`): readers, labels, splits, errors,
examples."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from perceiver_jax import PerceiverTokenizer
from train.data import labelled_text as lt


def write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def test_csv_fields_keep_quotes_commas_and_newlines(tmp_path):
    # The reference layout (RFC 4180, as spreadsheets and `csv` write it), with a byte-order mark and CRLF.
    content = (
        "\ufeffid,text,label\r\n"
        '1,"Hello, world",pos\r\n'
        '2,"She said ""hi""\r\nthen left",neg\r\n'
        "3,plain,pos\r\n"
        "\r\n"
        '4,"é, ünïcode",neg\r\n'
    )
    rows = lt.read_rows(write(tmp_path / "a.csv", content))
    assert [(r.text, r.label) for r in rows] == [
        ("Hello, world", "pos"),
        ('She said "hi"\r\nthen left', "neg"),
        ("plain", "pos"),
        ("é, ünïcode", "neg"),
    ]
    # Rows count data rows; lines are where each row starts (row 3 starts after a 2-line row).
    assert [r.where.split(", ", 1)[1] for r in rows] == [
        "row 1 (line 2)",
        "row 2 (line 3)",
        "row 3 (line 5)",
        "row 4 (line 7)",
    ]


def test_tsv_and_jsonl_with_custom_columns_and_format_override(tmp_path):
    tsv = write(tmp_path / "a.tsv", 'sentence\ttopic\nsemi; colons, commas\tx\n"quoted\ttab"\ty\n')
    rows = lt.read_rows(tsv, text_column="sentence", label_column="topic")
    assert [(r.text, r.label) for r in rows] == [("semi; colons, commas", "x"), ("quoted\ttab", "y")]

    lines = [{"t": 'first "line"\nwith newline', "y": 2}, {"t": "ça\u2028va", "y": "spam"}]
    jsonl = write(tmp_path / "data.txt", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n")
    rows = lt.read_rows(jsonl, text_column="t", label_column="y", file_format="jsonl")
    assert [(r.text, r.label) for r in rows] == [(lines[0]["t"], 2), ("ça\u2028va", "spam")]
    assert rows[1].where.endswith("data.txt, line 2")


def test_labels_sorted_by_string_or_numerically_when_all_integers(tmp_path):
    assert lt.sorted_labels(["b", "a", "B", "b"]) == ("B", "a", "b")
    assert lt.sorted_labels([10, 2, -1, 2]) == ("-1", "2", "10")
    assert lt.sorted_labels([10, 2, "x"]) == ("10", "2", "x")
    # CSV integers sort numerically, so labels 0..K-1 keep their ids; "03" is a string, not an integer.
    train = write(tmp_path / "t.csv", "text,label\na,10\nb,2\nc,0\nd,2\n")
    dataset = lt.load_labelled_text(train, train)
    assert dataset.id2label == ("0", "2", "10")
    assert [label for _, label in dataset.eval] == [2, 1, 0, 1]
    assert dataset.eval[0] == (b"a", 2)
    rows = lt.read_rows(write(tmp_path / "s.csv", "text,label\na,03\nb,3\nc,-4\nd,3.0\n"))
    assert [row.label for row in rows] == ["03", 3, -4, "3.0"]
    # JSON 1 and "1" are the same label.
    jsonl = write(
        tmp_path / "j.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n{"text": "c", "label": "z"}\n',
    )
    dataset = lt.load_labelled_text(jsonl, jsonl)
    assert dataset.id2label == ("1", "z") and [label for _, label in dataset.eval] == [0, 0, 1]


def test_held_out_split_is_stratified_disjoint_and_independent_of_row_order(tmp_path):
    rows = [(f"text number {i}", "ab"[i % 3 == 0]) for i in range(90)]  # 60 'a', 30 'b'

    def split(order):
        path = tmp_path / "train.csv"
        with open(path, "w", newline="") as file:
            csv.writer(file).writerows([("text", "label")] + [rows[i] for i in order])
        return lt.load_labelled_text(str(path), eval_fraction=0.2)

    first, again, shuffled = (
        split(range(90)),
        split(range(90)),
        split(np.random.default_rng(1).permutation(90)),
    )
    assert first == again
    train, held_out = set(first.train), set(first.eval)
    assert not train & held_out and len(train | held_out) == 90
    assert sorted(label for _, label in first.eval) == [0] * 12 + [1] * 6
    assert set(shuffled.eval) == held_out and set(shuffled.train) == train
    # The held-out records are those whose texts hash lowest within their label.
    for label in (0, 1):
        texts = sorted(
            (text for text, y in train | held_out if y == label),
            key=lambda t: hashlib.blake2b(t, digest_size=8).digest(),
        )
        assert set(texts[: len(texts) // 5]) == {text for text, y in held_out if y == label}
    # Records keep their file order within each split.
    assert [int(text.split()[-1]) for text, _ in first.train] == sorted(int(t.split()[-1]) for t, _ in train)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        lt.read_rows(str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match=r"e\.csv: the file is empty"):
        lt.read_rows(write(tmp_path / "e.csv", " \n\n"))
    with pytest.raises(ValueError, match="header but no rows"):
        lt.read_rows(write(tmp_path / "h.csv", "text,label\n"))
    with pytest.raises(ValueError, match=r"x\.txt: cannot tell the format.*file_format"):
        lt.read_rows(write(tmp_path / "x.txt", "text,label\na,b\n"))
    with pytest.raises(ValueError, match="file_format must be one of"):
        lt.read_rows(write(tmp_path / "y.csv", "text,label\na,b\n"), file_format="xlsx")
    with pytest.raises(ValueError, match=r"l\.csv: not UTF-8 text \(line 2, byte 14\)"):
        lt.read_rows(write(tmp_path / "l.csv", "text,label\ncaf\xe9,b\n".encode("latin-1")))


def test_missing_columns_list_the_columns_and_the_option(tmp_path):
    path = write(tmp_path / "c.csv", "sentence,label\na,b\n")
    with pytest.raises(
        ValueError,
        match=r"c\.csv, header \(line 1\): no text column 'text'; the columns are "
        r"\['sentence', 'label'\]\. Set text_column",
    ):
        lt.read_rows(path)
    with pytest.raises(ValueError, match=r"no label column 'y'.*Set label_column"):
        lt.read_rows(path, text_column="sentence", label_column="y")
    jsonl = write(tmp_path / "c.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "category": 2}\n')
    with pytest.raises(
        ValueError,
        match=r"c\.jsonl, line 2: no label column 'label'; the columns are "
        r"\['text', 'category'\]",
    ):
        lt.read_rows(jsonl)


# (format, the row after a good first one, the error after "bad.<format>, ")
BAD_ROWS = [
    ("csv", ",y\n", r"row 2 \(line 3\): the text \('text'\) is empty"),
    ("csv", "  ,y\n", r"row 2 \(line 3\): the text \('text'\) is empty"),
    ("csv", "b,\n", r"row 2 \(line 3\): the label \('label'\) is empty"),
    ("csv", "b\n", r"row 2 \(line 3\): 1 fields, but the header has 2"),
    ("csv", "b, c,y\n", r"row 2 \(line 3\): 3 fields, but the header has 2.*quoted"),
    ("csv", '"b,y\n', r"line 3: unexpected end of data"),
    ("jsonl", '{"text": "a", "label": 1\n', r"line 2: not valid JSON"),
    ("jsonl", '["a", 1]\n', r"line 2: expected a JSON object, got list"),
    ("jsonl", '{"text": null, "label": 1}\n', r"line 2: the text \('text'\) is empty"),
    ("jsonl", '{"text": 5, "label": 1}\n', r"line 2: the text \('text'\) must be a string, got 5"),
    ("jsonl", '{"text": "b", "label": null}\n', r"line 2: the label \('label'\) is empty"),
    (
        "jsonl",
        '{"text": "b", "label": 1.5}\n',
        r"line 2: the label \('label'\) must be a string or an integer",
    ),
    (
        "jsonl",
        '{"text": "b", "label": true}\n',
        r"line 2: the label \('label'\) must be a string or an integer",
    ),
]


@pytest.mark.parametrize("kind, row, message", BAD_ROWS)
def test_bad_rows_name_file_and_row(tmp_path, kind, row, message):
    first = {"csv": "text,label\na,x\n", "jsonl": '{"text": "a", "label": 0}\n'}[kind]
    with pytest.raises(ValueError, match=rf"bad\.{kind}, " + message):
        lt.read_rows(write(tmp_path / f"bad.{kind}", first + row))


def test_dataset_errors_single_class_unseen_eval_labels_and_empty_holdout(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,x\nb,y\nc,x\n")
    with pytest.raises(ValueError, match=r"one\.csv: every row has the label 'x'; .*at least 2 labels"):
        lt.load_labelled_text(write(tmp_path / "one.csv", "text,label\na,x\nb,x\n"))
    eval_file = write(tmp_path / "eval.csv", "text,label\nd,z\ne,x\nf,w\ng,z\n")
    with pytest.raises(
        ValueError,
        match=r"eval\.csv: 2 label\(s\) not in the training file: 'z' \(.*row 1 "
        r"\(line 2\)\), 'w' \(.*row 3 \(line 4\)\)\. The training labels are \['x', 'y'\]",
    ):
        lt.load_labelled_text(train, eval_file)
    with pytest.raises(ValueError, match="holds out nothing"):
        lt.load_labelled_text(train, eval_fraction=0.1)
    with pytest.raises(ValueError, match=r"eval_fraction must be in \(0, 1\)"):
        lt.load_labelled_text(train, eval_fraction=1.0)


TEXTS = [
    "hello world",
    "",
    "x" * 100,
    # cut inside multi-byte characters at several lengths
    "naïve café — 日本語のテキスト 🙂 " * 3,
    "a" * 13 + "é",  # 'é' split at seq_len 16 (13 bytes + 1 of its 2)
]


@pytest.mark.parametrize("seq_len", [2, 3, 16, 17, 40, 64])
def test_examples_equal_the_tokenizer_with_truncation_and_max_length_padding(seq_len):
    transform, tokenizer = lt.EncodeLabelledText(seq_len), PerceiverTokenizer()
    for label, text in enumerate(TEXTS):
        example = transform((text.encode(), label), np.random.default_rng(0))
        expected = tokenizer(text, truncation=True, max_length=seq_len, padding="max_length")
        np.testing.assert_array_equal(example["inputs"], expected["input_ids"])
        np.testing.assert_array_equal(example["attention_mask"], expected["attention_mask"])
        assert {k: (v.shape, v.dtype) for k, v in example.items()} == {
            "inputs": ((seq_len,), np.int32),
            "attention_mask": ((seq_len,), np.int32),
            "targets": ((), np.int32),
            "weights": ((), np.float32),
        }
        assert example["targets"] == label and example["weights"] == 1.0
        assert transform((text.encode(), label)).keys() == example.keys()  # eval: no rng


def test_transform_is_picklable_keeps_special_token_strings_as_bytes_and_rejects_short_sequences():
    transform = pickle.loads(pickle.dumps(lt.EncodeLabelledText(8)))
    assert list(transform((b"ab", 1))["inputs"]) == [4, ord("a") + 6, ord("b") + 6, 5, 0, 0, 0, 0]
    # The documented difference from the tokenizer: special token strings in users' text stay bytes.
    assert list(transform((b"[SEP]", 0))["inputs"][:7]) == [4] + [b + 6 for b in b"[SEP]"] + [5]
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        lt.EncodeLabelledText(1)


def test_snippets_pack_whole_words_within_the_byte_limit():
    # 'dd' is cut short by the overlong word, the tail 'hh' by the end of the text: both under 5 bytes.
    assert lt.snippets("aa bb  cc\ndd " + "x" * 20 + " ee ff gg hh", 8) == ["aa bb cc", "ee ff gg"]
    assert lt.snippets("éé ab", 5) == ["éé"]  # bytes are counted: 'éé ab' has 5 characters but 7 bytes


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    return folder, lt.write_demo_dataset(str(folder))


def test_demo_dataset_is_balanced_readable_and_split_by_document(demo):
    folder, (train_path, eval_path) = demo
    assert (train_path, eval_path) == (str(folder / "train.csv"), str(folder / "eval.csv"))
    with open(train_path, newline="", encoding="utf-8") as file:
        assert next(csv.reader(file)) == ["text", "label"]
    dataset = lt.load_labelled_text(train_path, eval_path)
    assert dataset.id2label == ("news", "python-docs", "wikipedia")
    for records, per_label in ((dataset.train, 1200), (dataset.eval, 300)):
        assert np.bincount([label for _, label in records]).tolist() == [per_label] * 3
        lengths = np.array([len(text) for text, _ in records])
        assert lengths.min() >= 40 and lengths.max() <= 60
        assert len({label for _, label in records[:30]}) == 3  # shuffled, not grouped by label
    assert not {text for text, _ in dataset.train} & {text for text, _ in dataset.eval}
    # Each snippet is a run of whole words of its source, e.g. the Python docs.
    from pydoc_data.topics import topics

    corpus = " ".join(" ".join(topics[name].split()) for name in topics)
    docs = [text.decode() for text, label in dataset.eval if label == 1]
    assert all(f" {text} " in f" {corpus} " for text in docs)
    # Rewriting gives the same files.
    again = folder / "again"
    again.mkdir()
    rewritten = lt.write_demo_dataset(str(again))
    assert [Path(p).read_bytes() for p in rewritten] == [
        Path(train_path).read_bytes(),
        Path(eval_path).read_bytes(),
    ]
