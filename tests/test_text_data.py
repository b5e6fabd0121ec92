"""The ``text`` source and text preprocessing: formats, labels, bad records, tokenizer, outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from components.config import DataParams, PreprocessParams, TextPreprocessParams
from components.data.ingest import ingest
from components.data.prepared import load_prepared
from components.data.preprocess import preprocess
from components.data.summary import prepared_table
from components.data.tensorfile import load_arrays
from components.data.text_raw import read_text_split
from components.data.text_stats import TextStats
from components.data.tokenize import encode, fit_tokenizer, load_tokenizer
from components.errors import DataSourceError, DataValidationError
from components.hashing import sha256_file
from tests import datagen
from tests.conftest import REPO

TRICKY = [
    ('He said "hi, there"', 1),
    ("a,b,c", 0),
    ('"quoted at both ends"', 1),
    ("Café crème, naïve résumé", 0),
    ("日本語のテキスト", 1),
    ("emoji 🙂 and ﬁne ligature", 0),
]


def run_ingest(root: Path, path: str, out: str = "raw", **data: Any) -> tuple[dict[str, Any], Path]:
    """Ingest ``data.path=path`` (relative to ``root``); return (manifest, raw folder) after checking
    the raw layout every text split must have."""
    raw = root / out
    manifest = ingest(DataParams(source="text", path=path, **data), raw, root=root)
    assert manifest["kind"] == "text"
    assert json.loads((raw / "manifest.json").read_text()) == manifest
    for name, entry in manifest["splits"].items():
        file = raw / entry["file"]
        assert entry["file"] == f"{name}.safetensors"
        assert entry["sha256"] == sha256_file(file)
        arrays = load_arrays(file)
        assert {k: str(v.dtype) for k, v in arrays.items()} == {
            "text_bytes": "uint8",
            "text_offsets": "int64",
            "labels": "int64",
        }
        assert entry["count"] == len(arrays["labels"]) == len(arrays["text_offsets"]) - 1
        assert (
            entry["class_counts"] == np.bincount(arrays["labels"], minlength=manifest["num_classes"]).tolist()
        )
    return manifest, raw


def texts_of(raw: Path, split: str) -> tuple[list[str], list[int]]:
    texts, labels = read_text_split(raw / f"{split}.safetensors")
    return texts, labels.tolist()


def prepared(folder: Path, split: str) -> dict[str, np.ndarray]:
    return load_arrays(folder / f"{split}.safetensors")


# formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl", ".parquet"])
def test_every_format_keeps_the_text_byte_for_byte(tmp_path: Path, suffix: str) -> None:
    """Quotes and commas inside TSV fields are plain characters; non-ASCII text is kept as is."""
    datagen.write_text_file(tmp_path / f"all{suffix}", TRICKY)
    manifest, raw = run_ingest(tmp_path, f"all{suffix}")
    assert texts_of(raw, "all") == ([t for t, _ in TRICKY], [label for _, label in TRICKY])
    assert manifest["class_names"] == ["0", "1"]
    assert manifest["label_kind"] == "integer"
    assert manifest["inputs"] == {f"all{suffix}": sha256_file(tmp_path / f"all{suffix}")}


def test_all_formats_give_the_same_raw_split(tmp_path: Path) -> None:
    hashes = set()
    for suffix in (".tsv", ".csv", ".jsonl", ".parquet"):
        datagen.write_text_file(tmp_path / f"all{suffix}", TRICKY)
        manifest, _ = run_ingest(tmp_path, f"all{suffix}", out=f"raw{suffix}")
        hashes.add(manifest["splits"]["all"]["sha256"])
    assert len(hashes) == 1


def test_csv_quoted_field_holds_a_tab_a_comma_and_a_newline(tmp_path: Path) -> None:
    (tmp_path / "all.csv").write_text('text,label\n"one\ttwo, three\nfour",1\nplain,0\n', encoding="utf-8")
    _, raw = run_ingest(tmp_path, "all.csv")
    assert texts_of(raw, "all") == (["one\ttwo, three\nfour", "plain"], [1, 0])


def test_crlf_line_ends_and_a_byte_order_mark_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "all.tsv").write_bytes("\ufefftext\tlabel\r\nfirst one\t1\r\nsecond\t0\r\n".encode())
    _, raw = run_ingest(tmp_path, "all.tsv")
    assert texts_of(raw, "all") == (["first one", "second"], [1, 0])


def test_string_labels_become_sorted_class_names(tmp_path: Path) -> None:
    rows = [(f"text {i}", ["pos", "neg", "neutral"][i % 3]) for i in range(30)]
    datagen.write_text_file(tmp_path / "all.jsonl", rows)
    manifest, raw = run_ingest(tmp_path, "all.jsonl")
    assert manifest["class_names"] == ["neg", "neutral", "pos"]
    assert manifest["label_kind"] == "name"
    names = manifest["class_names"]
    assert [names[i] for i in texts_of(raw, "all")[1]] == [label for _, label in rows]
    out = tmp_path / "prepared"
    preprocess(PreprocessParams(), raw, out)
    data = load_prepared(out)
    assert data.stats.class_names == names
    test = prepared(out, "test")
    assert [names[i] for i in test["labels"]] == [rows[i][1] for i in test["source_index"]]
    np.testing.assert_array_equal(test["y"].argmax(axis=1), test["labels"])


def test_a_folder_keeps_train_test_and_dev_as_splits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    datagen.write_text_file(src / "train.tsv", [("good fun", 1), ("bad film", 0), ("fun", 1), ("bad", 0)])
    datagen.write_text_file(src / "test.csv", [("fun film", 1), ("bad fun", 0)])
    datagen.write_text_file(src / "dev.jsonl", [("good", 1), ("film", 0)])
    (src / "README.md").write_text("not data\n")
    manifest, raw = run_ingest(tmp_path, "src")
    assert list(manifest["splits"]) == ["train", "val", "test"]
    assert texts_of(raw, "val") == (["good", "film"], [1, 0])
    out = tmp_path / "prepared"
    entries = preprocess(PreprocessParams(val_fraction=0.5), raw, out)["splits"]
    assert {s: (e["origin"], e["count"]) for s, e in entries.items()} == {
        "train": ("train", 4),
        "val": ("val", 2),
        "test": ("test", 2),
    }
    np.testing.assert_array_equal(prepared(out, "train")["source_index"], np.arange(4))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["train.tsv"], "needs train.* and test.*"),
        (["train.tsv", "test.tsv", "test.csv"], "2 files for the test split"),
        (["train.tsv", "test.tsv", "dev.tsv", "validation.tsv"], "2 files for the val split"),
    ],
)
def test_folder_layout_errors(tmp_path: Path, files: list[str], message: str) -> None:
    for name in files:
        datagen.write_text_file(tmp_path / "src" / name, [("a", 0), ("b", 1)])
    with pytest.raises(DataSourceError, match=message):
        ingest(DataParams(source="text", path="src"), tmp_path / "raw", root=tmp_path)
    assert not (tmp_path / "raw").exists()


# bad records: file, line and rule; nothing written ----------------------------------------------

GOOD_TSV = "text\tlabel\nfine\t0\ngood\t1\n"
TSV = b"text\tlabel\nok\t0\n"  # a header and one good record
JSONL = b'{"text": "ok", "label": 0}\n'
BAD_RECORDS: dict[str, tuple[str, bytes, dict[str, Any], list[str]]] = {
    # case: (file name, content, extra data params, phrases the message must hold)
    "wrong-field-count": ("a.tsv", TSV + b'it "said"\t1\t2\n', {}, ["line 3", "wrong field count"]),
    "empty-text": ("a.tsv", TSV + b"\t1\n", {}, ["line 3", "empty text"]),
    "blank-text": ("a.tsv", TSV + b"  \t1\n", {}, ["line 3", "empty text"]),
    "missing-label": ("a.tsv", TSV + b"fine\t\n", {}, ["line 3", "missing label"]),
    "label-out-of-range": (
        "a.tsv",
        TSV + b"x\t1\ny\t2\n",
        {"num_classes": 2},
        ["line 4", "label 2 is not a class id 0..1"],
    ),
    "negative-label": ("a.tsv", TSV + b"x\t-1\n", {}, ["line 3", "label -1 is not a class id"]),
    "huge-label": ("a.tsv", TSV + b"x\t99\n", {}, ["line 3", "more classes than the 2 labelled texts"]),
    "not-an-integer": ("a.tsv", TSV + b"x\t1\ny\t1x\n", {}, ["line 4", "label is not an integer"]),
    "integer-among-names": (
        "a.tsv",
        b"text\tlabel\nok\tpos\nx\tneg\ny\t3\n",
        {},
        ["line 4", "label is an integer"],
    ),
    "label-with-spaces": ("a.tsv", TSV + b"x\t1 \n", {}, ["line 3", "leading or trailing whitespace"]),
    "undecodable-tsv": ("a.tsv", TSV + b"bad \xff byte\t1\n", {}, ["line 3", "not valid UTF-8"]),
    "undecodable-csv": (
        "a.csv",
        b'text,label\nok,0\n"x",1\nbad \xc3(,1\n',
        {},
        ["line 4", "not valid UTF-8"],
    ),
    "csv-line-after-multiline-field": (
        "a.csv",
        b'text,label\n"two\nlines",0\nok,1,2\n',
        {},
        ["line 4", "wrong field count"],
    ),
    "csv-bad-quoting": ("a.csv", b'text,label\n"open,0\n', {}, ["line 2", "not valid CSV"]),
    "missing-column": (
        "a.tsv",
        b"sentence\tlabel\nok\t0\n",
        {},
        ["line 1", "no column 'text'", "'sentence', 'label'"],
    ),
    "jsonl-null-label": (
        "a.jsonl",
        JSONL + b'{"text": "x", "label": null}\n',
        {},
        ["line 2", "missing label"],
    ),
    "jsonl-float-label": (
        "a.jsonl",
        b'{"text": "ok", "label": 1.0}\n',
        {},
        ["line 1", "integer or a string"],
    ),
    "jsonl-missing-key": (
        "a.jsonl",
        JSONL + b'{"txt": "x", "label": 1}\n',
        {},
        ["line 2", "no column 'text'", "'txt'"],
    ),
    "jsonl-not-object": ("a.jsonl", JSONL + b"\n", {}, ["line 2", "not a JSON object"]),
    "jsonl-lone-surrogate": (
        "a.jsonl",
        JSONL + b'{"text": "\\ud800", "label": 1}\n',
        {},
        ["line 2", "not valid Unicode"],
    ),
    "one-class": ("a.tsv", TSV + b"fine\t0\n", {}, ["at least 2 classes"]),
    "header-only": ("a.tsv", b"text\tlabel\n", {}, ["no records"]),
}


@pytest.mark.parametrize("case", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_record_fails_naming_file_line_and_rule(tmp_path: Path, case: tuple[Any, ...]) -> None:
    """The first bad record stops ingest; the previous output stays byte for byte."""
    name, content, data, phrases = case
    (tmp_path / "good.tsv").write_text(GOOD_TSV)
    _, raw = run_ingest(tmp_path, "good.tsv")
    before = {f.name: f.read_bytes() for f in raw.iterdir()}
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataValidationError) as caught:
        ingest(DataParams(source="text", path=name, **data), raw, root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / name) in message
    for phrase in phrases:
        assert phrase in message, message
    assert {f.name: f.read_bytes() for f in raw.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.tsv", name, "raw"])


def test_a_parquet_null_label_names_its_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["ok", "fine"], "label": [0, None]}), tmp_path / "a.parquet")
    with pytest.raises(DataValidationError, match=r"a\.parquet, row 2: missing label"):
        ingest(DataParams(source="text", path="a.parquet"), tmp_path / "raw", root=tmp_path)
    assert not (tmp_path / "raw").exists()


def test_string_labels_must_match_a_declared_class_count(tmp_path: Path) -> None:
    datagen.write_text_file(tmp_path / "a.tsv", [("x", "cat"), ("y", "dog")])
    with pytest.raises(DataSourceError, match="has 2 classes"):
        ingest(DataParams(source="text", path="a.tsv", num_classes=3), tmp_path / "raw", root=tmp_path)


# tokenisation -------------------------------------------------------------------------------------


def hand_checked(root: Path) -> Path:
    """A folder whose tokens, OOV and truncation figures are worked out by hand in the test below."""
    src = root / "src"
    datagen.write_text_file(src / "train.tsv", [("a b c d", 0), ("A, b", 1)])
    datagen.write_text_file(src / "test.tsv", [("a z z", 0), ("q b c d e", 1)])
    datagen.write_text_file(src / "dev.tsv", [("b", 0), ("c f", 1)])
    return src


def test_oov_and_truncation_figures_on_a_hand_checked_example(tmp_path: Path) -> None:
    """Vocabulary from train only: a, b (2 each), then the ties ',' c d in character order. With
    L = 3: test "a z z" -> a [UNK] [UNK]; "q b c d e" -> 5 tokens, 3 kept, q and e unknown."""
    hand_checked(tmp_path)
    _, raw = run_ingest(tmp_path, "src")
    out = tmp_path / "prepared"
    params = PreprocessParams(text=TextPreprocessParams(vocab_size=1000, max_length=3))
    manifest = preprocess(params, raw, out)
    vocab = load_tokenizer(out / "tokenizer.json").get_vocab()
    assert sorted(vocab, key=vocab.__getitem__) == ["[PAD]", "[UNK]", "a", "b", ",", "c", "d"]
    a, b, comma, c = 2, 3, 4, 5
    expected = {
        # split: (x, lengths, tokens, unknown, truncated)
        "train": ([[a, b, c], [a, comma, b]], [3, 3], 7, 0, 1),
        "test": ([[a, 1, 1], [1, b, c]], [3, 3], 8, 4, 1),
        "val": ([[b, 0, 0], [c, 1, 0]], [1, 2], 3, 1, 0),
    }
    for split, (x, lengths, tokens, unknown, truncated) in expected.items():
        arrays = prepared(out, split)
        np.testing.assert_array_equal(arrays["x"], x)
        np.testing.assert_array_equal(arrays["lengths"], lengths)
        entry = manifest["splits"][split]
        assert (entry["tokens"], entry["unk_tokens"], entry["truncated"]) == (tokens, unknown, truncated)
        assert entry["oov_rate"] == pytest.approx(unknown / tokens)
        assert entry["truncation_rate"] == pytest.approx(truncated / 2)
    assert manifest["vocab_size"] == 7
    assert manifest["max_length"] == 3
    assert manifest["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")


def test_prepared_text_arrays_and_stats(tmp_path: Path) -> None:
    hand_checked(tmp_path)
    _, raw = run_ingest(tmp_path, "src")
    out = tmp_path / "prepared"
    preprocess(PreprocessParams(text=TextPreprocessParams(vocab_size=4, max_length=5)), raw, out)
    arrays = prepared(out, "test")
    texts = {k: arrays.pop(k) for k in ("text_bytes", "text_offsets")}
    assert {k: (str(v.dtype), v.shape) for k, v in arrays.items()} == {
        "x": ("int64", (2, 5)),
        "lengths": ("int64", (2,)),
        "y": ("float32", (2, 2)),
        "labels": ("int64", (2,)),
        "source_index": ("int64", (2,)),
    }
    assert texts["text_offsets"].shape == (3,)
    assert texts["text_bytes"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["y"], np.eye(2, dtype=np.float32)[arrays["labels"]])
    data = load_prepared(out)
    assert data.stats == TextStats(class_names=["0", "1"], source="text", vocab_size=4, max_length=5)
    assert isinstance(data.stats, TextStats)
    assert data.stats.input_shape == [5]
    assert json.loads((out / "stats.json").read_text())["kind"] == "text"
    np.testing.assert_array_equal(data.splits["test"].x, arrays["x"])
    raw_texts, _ = texts_of(raw, "test")
    assert data.splits["test"].texts == [raw_texts[i] for i in arrays["source_index"]]
    # vocabulary capped at 4: [PAD] [UNK] a b, the rest unknown
    np.testing.assert_array_equal(arrays["x"], [[2, 1, 1, 0, 0], [1, 3, 1, 1, 1]])
    console = Console(width=200, record=True)
    console.print(prepared_table(out))
    assert "texts as 5 token ids, vocabulary 4" in console.export_text()


def test_an_edited_tokenizer_is_refused(tmp_path: Path) -> None:
    hand_checked(tmp_path)
    _, raw = run_ingest(tmp_path, "src")
    out = tmp_path / "prepared"
    preprocess(PreprocessParams(), raw, out)
    tokenizer = out / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"b": 3', '"b": 4'))
    with pytest.raises(DataValidationError, match=r"tokenizer\.json: sha256 differs"):
        load_prepared(out)


def test_the_tokenizer_sees_the_train_split_only(tmp_path: Path) -> None:
    """One pool, stratified: every text holds a word of its own, so the vocabulary must hold
    exactly the train texts' words, and every val/test text's own word maps to [UNK]."""
    rows = [(f"shared{i % 2} own{i}", i % 2) for i in range(40)]
    datagen.write_text_file(tmp_path / "all.tsv", rows)
    _, raw = run_ingest(tmp_path, "all.tsv")
    out = tmp_path / "prepared"
    manifest = preprocess(PreprocessParams(), raw, out)
    train = prepared(out, "train")["source_index"].tolist()
    vocab = set(load_tokenizer(out / "tokenizer.json").get_vocab())
    assert vocab == {"[PAD]", "[UNK]", "shared0", "shared1", *(f"own{i}" for i in train)}
    for split in ("val", "test"):
        x = prepared(out, split)["x"]
        np.testing.assert_array_equal(x[:, 1], 1)  # own word unknown
        assert manifest["splits"][split]["oov_rate"] == 0.5
    counts = {s: manifest["splits"][s]["class_counts"] for s in ("train", "val", "test")}
    assert counts == {"train": [14, 14], "val": [3, 3], "test": [3, 3]}


def test_preprocess_is_byte_identical_and_ties_do_not_depend_on_order(tmp_path: Path) -> None:
    rows = [(f"w{i % 7} v{i % 5} u{i % 3}, {'日本' if i % 2 else 'Café'}", i % 2) for i in range(60)]
    datagen.write_text_file(tmp_path / "all.tsv", rows)
    _, raw = run_ingest(tmp_path, "all.tsv")
    params = PreprocessParams(text=TextPreprocessParams(vocab_size=9, max_length=4))
    first, second = tmp_path / "one", tmp_path / "two"
    preprocess(params, raw, first)
    preprocess(params, raw, second)
    names = sorted(p.name for p in first.iterdir())
    assert "tokenizer.json" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    texts = [t for t, _ in rows]
    vocab = fit_tokenizer(texts, 9).get_vocab()
    assert fit_tokenizer(texts[::-1], 9).get_vocab() == vocab
    # equal counts: alphabetical order decides, whatever order the texts came in
    assert fit_tokenizer(["b a c", "c b a"], 10).get_vocab() == {
        "[PAD]": 0,
        "[UNK]": 1,
        "a": 2,
        "b": 3,
        "c": 4,
    }


def test_encode_normalises_and_never_reads_special_tokens_from_text(tmp_path: Path) -> None:
    tokenizer = fit_tokenizer(["ﬁne CAFÉ pad [ ]", "a"], 100)
    vocab = tokenizer.get_vocab()
    x, lengths = encode(tokenizer, ["FINE café", "[PAD] [UNK]", ""], 6)
    assert x[0, :2].tolist() == [vocab["fine"], vocab["café"]]
    assert x[1, :3].tolist() == [vocab["["], vocab["pad"], vocab["]"]]  # text, not padding
    assert lengths.tolist() == [2, 6, 1]  # "[PAD] [UNK]" is 6 tokens; no token at all is one [UNK]
    assert x[2].tolist() == [1, 0, 0, 0, 0, 0]


def test_image_preprocessing_ignores_the_text_params(tmp_path: Path) -> None:
    ingest(DataParams(), tmp_path / "raw", root=tmp_path)
    manifest = preprocess(
        PreprocessParams(text=TextPreprocessParams(vocab_size=5)), tmp_path / "raw", tmp_path / "out"
    )
    assert "text" not in manifest["params"]
    assert "kind" not in manifest
    assert load_prepared(tmp_path / "out").stats.input_shape == [1, 8, 8]


# the stage CLIs -----------------------------------------------------------------------------------


def run_cli(stage: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}", "--params", str(root / "params.yaml"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_the_stage_clis_prepare_text_and_exit_2_on_a_bad_record(tmp_path: Path) -> None:
    """As DVC runs them: a good file goes through ingest and preprocess (the same bytes as in this
    process, tokenizer included); a bad record is exit code 2 with file, line and rule, and
    data/raw stays as it was."""
    rows = [(f'word{i % 4} "q{i % 3}", x', i % 2) for i in range(20)]
    datagen.write_text_file(tmp_path / "texts.tsv", rows)
    (tmp_path / "params.yaml").write_text("data:\n  source: text\n  path: texts.tsv\n")
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    for stage, args in (
        ("ingest", ["--out", str(raw)]),
        ("preprocess", ["--raw", str(raw), "--out", str(out)]),
    ):
        result = run_cli(stage, tmp_path, *args)
        assert result.returncode == 0, result.stderr
    preprocess(PreprocessParams(), raw, tmp_path / "here")
    for file in sorted(out.iterdir()):
        assert (tmp_path / "here" / file.name).read_bytes() == file.read_bytes(), file.name

    before = {f.name: f.read_bytes() for f in raw.iterdir()}
    with (tmp_path / "texts.tsv").open("a", encoding="utf-8") as handle:
        handle.write("   \t1\n")
    result = run_cli("ingest", tmp_path, "--out", str(raw))
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "ingest failed:" in message
    assert "Traceback" not in message
    assert "texts.tsv, line 22: empty text" in message, message
    assert {f.name: f.read_bytes() for f in raw.iterdir()} == before
    shutil.rmtree(tmp_path / "here")
