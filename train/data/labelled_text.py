"""Users' labelled text for sequence classification: CSV / TSV / JSONL files -> records -> examples.

A record is `(text, label_id)`: the text's UTF-8 bytes and the index of its label in `id2label`. A list of
records is a random-access source (`len`, `[i]`); `EncodeLabelledText` turns a record into an example.
`write_demo_dataset` writes a small labelled set from text that ships with Python and gensim (offline).

Files (UTF-8, a leading byte-order mark is ignored; the format comes from the extension, `.csv`, `.tsv` or
`.jsonl`, unless `file_format` is given):
- CSV: a header row naming the columns, then one row per record; fields quoted as Python's `csv` module
  and spreadsheets write them (a quoted field may hold commas, quotes doubled, and newlines).
- TSV: the same with tabs between fields (Python's 'excel-tab' dialect).
- JSONL: one JSON object per line; the columns are its keys. Blank lines are skipped.

Labels are the label column's values as they appear: strings, or integers (a JSON integer, or text that
writes one: `3`, `-1`, but not `03` or `3.0`). `id2label` holds the distinct labels of the TRAIN file as
text, sorted numerically when all of them are integers (so labels 0..K-1 get ids 0..K-1), else sorted as
strings. Labels are matched by their text, so the JSON values `1` and `"1"` are the same label.

The eval records come from a second file (whose labels must all occur in the train file), or are held
out from the train file: per label, the `round(eval_fraction * n)` of its n records whose texts have the
smallest BLAKE2b hashes (file position breaks ties). The split is therefore stratified and fixed: it
depends on the texts and labels only, not on the order of the rows or on any seed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Iterator, NamedTuple

import numpy as np

from train.data import text as data

Record = tuple[bytes, int]
FORMATS = ("csv", "tsv", "jsonl")
_DIALECTS = {"csv": "excel", "tsv": "excel-tab"}
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


class Row(NamedTuple):
    """One labelled text as read from a file, and where it was read (for error messages)."""

    text: str
    label: str | int
    where: str


@dataclasses.dataclass(frozen=True)
class LabelledText:
    """Train and eval records (sources: lists of `(UTF-8 text bytes, label id)`) and the label names."""

    train: list[Record]
    eval: list[Record]
    id2label: tuple[str, ...]


def _file_format(path: str, file_format: str | None = None) -> str:
    """`file_format` when given, else the format named by `path`'s extension; one of `FORMATS`."""
    if file_format is None:
        file_format = os.path.splitext(path)[1].lstrip(".").lower()
        if file_format not in FORMATS:
            raise ValueError(
                f"{path}: cannot tell the format from the extension; name the file *.csv, *.tsv or *.jsonl "
                f"or set file_format to one of {FORMATS}."
            )
    elif file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {FORMATS}, got {file_format!r}.")
    return file_format


def _read_text(path: str) -> str:
    """The file's text (UTF-8, byte-order mark dropped); raises on a missing, non-UTF-8 or empty file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labelled text file not found: {path}")
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}: not UTF-8 text (line {line}, byte {error.start}); save the file as UTF-8."
        ) from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty.")
    return text


def _missing_column(where: str, role: str, column: str, present: list[str]) -> ValueError:
    return ValueError(
        f"{where}: no {role} column {column!r}; the columns are {present}. "
        f"Set {role}_column to the name of the column that holds the {role}."
    )


def _delimited_fields(
    path: str, text: str, file_format: str, columns: tuple[str, str]
) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, {text column: value, label column: value}) of each row of a CSV / TSV file."""
    reader = csv.reader(io.StringIO(text, newline=""), dialect=_DIALECTS[file_format], strict=True)
    try:
        header = next(reader)
        for role, column in zip(("text", "label"), columns):
            if column not in header:
                raise _missing_column(f"{path}, header (line 1)", role, column, header)
        positions = [header.index(column) for column in columns]
        row_number, first_line = 0, reader.line_num + 1
        for fields in reader:
            where = f"{path}, row {row_number + 1} (line {first_line})"
            first_line = reader.line_num + 1
            if not fields:  # a blank line
                continue
            row_number += 1
            if len(fields) != len(header):
                raise ValueError(
                    f"{where}: {len(fields)} fields, but the header has {len(header)}; a field holding the "
                    f"delimiter ({'tab' if file_format == 'tsv' else 'comma'}), a quote or a newline must be "
                    "quoted."
                )
            yield where, {column: fields[p] for column, p in zip(columns, positions)}
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: {error}.") from None


def _jsonl_fields(path: str, text: str, columns: tuple[str, str]) -> Iterator[tuple[str, dict]]:
    """(where, JSON object) of each non-blank line of a JSONL file."""
    for line_number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg}, column {error.colno}).") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(fields).__name__}.")
        for role, column in zip(("text", "label"), columns):
            if column not in fields:
                raise _missing_column(where, role, column, list(fields))
        yield where, fields


def _label(value: object, where: str, column: str) -> str | int:
    """The label value of a field (an int for integer labels), or a ValueError naming the row."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: the label ({column!r}) is empty; every row needs a label.")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: the label ({column!r}) must be a string or an integer, got {value!r}.")
    return int(value) if isinstance(value, str) and _CANONICAL_INT.fullmatch(value) else value


def read_rows(
    path: str, text_column: str = "text", label_column: str = "label", file_format: str | None = None
) -> list[Row]:
    """The labelled texts of a CSV, TSV or JSONL file (see the module docstring), in file order.

    Raises:
      FileNotFoundError: `path` is not a file.
      ValueError: an unknown format, a file that is empty, not UTF-8 or has no rows, a missing column, a
        row with the wrong number of fields, an invalid JSON line, or an empty text or label (naming the
        file and the row or line).
    """
    file_format = _file_format(path, file_format)
    text = _read_text(path)
    columns = (text_column, label_column)
    if file_format == "jsonl":
        fields = _jsonl_fields(path, text, columns)
    else:
        fields = _delimited_fields(path, text, file_format, columns)
    rows = []
    for where, values in fields:
        value = values[text_column]
        if not isinstance(value, (str, type(None))):
            raise ValueError(f"{where}: the text ({text_column!r}) must be a string, got {value!r}.")
        if value is None or not value.strip():
            raise ValueError(f"{where}: the text ({text_column!r}) is empty; every row needs a text.")
        rows.append(Row(value, _label(values[label_column], where, label_column), where))
    if not rows:
        raise ValueError(f"{path}: the file has a header but no rows.")
    return rows


def sorted_labels(labels: list[str | int]) -> tuple[str, ...]:
    """The distinct labels as text: in numeric order when all are integers, else in string order."""
    if all(isinstance(label, int) for label in labels):
        return tuple(str(label) for label in sorted(set(labels)))
    return tuple(sorted({str(label) for label in labels}))


def _records(rows: list[Row], label2id: dict[str, int], path: str) -> list[Record]:
    """Rows -> records; raises ValueError listing the labels of `rows` missing from `label2id`."""
    unseen: dict[str, str] = {}
    for row in rows:
        if str(row.label) not in label2id:
            unseen.setdefault(str(row.label), row.where)
    if unseen:
        listed = ", ".join(f"{label!r} ({where})" for label, where in list(unseen.items())[:10])
        more = f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        raise ValueError(
            f"{path}: {len(unseen)} label(s) not in the training file: {listed}{more}. The training labels "
            f"are {list(label2id)}; the eval file may only use those."
        )
    return [(row.text.encode(), label2id[str(row.label)]) for row in rows]


def hold_out(records: list[Record], eval_fraction: float) -> tuple[list[Record], list[Record]]:
    """Splits records into (train, eval), both in their original order: per label, the
    `round(eval_fraction * n)` of its n records with the smallest BLAKE2b hashes of their texts go to eval."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    by_label: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(records):
        by_label.setdefault(label, []).append(index)
    held_out = set()
    for indices in by_label.values():
        ranked = sorted(indices, key=lambda i: (hashlib.blake2b(records[i][0], digest_size=8).digest(), i))
        held_out.update(ranked[: round(eval_fraction * len(indices))])
    return (
        [r for i, r in enumerate(records) if i not in held_out],
        [r for i, r in enumerate(records) if i in held_out],
    )


def load_labelled_text(
    train_file: str,
    eval_file: str | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    file_format: str | None = None,
    eval_fraction: float = 0.1,
) -> LabelledText:
    """Train and eval records of labelled text files (see the module docstring).

    Args:
      train_file: CSV, TSV or JSONL file of the training texts; it defines the labels.
      eval_file: file of the eval texts, in the same format; None holds out `eval_fraction` of
        `train_file` instead (`hold_out`).
      text_column, label_column: the columns (JSON keys) holding the text and the label.
      file_format: 'csv', 'tsv' or 'jsonl' for both files; None takes it from each file's extension.
      eval_fraction: the fraction held out when there is no eval file.

    Raises:
      FileNotFoundError, ValueError: those of `read_rows`; fewer than 2 labels in the train file; labels
        in the eval file missing from the train file; an empty held-out split.
    """
    rows = read_rows(train_file, text_column, label_column, file_format)
    id2label = sorted_labels([row.label for row in rows])
    if len(id2label) < 2:
        raise ValueError(
            f"{train_file}: every row has the label {id2label[0]!r}; classification needs at least 2 labels "
            f"(is label_column={label_column!r} the right column?)."
        )
    label2id = {label: i for i, label in enumerate(id2label)}
    train = _records(rows, label2id, train_file)
    if eval_file is None:
        train, held_out = hold_out(train, eval_fraction)
        if not held_out:
            raise ValueError(
                f"{train_file}: eval_fraction={eval_fraction} of {len(train)} rows holds out nothing; raise "
                "eval_fraction or give an eval file."
            )
        return LabelledText(train, held_out, id2label)
    eval_rows = read_rows(eval_file, text_column, label_column, file_format)
    return LabelledText(train, _records(eval_rows, label2id, eval_file), id2label)


class EncodeLabelledText:
    """Record -> example: `inputs` (ids `[CLS] bytes [SEP] [PAD]...`, the text cut to `seq_len - 2`
    bytes, so a multi-byte character may be cut) and `attention_mask`, int32 `(seq_len,)`; `targets` (the
    label id) int32 and `weights` (1.0) float32 scalars.

    This equals `PerceiverTokenizer()(text, truncation=True, max_length=seq_len, padding='max_length')`,
    except for texts containing special token strings such as "[MASK]": the tokenizer turns those into
    their ids, here they stay bytes (users' text is data, not markup). There is no augmentation: the
    train transform is the eval transform, and `rng` is unused.
    """

    def __init__(self, seq_len: int):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (room for [CLS] and [SEP]), got {seq_len}.")
        self.seq_len = seq_len

    def __call__(self, record: Record, rng: np.random.Generator | None = None) -> data.Example:
        del rng
        text, label = record
        inputs, attention_mask = data.encode(np.frombuffer(text[: self.seq_len - 2], np.uint8), self.seq_len)
        return dict(
            inputs=inputs, attention_mask=attention_mask, targets=np.int32(label), weights=np.float32(1)
        )


# The offline demo set: which kind of text is a snippet from?

DEMO_SNIPPET_BYTES = 60
DEMO_TRAIN_PER_LABEL = 1200
DEMO_EVAL_PER_LABEL = 300
DEMO_EVAL_EVERY = 5  # every 5th document of each source is held out for eval
_WIKIPEDIA_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _python_docs() -> list[str]:
    """The 79 help topics of `pydoc_data.topics`, sorted by name."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def _gensim_test_file(name: str) -> str:
    """The path of a file of gensim's test data (gensim is imported only for the demo set)."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise ImportError(
            "the demo dataset reads text shipped with gensim: pip install gensim==4.4.0"
        ) from None
    return datapath(name)


def _news() -> list[str]:
    """The 300 articles of the Lee background corpus, one per line of `lee_background.cor`."""
    with open(_gensim_test_file("lee_background.cor"), encoding="utf-8") as file:
        return [line for line in file if line.strip()]


def _wikipedia_prose(markup: str) -> str:
    """An article's paragraphs without wiki markup: gensim's `filter_wiki`, bold/italic quotes removed,
    and headings, lists, tables and captions (lines under 80 characters) dropped."""
    from gensim.corpora.wikicorpus import filter_wiki

    lines = (line.strip() for line in re.sub("'{2,}", "", filter_wiki(markup)).splitlines())
    return "\n".join(line for line in lines if len(line) >= 80 and line[0] not in "=*#:;|!{")


def _wikipedia() -> list[str]:
    """The prose of the articles (not redirects) of gensim's shortened English Wikipedia dump, in order."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(_gensim_test_file(_WIKIPEDIA_DUMP)) as dump:
        pages = [text for _, text, _ in extract_pages(dump, filter_namespaces=("0",))]
    articles = [_wikipedia_prose(page) for page in pages if not page.lstrip().lower().startswith("#redirect")]
    return [article for article in articles if article]


def snippets(document: str, max_bytes: int) -> list[str]:
    """Runs of consecutive words of `document` (split on whitespace) joined by single spaces, of at most
    `max_bytes` UTF-8 bytes: a snippet ends before the word that would overflow it. Words longer than
    `max_bytes` end a snippet and are dropped, and so are snippets under `2 * max_bytes // 3` bytes."""
    out, current = [], ""
    for word in document.split():
        candidate = f"{current} {word}" if current else word
        if len(candidate.encode()) <= max_bytes:
            current = candidate
        else:
            out.append(current)
            current = word if len(word.encode()) <= max_bytes else ""
    out.append(current)
    return [s for s in out if len(s.encode()) >= 2 * max_bytes // 3]


def _demo_pools() -> dict[str, tuple[list[str], list[str]]]:
    """label -> (train, eval) distinct snippets of its source: every `DEMO_EVAL_EVERY`-th document (the
    first, ...) is an eval document, and eval snippets that also occur in a train document of any source
    (the sources repeat some passages) are dropped."""
    sources = {"news": _news(), "python-docs": _python_docs(), "wikipedia": _wikipedia()}
    pools = {}
    for label, documents in sources.items():
        train, held_out = [], []
        for d, document in enumerate(documents):
            (train if d % DEMO_EVAL_EVERY else held_out).extend(snippets(document, DEMO_SNIPPET_BYTES))
        pools[label] = list(dict.fromkeys(train)), list(dict.fromkeys(held_out))
    in_train = {s for train, _ in pools.values() for s in train}
    return {
        label: (train, [s for s in held_out if s not in in_train])
        for label, (train, held_out) in pools.items()
    }


def _sample(pools: dict[str, list[str]], count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`count` (snippet, label) rows drawn without replacement from each label's pool, shuffled."""
    rows = [
        (pool[i], label) for label, pool in pools.items() for i in rng.choice(len(pool), count, replace=False)
    ]
    return [rows[i] for i in rng.permutation(len(rows))]


def write_demo_dataset(folder: str) -> tuple[str, str]:
    """Writes `folder/train.csv` and `folder/eval.csv` (columns `text`, `label`) and returns their paths.

    The task: which kind of text is a snippet of at most 60 bytes (whole words) from? Three labels,
    balanced: 'news', 'python-docs', 'wikipedia'; 1200 snippets of each in train.csv, 300 in eval.csv
    (3600 and 900 rows, in random order). Every 5th document of each source goes to eval.csv, the others
    to train.csv, and no document nor snippet is on both sides. The same Python and gensim versions give
    the same files (sampled with seed 0). The sources, all read offline:
    - 'python-docs': the help topics of Python's own `pydoc_data.topics` (text from the Python
      documentation; PSF License Version 2).
    - 'news': `lee_background.cor` in gensim's test data: 300 articles from the Australian Broadcasting
      Corporation's news mail service (2000-2001), collected by Lee, Pincombe and Welsh (2005), "An
      empirical evaluation of models of text document similarity", CogSci. The texts are the ABC's;
      gensim ships them (in an LGPL-2.1 package) without a licence of their own, so the generated files
      are for local demos, not for redistribution.
    - 'wikipedia': the 101 English Wikipedia articles (titles starting with 'A', 2016) in gensim's test dump
      `enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`, markup removed
      (`_wikipedia_prose`); CC BY-SA 3.0 (and GFDL), Wikipedia contributors.

    Requires gensim (`pip install gensim==4.4.0`).
    """
    rng, pools = np.random.default_rng(0), _demo_pools()
    splits = {
        "train.csv": _sample(
            {label: train for label, (train, _) in pools.items()}, DEMO_TRAIN_PER_LABEL, rng
        ),
        "eval.csv": _sample(
            {label: held_out for label, (_, held_out) in pools.items()}, DEMO_EVAL_PER_LABEL, rng
        ),
    }
    paths = []
    for name, rows in splits.items():
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths.append(path)
    return paths[0], paths[1]
