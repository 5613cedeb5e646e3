"""Readers: every input format through `preprocess`, compression, bounded reading, unreadable inputs."""
from __future__ import annotations

import gzip
import io
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from distillery.bundled import SAMPLE_DIR
from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from preprocess import InputConfig, PreprocessConfig, plan_preprocess
from preprocess.readers import BAD, LINE, ROW, detect_format, iter_lines, iter_records, open_source


def run(store, paths, **input_kwargs):
    manifest = run_step(store, plan_preprocess(paths, PreprocessConfig(input=InputConfig(**input_kwargs)))).manifest
    return manifest, store.read_table(manifest["version_id"])


def schema_types(manifest):
    return {f["name"]: f["type"] for f in manifest["schema"]}


def test_txt_lines_bom_crlf_blank(store, tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\nsecond \x00 line\n\n   \nlast line without newline")
    manifest, table = run(store, [path])
    assert table.column("text").to_pylist() == ["first line", "second line", "last line without newline"]
    assert manifest["accounting"]["rejected"] == {"empty_text": 2}
    assert manifest["accounting"]["repaired"] == {"control_chars": 1}
    assert manifest["accounting"]["input_rows"] == 5
    assert schema_types(manifest) == {"text": "string", "row_id": "int64"}


def test_jsonl_sample_with_label_and_extras(store):
    manifest, table = run(store, [SAMPLE_DIR / "dev.jsonl"], label_column="label")
    assert table.num_rows == 1000 == manifest["accounting"]["input_rows"]
    assert table.column_names == ["text", "label", "synset", "lemmas", "row_id"]
    first = json.loads((SAMPLE_DIR / "dev.jsonl").read_text().splitlines()[0])
    assert table.slice(0, 1).to_pylist()[0] == {**first, "row_id": 0}
    assert table.column("row_id").to_pylist() == list(range(1000))


def test_csv_quoting_multiline_and_typed_label(store, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('sentence,label,note\n"hello, world",1,x\n"a ""quoted"" word",0,\n"two\nlines",1,z\n')
    manifest, table = run(store, [path], text_column="sentence", label_column="label")
    assert table.column("text").to_pylist() == ["hello, world", 'a "quoted" word', "two lines"]
    assert table.column("label").to_pylist() == [1, 0, 1]
    assert schema_types(manifest)["label"] == "int64"
    assert table.column("note").to_pylist() == ["x", "", "z"]


def test_glue_tsv_reads_quotes_literally(store, tmp_path):
    """GLUE TSVs disable quoting: a lone double quote is part of the text, not the start of a field."""
    path = tmp_path / "train.tsv"
    path.write_text('sentence1\tsentence2\tlabel\n'
                    'he said "stop\tshe stopped\t0.5\n'
                    '"quoted" start\tplain\t3.8\n'
                    'x\ty\n')
    manifest, table = run(store, [path], text_column="sentence1", text_pair_column="sentence2",
                          label_column="label")
    assert table.column("text").to_pylist() == ['he said "stop', '"quoted" start']
    assert table.column("text_pair").to_pylist() == ["she stopped", "plain"]
    assert table.column("label").to_pylist() == [0.5, 3.8]
    assert schema_types(manifest)["label"] == "double"
    assert manifest["accounting"]["rejected"] == {"wrong_field_count": 1}
    rejects = pq.read_table(store.reject_paths(manifest["version_id"])[0]).to_pylist()
    assert rejects[0]["origin_row"] == 4 and rejects[0]["reason"] == "wrong_field_count"


def test_tsv_without_header(store, tmp_path):
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tThe more books.\n")
    _, table = run(store, [path], csv_header=False, text_column="3", label_column="1")
    assert table.column("text").to_pylist()[1] == "The more books."
    assert table.column("label").to_pylist() == [1, 0]
    assert table.column_names == ["text", "label", "0", "2", "row_id"]


def test_parquet_keeps_types(store, tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a b", "c d"], "label": pa.array([3, 7], pa.int32()),
                             "score": [0.5, None], "tags": [["x"], []]}), path)
    manifest, table = run(store, [path], label_column="label")
    assert schema_types(manifest) == {"text": "string", "label": "int64", "score": "double",
                                      "tags": "list<element: string>", "row_id": "int64"}
    assert table.column("tags").to_pylist() == [["x"], []]


def test_hf_save_to_disk_dataset_and_dict(store, tmp_path):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"sentence": ["good film", "bad film", "ok"], "label": [1, 0, 1]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([2])}).save_to_disk(str(tmp_path / "dict"))
    manifest, table = run(store, [tmp_path / "single"], text_column="sentence", label_column="label")
    assert table.column("label").to_pylist() == [1, 0, 1]
    assert schema_types(manifest)["label"] == "int64"
    assert manifest["parents"][0]["format"] == "hf"
    _, table = run(store, [tmp_path / "dict"], text_column="sentence", label_column="label",
                   hf_split="validation")
    assert table.column("text").to_pylist() == ["ok"]
    with pytest.raises(DistilleryError, match="no split 'test'"):
        run(store, [tmp_path / "dict"], text_column="sentence", hf_split="test")


def test_hf_local_data_files_folder(store, tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "one", "y": 1}\n{"text": "two", "y": 2}\n')
    _, table = run(store, [folder], label_column="y")
    assert table.column("text").to_pylist() == ["one", "two"]
    assert table.column("label").to_pylist() == [1, 2]


def test_hub_name_fails_clearly_offline(store):
    with pytest.raises(DistilleryError, match="Hugging Face Hub"):
        run(store, ["glue/sst2"])


@pytest.mark.parametrize("suffix", ["gz", "zst"])
def test_compressed_inputs(store, tmp_path, suffix):
    data = (SAMPLE_DIR / "train.jsonl").read_bytes()
    path = tmp_path / f"train.jsonl.{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == "gz" else zstandard.ZstdCompressor().compress(data))
    assert detect_format(str(path)) == "jsonl"
    manifest, table = run(store, [path], label_column="label")
    _, plain = run(store, [SAMPLE_DIR / "train.jsonl"], label_column="label")
    assert table.equals(plain) and manifest["num_rows"] == 4000


def test_unreadable_inputs_name_the_file(store, tmp_path):
    with pytest.raises(DistilleryError, match="input not found: .*missing.jsonl"):
        run(store, [tmp_path / "missing.jsonl"])
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DistilleryError, match="bad.parquet"):
        run(store, [bad])
    truncated = tmp_path / "cut.txt.gz"
    lines = "".join(f"line {i * 7919 % 100_003}\n" for i in range(100_000)).encode()
    truncated.write_bytes(gzip.compress(lines)[:20_000])
    with pytest.raises(DistilleryError, match="cut.txt.gz: cannot read"):
        run(store, [truncated])
    odd = tmp_path / "data.xyz"
    odd.write_text("x\n")
    with pytest.raises(DistilleryError, match="--format"):
        run(store, [odd])
    with pytest.raises(DistilleryError, match="no column 'sentence'"):
        run(store, [SAMPLE_DIR / "dev.jsonl"], text_column="sentence")


def test_iter_lines_skips_long_line_in_bounded_memory():
    big = b"a" * 10_000_000
    fh = io.BytesIO(b"short\n" + big + b"\nafter\n")
    tracemalloc.start()
    out = [(n, line, head[:20]) for n, line, head in iter_lines(fh, max_bytes=1000)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(n, line) for n, line, _ in out] == [(1, b"short"), (2, None), (3, b"after")]
    assert out[1][2] == b"a" * 20
    assert peak < 4_000_000                       # 1 MiB skip blocks, never the 10 MB line


def test_record_kinds(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "x"}\n' + "y" * 50 + "\n")
    source = open_source(path)
    records = list(iter_records(source, max_row_bytes=20))
    assert records[0] == (1, LINE, b'{"text": "x"}')
    assert records[1][:2] == (2, BAD) and records[1][2][0] == "row_too_long"
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("text\nhello\n")
    assert list(iter_records(open_source(csv_path), max_row_bytes=100)) == [(2, ROW, {"text": "hello"})]


def test_dataset_script_fails_clearly_and_format_override(store, tmp_path):
    script = tmp_path / "myset.py"
    script.write_text("import datasets\n")
    with pytest.raises(DistilleryError, match="myset.py.*scripts are not supported"):
        run(store, [script])
    array = tmp_path / "rows.json"
    array.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n]\n')
    with pytest.raises(DistilleryError, match="rows.json: a JSON array"):
        run(store, [array])
    as_text = tmp_path / "notes.log"
    as_text.write_text("one\ntwo\n")
    manifest = run_step(store, plan_preprocess([as_text], PreprocessConfig(input=InputConfig(format="txt")))).manifest
    assert manifest["num_rows"] == 2 and manifest["parents"][0]["format"] == "txt"


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
def test_iter_lines_matches_plain_split_at_any_block_size(monkeypatch, block):
    import random

    from preprocess import readers

    monkeypatch.setattr(readers, "_BLOCK", block)
    rng = random.Random(block)
    lines = [bytes(rng.choice(b"ab\r ") for _ in range(rng.choice([0, 1, 5, 19, 20, 21, 60]))) for _ in range(300)]
    data = b"\xef\xbb\xbf" + b"\n".join(lines) + rng.choice([b"", b"\n"])
    expected = []
    content = data[3:-1] if data.endswith(b"\n") else data[3:]      # a final newline ends the last line
    for number, line in enumerate(content.split(b"\n"), 1):
        if len(line) > 20:
            expected.append((number, None))
        else:
            expected.append((number, line[:-1] if line.endswith(b"\r") else line))
    got = [(n, line) for n, line, _ in iter_lines(io.BytesIO(data), max_bytes=20)]
    assert got == expected
    heads = [head for _, line, head in iter_lines(io.BytesIO(data), max_bytes=20) if line is None]
    assert all(head.endswith(b" bytes]") for head in heads)


def test_extra_columns_selection(store):
    _, table = run(store, [SAMPLE_DIR / "dev.jsonl"], extra_columns=["synset"])
    assert table.column_names == ["text", "synset", "row_id"]
    with pytest.raises(DistilleryError, match="nope"):
        run(store, [SAMPLE_DIR / "dev.jsonl"], extra_columns=["nope"])


def test_csv_over_long_lines_reject_their_record(store, tmp_path):
    path = tmp_path / "long.csv"
    long_field = "y" * 5000
    path.write_text(f'text,label\nfine,1\n{long_field},0\n"multi\n{long_field}\nline",1\nlast,0\n')
    manifest, table = run(store, [path], label_column="label", max_row_bytes=1000)
    assert table.column("text").to_pylist() == ["fine", "last"]
    assert manifest["accounting"]["rejected"] == {"row_too_long": 2}
    rows = pq.read_table(store.reject_paths(manifest["version_id"])[0]).column("origin_row").to_pylist()
    assert rows == [3, 4]


def test_a_folder_is_its_files_read_with_the_same_rejects(tmp_path):
    from pipelines.store import Store

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"text": "first good row"}\n{"text": broken\n{"text": "second good"}\n')
    (folder / "b.txt").write_text("a text line\n")
    (folder / "sub" / "c.csv").write_text('text,note\n"a csv row",x\n"too",many,fields\n')
    (folder / ".hidden.jsonl").write_text("not read\n")
    store = Store(tmp_path / "store")
    manifest = run_step(store, plan_preprocess([folder], PreprocessConfig())).manifest
    texts = store.read_table(manifest["version_id"]).column("text").to_pylist()
    assert texts == ["first good row", "second good", "a text line", "a csv row"]
    assert manifest["accounting"]["rejected"] == {"malformed_json": 1, "wrong_field_count": 1}
    assert [p["path"] for p in manifest["parents"]] == [str(folder / "a.jsonl"), str(folder / "b.txt"),
                                                        str(folder / "sub" / "c.csv")]
    (folder / "notes.md").write_text("# notes\n")
    with pytest.raises(DistilleryError, match="notes.md"):
        run_step(store, plan_preprocess([folder], PreprocessConfig()))


def test_text_column_on_text_files_only_is_refused(tmp_path):
    from pipelines.store import Store

    path = tmp_path / "lines.txt"
    path.write_text("one line\n")
    with pytest.raises(DistilleryError, match="text_column 'sentence' has no effect"):
        sentence = PreprocessConfig(input=InputConfig(text_column="sentence"))
        run_step(Store(tmp_path / "s"), plan_preprocess([path], sentence))
