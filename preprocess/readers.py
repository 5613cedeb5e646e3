"""Streaming readers: every input format becomes a stream of records ``(origin_row, kind, payload)``.

Kinds:

* ``LINE``: one raw line of a text format (``txt`` / ``jsonl``) as ``bytes`` without its newline; decoding and
  JSON parsing happen later, in the workers.
* ``ROW``: an already parsed row as a ``dict`` (CSV/TSV, Parquet, Hugging Face datasets, and one sentence of a
  CoNLL column file as ``{"tokens": [...], "tags": [...]}``, its strings decoded with ``surrogateescape``).
* ``BAD``: a row the reader itself had to reject, as ``(reason, raw_text)`` (over-long line, wrong CSV field
  count, malformed CSV, blank CSV line, a CoNLL sentence with a line that lacks its token or tag column:
  ``tag_count_mismatch``).

``origin_row`` is the 1-based physical line number for text formats (CSV/TSV: the line the record starts on,
the header being line 1; CoNLL: the line of the sentence's first token) and the 0-based row index for Parquet
and Hugging Face datasets.

Nothing here loads a whole file: lines are read with a length limit (``max_row_bytes``), so a 10 MB line costs
at most ``max_row_bytes`` of memory, and gzip / zstd inputs are decompressed as streams.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import fingerprint
from pipelines.confine import check_input, open_regular
from pipelines.errors import DistilleryError, InputChangedError

LINE, ROW, BAD = 0, 1, 2
Record = tuple[int, int, Any]
RecordColumns = tuple[Sequence[int], Sequence[int], Sequence[Any]]    # origins, kinds, payloads of records
FORMATS = ("auto", "txt", "jsonl", "csv", "tsv", "parquet", "hf", "conll")
TEXT_FORMATS = ("txt", "jsonl", "csv", "tsv", "conll")
CONLL_COLUMNS = ("tokens", "tags")   # the keys of a CoNLL sentence's row
RAW_CHARS = 1000                      # raw content kept in a rejects row
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".conll": "conll", ".bio": "conll", ".iob": "conll"}
_COMPRESSED = (".gz", ".zst", ".zstd")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20
RECORD_BATCH = 4096                   # records per list from iter_record_batches (other than lines)


@dataclass(frozen=True)
class InputSource:
    """One input: where it is, its format, the sha256 that identifies its content and its file signature (sizes,
    times and inode numbers when it was fingerprinted: ``check_unchanged`` compares them after the read)."""

    path: str
    format: str
    sha256: str
    signature: tuple = ()

    def parent(self) -> dict[str, str]:
        """The raw-input parent entry of a manifest (the version id hashes all of it but the path)."""
        return {"kind": "raw", "path": self.path, "sha256": self.sha256, "format": self.format}


def file_signature(path: Path) -> tuple:
    """What changes when a file (or any file below a folder) is written: size, modification and change times,
    inode. The change time cannot be set back, so a file restored after a change still differs."""
    def one(item: Path) -> tuple:
        info = item.stat()
        return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev

    if path.is_dir():
        return tuple((p.relative_to(path).as_posix(), one(p)) for p in sorted(path.rglob("*")) if p.is_file())
    return one(path)


def _changed(path: str, detail: str) -> InputChangedError:
    return InputChangedError(f"{path} changed while it was read ({detail}); nothing written from it is kept: "
                             f"rerun once the file is no longer being written")


def check_unchanged(source: InputSource) -> None:
    """Refuse an input whose file signature differs from the one taken when it was fingerprinted."""
    if source.signature:
        try:
            now = file_signature(Path(source.path))
        except OSError:
            now = ()
        if now != source.signature:
            raise _changed(source.path, "its size or times differ from when it was fingerprinted")


def raw_text(data: bytes | str, limit: int = RAW_CHARS) -> str:
    """Printable, truncated form of a rejected row for the rejects shard."""
    if isinstance(data, bytes):
        data = data[: limit * 4].decode("utf-8", "backslashreplace")
    text = data.encode("utf-8", "backslashreplace").decode("utf-8") if not data.isascii() else data
    return text[:limit]


def _is_hf_saved(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def expand_folders(paths: list[str | Path], fmt: str = "auto") -> list[str]:
    """The inputs with every folder that is not a saved Hugging Face dataset replaced by its data files (sorted,
    hidden ones left out), so that each file is read by its own reader with its own rejects and accounting.
    A file whose format the extension does not tell, or that is not a regular file, is refused, never skipped."""
    inputs: list[str] = []
    for path in map(Path, paths):
        if fmt != "auto" or not path.is_dir() or _is_hf_saved(path):
            inputs.append(str(path))
            continue
        entries = [p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        for entry in entries:
            if not entry.is_dir():
                check_input(entry)          # a device, FIFO or socket (or a dangling link) among the files: refused
        files = sorted(p for p in entries if p.is_file())
        unknown = [p.name for p in files if _extension(p.name) not in _EXTENSIONS]
        if unknown:
            raise DistilleryError(f"{path}: a folder input is its data files, and the format of {', '.join(unknown)} "
                                  f"is not known from the extension; pass the data files themselves")
        if not files:
            raise DistilleryError(f"{path}: an empty folder (no data files)")
        inputs += [str(p) for p in files]
    return inputs


def _extension(name: str) -> str:
    """A file name's extension, a compression suffix (.gz, .zst) left out."""
    name = name.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return os.path.splitext(name)[1]


def detect_format(path: str, fmt: str = "auto") -> str:
    """The format of ``path``: ``fmt`` unless it is ``auto``, else from the extension (``.gz``/``.zst`` ignored)."""
    if fmt not in FORMATS:
        raise DistilleryError(f"unknown input format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    p = Path(path)
    ext = _extension(p.name)
    if p.is_dir() or p.name.endswith(".py") or (not p.exists() and ext not in _EXTENSIONS):
        return "hf"                                   # saved dataset, data-files folder, script or hub name
    if ext not in _EXTENSIONS:
        raise DistilleryError(f"{path}: cannot tell the format from the extension '{ext}'; pass --format "
                              f"({', '.join(FORMATS[1:])})")
    return _EXTENSIONS[ext]


def input_formats(paths: list[str | Path], fmt: str = "auto") -> list[str]:
    """The resolved format of each data file that ``paths`` stand for (folders expanded), in reading order."""
    return [detect_format(path, fmt) for path in expand_folders(paths, fmt)]


def open_source(path: str | Path, fmt: str = "auto", hf_split: str = "train") -> InputSource:
    """Check that an input exists and is readable; fingerprint its content (streamed sha256)."""
    path = str(path)
    fmt = detect_format(path, fmt)
    p = Path(path)
    if fmt == "hf" and not p.exists():
        dataset = _load_hub(path, hf_split)
        digest = hashlib.sha256()
        for item in sorted(f["filename"] for f in dataset.cache_files):
            digest.update(fingerprint.file_sha256(item).encode())
        return InputSource(path, fmt, digest.hexdigest())
    check_input(p)                       # a regular file or a folder: a device or a FIFO is refused unread
    if fmt in TEXT_FORMATS + ("parquet",) and not p.is_file():
        raise DistilleryError(f"{path}: expected a {fmt} file, found a folder (use --format hf for dataset folders)")
    if fmt == "parquet":
        try:
            pq.ParquetFile(path).close()
        except (pa.ArrowException, OSError) as exc:
            raise DistilleryError(f"{path}: not a readable Parquet file ({exc})") from None
    try:
        if fmt == "jsonl":
            with open_binary(path) as fh:
                head = fh.read(4096).lstrip(_BOM + b" \t\r\n")
            if head.startswith(b"["):
                raise DistilleryError(f"{path}: a JSON array is not streamed; convert it to JSON Lines "
                                      f"(one object per line, e.g. `jq -c '.[]'`)")
        signature = file_signature(p)
        digest = fingerprint.path_sha256(p)
        if file_signature(p) != signature:
            raise _changed(path, "it changed while it was fingerprinted")
    except (*_read_errors(),) as exc:
        raise DistilleryError(f"{path}: cannot read ({exc})") from None
    return InputSource(path, fmt, digest, signature)


class _Tap(io.RawIOBase):
    """A raw file that hashes every byte read through it: what a step read is what it can prove it read."""

    def __init__(self, fd: int):
        self.raw = io.FileIO(fd, "rb")
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n or 0

    def hexdigest_to_end(self) -> str:
        """The sha256 of the whole file: what was read, plus what is left (read to the end)."""
        for block in iter(lambda: self.raw.read(_BLOCK), b""):
            self.digest.update(block)
        return self.digest.hexdigest()

    def close(self) -> None:
        self.raw.close()
        super().close()


class _ZstdReader(io.RawIOBase):
    """zstd frames decompressed as a stream; input that ends inside a frame is an error (``EOFError``), never a
    silent end of the rows. Input is fed in small slices, so one read never inflates to more than ~128 MiB."""

    _FEED = 4096

    def __init__(self, raw: BinaryIO):
        import zstandard

        self.raw = raw
        self.decompressor = zstandard.ZstdDecompressor()
        self.frame = self.decompressor.decompressobj()
        self.in_frame = False
        self.pending = b""
        self.out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.out:
            if not self.pending:
                self.pending = self.raw.read(self._FEED)
                if not self.pending:
                    if self.in_frame:
                        raise EOFError("the zstd stream ends inside a frame (the file is truncated)")
                    return 0
            piece, self.pending = self.pending, b""
            self.out = self.frame.decompress(piece)
            self.in_frame = True
            if self.frame.eof:
                self.pending = self.frame.unused_data
                self.frame = self.decompressor.decompressobj()
                self.in_frame = False
        n = min(len(buffer), len(self.out))
        buffer[:n] = self.out[:n]
        self.out = self.out[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_binary(path: str | Path, tap: list[_Tap] | None = None) -> BinaryIO:
    """Open a regular file for binary reading, decompressing gzip / zstd transparently (detected by magic bytes);
    a truncated compressed file raises ``EOFError``. With ``tap`` (a list), the raw file's hashing reader is
    appended to it, so the caller can check what was read."""
    fd = open_regular(path)
    magic = os.pread(fd, 4, 0)
    raw = _Tap(fd)
    if tap is not None:
        tap.append(raw)
    if magic[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb")  # type: ignore[return-value]
    if magic == _ZSTD_MAGIC:
        return io.BufferedReader(_ZstdReader(io.BufferedReader(raw)))  # type: ignore[return-value]
    return io.BufferedReader(raw)  # type: ignore[return-value]


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zstandard.ZstdError)


def iter_line_batches(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, list[bytes | None], dict[int, bytes]]]:
    """The lines of ``iter_lines`` a block at a time (so a caller pays Python's per-item costs once a block, not
    once a line): ``(first_line_number, lines, heads)``, ``heads`` by position in ``lines`` for the lines too long
    (None there)."""
    number = 0
    carry = b""                     # start of a line continued in the next block
    skipped = -1                    # bytes of an over-long line seen so far (-1: not inside one)
    head = b""
    first = True
    newline = b"\n"
    while True:
        block = fh.read(max(_BLOCK, len(_BOM)) if first else _BLOCK)
        if not block:
            break
        if first:
            block, first = (block[len(_BOM):] if block.startswith(_BOM) else block), False
            if b"\r" in block and b"\n" not in block:
                newline = b"\r"            # old Mac line endings: a lone CR ends each line
        parts = block.split(newline)
        tail = parts.pop()
        start, lines, heads = number + 1, [], {}
        returns = b"\r" in block or b"\r" in carry
        if parts and (skipped >= 0 or carry):            # the line the previous block left open ends here
            parts[0] = carry + parts[0]
            if skipped >= 0:
                lines.append(None)
                heads[0] = head + f" ... [{skipped + len(parts[0])} bytes]".encode()
                parts = parts[1:]
                skipped = -1
            carry = b""
        if parts and max(map(len, parts)) <= max_bytes:   # the usual block: every line fits
            lines += [p[:-1] if p[-1:] == b"\r" else p for p in parts] if returns else parts
        else:
            for part in parts:
                if len(part) > max_bytes:
                    heads[len(lines)] = part[: RAW_CHARS * 4] + f" ... [{len(part)} bytes]".encode()
                    lines.append(None)
                else:
                    lines.append(part[:-1] if part.endswith(b"\r") else part)
        number += len(lines)
        if skipped >= 0:
            skipped += len(tail)
        elif len(carry) + len(tail) > max_bytes:
            head, skipped, carry = (carry + tail[: RAW_CHARS * 4])[: RAW_CHARS * 4], len(carry) + len(tail), b""
        else:
            carry += tail
        if lines:
            yield start, lines, heads
    if skipped >= 0:
        yield number + 1, [None], {0: head + f" ... [{skipped} bytes]".encode()}
    elif carry:
        yield number + 1, [carry[:-1] if carry.endswith(b"\r") else carry], {}


def iter_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, bytes]]:
    """Yield ``(line_number, line, head)``: ``line`` without its newline (``\n`` or ``\r\n``; a lone ``\r`` when
    the first block has no ``\n`` but has one), or None when it is longer than ``max_bytes``; then ``head`` holds
    its first bytes and its size, and the rest is skipped unread into memory. Reads 1 MiB blocks, so memory stays
    below ``max_bytes`` + 2 MiB whatever the file holds."""
    for start, lines, heads in iter_line_batches(fh, max_bytes):
        for i, line in enumerate(lines):
            yield start + i, line, heads.get(i, b"")


def _line_record_batches(fh: BinaryIO, max_bytes: int) -> Iterator[RecordColumns]:
    for start, lines, heads in iter_line_batches(fh, max_bytes):
        kinds: list[int] = [LINE] * len(lines)
        payloads: list[Any] = lines
        for i, head in heads.items():
            kinds[i], payloads[i] = BAD, ("row_too_long", raw_text(head))
        yield range(start, start + len(lines)), kinds, payloads


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _csv_records(fh: BinaryIO, fmt: str, header: bool, quoting: str, max_bytes: int) -> Iterator[Record]:
    """CSV (standard quoting) or GLUE-style TSV (quoting disabled: csv.QUOTE_NONE) records as dicts."""
    too_long: list[tuple[int, bytes]] = []

    def lines() -> Iterator[str]:
        for number, line, head in iter_lines(fh, max_bytes):
            if line is None:
                too_long.append((number, head))
                yield "\n"
            else:
                yield line.decode("utf-8", "surrogateescape") + "\n"

    if quoting == "auto":
        quoting = "none" if fmt == "tsv" else "minimal"
    csv.field_size_limit(max_bytes)
    reader = csv.reader(lines(), delimiter="\t" if fmt == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
    columns: list[str] | None = None
    previous_line = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            start, previous_line = previous_line + 1, reader.line_num
            yield start, BAD, ("malformed_csv", str(exc))
            continue
        start, previous_line = previous_line + 1, reader.line_num
        if too_long and too_long[0][0] <= previous_line:       # an over-long line inside this record
            head = too_long[0][1]
            del too_long[: sum(1 for number, _ in too_long if number <= previous_line)]
            yield start, BAD, ("row_too_long", raw_text(head))
            continue
        if columns is None:
            columns = _unique(fields) if header else [str(i) for i in range(len(fields))]
            if header:
                continue
        if not fields:
            yield start, BAD, ("blank_line", "")
        elif len(fields) != len(columns):
            yield start, BAD, ("wrong_field_count", raw_text(("\t" if fmt == "tsv" else ",").join(fields)))
        else:
            yield start, ROW, dict(zip(columns, fields))


def conll_fields(line: str) -> list[str]:
    """The columns of a CoNLL line: split at each tab when it has one (fields stripped of spaces), else at runs
    of spaces; trailing spaces and tabs are no column."""
    line = line.rstrip(" \t")
    if "\t" in line:
        return [part.strip(" ") for part in line.split("\t")]
    return [part for part in line.split(" ") if part]


def _conll_sentence(start: int, lines: list[str], too_long: bool, token_column: int, tag_column: int) -> Record:
    """One sentence's record: its tokens and tags, or BAD when a line lacks the token or the tag column (or the
    sentence is over the byte limit)."""
    raw = "\n".join(lines)
    if too_long:
        return start, BAD, ("row_too_long", raw_text(raw + " ... [sentence over max_row_bytes]"))
    tokens, tags = [], []
    for line in lines:
        fields = conll_fields(line)
        n = len(fields)
        token_at, tag_at = token_column % n, tag_column % n
        if not (-n <= token_column < n and -n <= tag_column < n) or token_at == tag_at:
            return start, BAD, ("tag_count_mismatch", raw_text(raw))
        tokens.append(fields[token_at])
        tags.append(fields[tag_at])
    return start, ROW, dict(zip(CONLL_COLUMNS, (tokens, tags)))


def _conll_records(fh: BinaryIO, token_column: int, tag_column: int, max_bytes: int) -> Iterator[Record]:
    """CoNLL column files: one record per sentence (lines up to a blank line); ``-DOCSTART-`` lines are skipped
    (and end a sentence). A sentence of more than ``max_bytes`` bytes is ``row_too_long``, its lines past the
    limit left unkept."""
    start, lines, size, too_long = 0, [], 0, False
    for number, line, head in iter_lines(fh, max_bytes):
        text = line.decode("utf-8", "surrogateescape") if line is not None else None
        if text is not None and (not text.strip() or conll_fields(text)[0] == "-DOCSTART-"):
            if start:
                yield _conll_sentence(start, lines, too_long, token_column, tag_column)
            start, lines, size, too_long = 0, [], 0, False
            continue
        start = start or number
        size += len(line if line is not None else head) + 1
        if text is None or size > max_bytes:
            too_long = True
            if text is None and not lines:
                lines.append(head.decode("utf-8", "replace"))
        elif not too_long:
            lines.append(text)
    if start:
        yield _conll_sentence(start, lines, too_long, token_column, tag_column)


def _load_hub(name: str, split: str) -> Any:
    """A dataset from the Hugging Face Hub (only works with network access; offline it fails clearly)."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot use this input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistilleryError(f"input '{name}' is not a local file or folder and could not be loaded from the "
                              f"Hugging Face Hub ({first}); offline, download it elsewhere with "
                              f"datasets.load_dataset(...).save_to_disk(DIR) and pass DIR") from None


def load_hf(path: str, split: str) -> Any:
    """A Hugging Face dataset: a ``save_to_disk`` folder (Dataset), local data files / folder (streamed
    IterableDataset) or a hub name."""
    import datasets

    p = Path(path)
    if not p.exists():
        return _load_hub(path, split)
    if _is_hf_saved(p):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DistilleryError(f"{path}: no split '{split}' (splits: {', '.join(loaded)}); pass --hf-split")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(path, split=split, streaming=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistilleryError(f"{path}: cannot load as a Hugging Face dataset ({first}); note that dataset "
                              f"scripts are not supported by datasets>=4: point at the data files instead") from None


def arrow_schema(source: InputSource, split: str = "train") -> pa.Schema | None:
    """The Arrow schema of a Parquet file or saved Hugging Face dataset; None for formats without one."""
    if source.format == "parquet":
        return pq.read_schema(source.path)
    if source.format == "hf":
        import datasets

        dataset = load_hf(source.path, split)
        if isinstance(dataset, datasets.Dataset):
            return dataset.data.schema
    return None


def class_label_names(source: InputSource, column: str, split: str = "train") -> list[str] | None:
    """The names of a Hugging Face ``List(ClassLabel)`` column (integer tags, e.g. ``ner_tags``) of a saved
    dataset or of a Parquet file written by ``datasets``; None when the column is no such feature."""
    features: Any = None
    if source.format == "parquet":
        metadata = pq.read_schema(source.path).metadata or {}
        try:
            features = json.loads(metadata[b"huggingface"])["info"]["features"]
        except (KeyError, ValueError, TypeError):
            return None
    elif source.format == "hf":
        dataset = load_hf(source.path, split)
        features = dataset.features.to_dict() if getattr(dataset, "features", None) else None
    feature = features.get(column) if isinstance(features, dict) else None
    inner = feature.get("feature") if isinstance(feature, dict) else None
    names = inner.get("names") if isinstance(inner, dict) and inner.get("_type") == "ClassLabel" else None
    return [str(name) for name in names] if isinstance(names, list) else None


def _row_bytes(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """The bytes of each row's string and binary values (what decides its size in memory as Python objects)."""
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type) or \
                pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
            sizes += pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    return sizes


def _arrow_batches_records(batches: Iterator[pa.RecordBatch | pa.Table], max_row_bytes: int) -> Iterator[Record]:
    """Rows of Arrow batches as dicts; a row whose text is over ``max_row_bytes`` becomes ``row_too_long``
    before it is turned into Python objects."""
    index = 0
    for batch in batches:
        sizes = _row_bytes(batch)
        too_long = sizes > max_row_bytes
        rows = iter(batch.filter(pa.array(~too_long)).to_pylist()) if too_long.any() else iter(batch.to_pylist())
        for position in range(batch.num_rows):
            if too_long[position]:
                yield index, BAD, ("row_too_long", f"[row of {int(sizes[position])} bytes]")
            else:
                yield index, ROW, next(rows)
            index += 1


def arrow_batch_rows(average_row_bytes: float) -> int:
    """Rows per batch read from an Arrow input: 1024, fewer for wide rows (about 32 MiB a batch)."""
    return int(max(1, min(1024, (32 << 20) // max(1.0, average_row_bytes))))


def iter_record_batches(source: InputSource, *, max_row_bytes: int, csv_header: bool = True,
                        csv_quoting: str = "auto", hf_split: str = "train", token_column: int = 0,
                        tag_column: int = -1) -> Iterator[RecordColumns]:
    """Stream the records of one input in order, as columns (origins, kinds, payloads) of a block of lines or of
    up to ``RECORD_BATCH`` records.
    A file that cannot be read raises DistilleryError naming it; a text input whose bytes, read to the end, are
    not the fingerprinted ones raises ``InputChangedError``. ``token_column`` / ``tag_column``: the columns
    (indices, negative from the end) of a CoNLL file."""
    try:
        if source.format in TEXT_FORMATS:
            tap: list[_Tap] = []
            with open_binary(source.path, tap) as fh:
                if source.format in ("txt", "jsonl"):
                    yield from _line_record_batches(fh, max_row_bytes)
                elif source.format == "conll":
                    yield from _batched(_conll_records(fh, token_column, tag_column, max_row_bytes))
                else:
                    yield from _batched(_csv_records(fh, source.format, csv_header, csv_quoting, max_row_bytes))
                digest = tap[0].hexdigest_to_end()
            if digest != source.sha256:
                raise _changed(source.path, f"the bytes read have sha256 {digest[:12]}, not the fingerprinted "
                                            f"{source.sha256[:12]}")
        elif source.format == "parquet":
            parquet = pq.ParquetFile(source.path)
            meta = parquet.metadata
            sizes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            batch = arrow_batch_rows(sizes / max(1, meta.num_rows))
            yield from _batched(_arrow_batches_records(parquet.iter_batches(batch_size=batch), max_row_bytes))
        else:
            import datasets

            dataset = load_hf(source.path, hf_split)
            if isinstance(dataset, datasets.Dataset):
                batch = arrow_batch_rows(dataset.data.nbytes / max(1, dataset.num_rows))
                yield from _batched(_arrow_batches_records(dataset.with_format("arrow").iter(batch_size=batch),
                                                           max_row_bytes))
            else:
                yield from _batched((index, ROW, row) for index, row in enumerate(dataset))
    except DistilleryError:
        raise
    except (*_read_errors(), pa.ArrowException) as exc:
        raise DistilleryError(f"{source.path}: cannot read ({type(exc).__name__}: {exc})") from None


def _batched(records: Iterator[Record]) -> Iterator[RecordColumns]:
    while batch := list(itertools.islice(records, RECORD_BATCH)):
        origins, kinds, payloads = zip(*batch)
        yield origins, kinds, payloads


def iter_records(source: InputSource, **kwargs: Any) -> Iterator[Record]:
    """The records of ``iter_record_batches`` one by one (same keyword options)."""
    for origins, kinds, payloads in iter_record_batches(source, **kwargs):
        yield from zip(origins, kinds, payloads)


def sample_rows(source: InputSource, n: int, budget: int = 32 << 20, **kwargs: Any) -> list[dict[str, Any]]:
    """The first ``n`` parseable rows of a JSONL, CSV/TSV or streamed Hugging Face input as dicts (fewer when
    they hold more than ``budget`` bytes of text: the sample of a file of long documents stays small)."""
    rows: list[dict[str, Any]] = []
    size = 0
    for _, kind, payload in iter_records(source, **kwargs):
        size += len(payload) if kind == LINE else sum(len(v) for v in payload.values() if isinstance(v, str)) \
            if kind == ROW else 0
        if rows and size > budget:
            break
        if kind == ROW:
            rows.append(payload)
        elif kind == LINE:
            try:
                value = json.loads(payload)
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue
            if isinstance(value, dict):
                rows.append(value)
        if len(rows) >= n:
            break
    return rows
