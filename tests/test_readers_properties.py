"""Property-based tests of the readers: whatever bytes an input holds, a run either writes a version whose
accounting adds up (input_rows = kept + dropped + rejected) or stops with a one-line error naming the file."""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.errors import DistilleryError
from pipelines.runner import run_step
from pipelines.store import Store
from preprocess import InputConfig, PreprocessConfig, plan_preprocess

pytestmark = pytest.mark.filterwarnings("ignore")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=6)
JSON_LINE = st.one_of(
    st.builds(lambda text, label: json.dumps({"text": text, "label": label}), TEXT, JSON_VALUE),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["text", "label", "other"]), JSON_VALUE, max_size=3)),
    st.builds(json.dumps, JSON_VALUE),
    TEXT,                                                                # not JSON at all
)
CSV_FIELD = st.one_of(TEXT, st.sampled_from(['"', '""', ",", "\t", "\n", "\r\n", "'", "\\"]))


def account(path: Path, cfg: PreprocessConfig) -> None:
    """Preprocess ``path`` into a fresh store: the accounting adds up, or the error is one line naming it."""
    with tempfile.TemporaryDirectory() as root:
        try:
            manifest = run_step(Store(root), plan_preprocess([path], cfg)).manifest
        except DistilleryError as exc:
            message = str(exc)
            assert path.name in message and "\n" not in message, message
            return
    acc = manifest["accounting"]
    dropped, rejected = sum(acc.get("dropped", {}).values()), sum(acc.get("rejected", {}).values())
    assert acc["input_rows"] == acc["kept"] + dropped + rejected == manifest["num_rows"] + dropped + rejected


def encoded(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@PROPERTY
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".tsv"]))
def test_random_bytes_in_any_format(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        account(path, PreprocessConfig(workers=1, chunk_rows=7))


@PROPERTY
@given(lines=st.lists(JSON_LINE, max_size=25), encoding=ENCODINGS,
       newline=st.sampled_from(["\n", "\r\n"]), label=st.sampled_from([None, "label"]))
def test_json_lines(lines, encoding, newline, label):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_bytes(encoded(newline.join(lines), encoding))
        account(path, PreprocessConfig(workers=1, chunk_rows=5, input=InputConfig(label_column=label)))


@PROPERTY
@given(rows=st.lists(st.lists(CSV_FIELD, min_size=1, max_size=4), max_size=25), encoding=ENCODINGS,
       delimiter=st.sampled_from([",", "\t"]), raw_tail=st.binary(max_size=30))
def test_csv_and_tsv_lines(rows, encoding, delimiter, raw_tail):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("input.csv" if delimiter == "," else "input.tsv")
        path.write_bytes(encoded(buffer.getvalue(), encoding) + raw_tail)     # and a damaged end
        account(path, PreprocessConfig(workers=1, chunk_rows=5, input=InputConfig(label_column="label")))


@PROPERTY
@given(lines=st.lists(TEXT, max_size=25), encoding=ENCODINGS, raw=st.binary(max_size=30))
def test_text_lines(lines, encoding, raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.txt"
        path.write_bytes(encoded("\n".join(lines), encoding) + raw)
        account(path, PreprocessConfig(workers=1, chunk_rows=5))
