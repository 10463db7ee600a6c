"""Reading a user's local data file into a ``datasets.Dataset``, or failing with one line that
names the file, the line and the fix.

Formats, chosen by the file's suffix:

    .tsv      tab-separated, no quoting (a quote is an ordinary character)
    .csv      comma-separated, fields may be quoted ("a, b" and "" inside a quoted field)
    .jsonl    one JSON object per line
    .json     a JSON array of objects, or JSON lines
    .parquet  a Parquet table

TSV and CSV files start with a header line naming their columns unless ``data.columns`` names
them (headerless files such as AG News: ``[label, title, description]``). Before ``datasets``
parses a text file, one pass over it checks every line (UTF-8, the field count of every TSV/CSV
record, unclosed quotes, every JSON line), because the parser's own errors do not say where.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet as pq

from core.errors import DataError

BUILDERS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""File suffix -> ``datasets`` builder."""

DELIMITED = {".tsv": {"delimiter": "\t", "quoting": csv.QUOTE_NONE}, ".csv": {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL}}
"""Suffix -> the :mod:`csv` dialect of delimited text files (pandas reads them the same way)."""


def load_table(path: Path, columns: list[str] | None = None) -> datasets.Dataset:
    """Check and read one local data file.

    Args:
        path: a .tsv, .csv, .jsonl, .json or .parquet file.
        columns: the column names of a headerless TSV/CSV file (``data.columns``); None when the
            file has a header line. Ignored for the other formats, which name their columns.

    Returns:
        The file's rows, one column per field.

    Raises:
        DataError: the file is missing, of an unsupported format, empty, not UTF-8, has no data
            rows, a TSV/CSV record with an unclosed quote or another number of fields than the
            header (or ``columns``), a JSON line that does not parse or is not an object, or is
            not a Parquet file; each names the line where there is one.
    """
    check_file(path)
    if path.suffix in DELIMITED:
        check_delimited(path, columns)
    elif path.suffix in {".jsonl", ".json"}:
        check_json(path)
    else:
        check_parquet(path)
    kwargs = {}
    if path.suffix in DELIMITED:
        dialect = DELIMITED[path.suffix]
        kwargs = {"sep": dialect["delimiter"], "quoting": dialect["quoting"]}
        if columns is not None:
            kwargs["column_names"] = list(columns)
    try:
        return datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets wraps parser errors in several types
        cause = str(exc.__cause__ or exc).strip().splitlines()[-1]
        raise DataError(path, f"could not be parsed as {path.suffix[1:]} ({cause}); check the file's format") from None


def check_file(path: Path) -> None:
    """Fail early, with the file named, on a missing, unsupported, empty or non-UTF-8 file.

    Raises:
        DataError: the file is missing, unsupported, empty, or has a line that is not UTF-8.
    """
    if not path.is_file():
        raise DataError(path, "no such file; check data.root (or $DISTILL_DATA_DIR) and the split's path")
    if path.suffix not in BUILDERS:
        raise DataError(path, f"unsupported format {path.suffix!r}; use one of {sorted(BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(path, "the file is empty")
    if path.suffix == ".parquet":
        return
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, f"line {line} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                      f"re-encode the file as UTF-8") from None


def check_delimited(path: Path, columns: list[str] | None) -> None:
    """Check every record of a TSV/CSV file: closed quotes and the header's number of fields.

    Raises:
        DataError: naming the line a bad record starts on, or the file has no data rows.
    """
    dialect = DELIMITED[path.suffix]
    expected, rows, start = (len(columns) if columns else None), 0, 1
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, strict=True, **dialect)
        try:
            for record in reader:
                if record:
                    if expected is None:
                        expected, source = len(record), "the header line"
                    else:
                        rows += 1
                        if len(record) != expected:
                            raise DataError(path, f"line {start} has {len(record)} fields but "
                                                  f"{source if columns is None else 'data.columns'} has {expected}; "
                                                  f"{_field_count_fix(path, columns)}")
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(path, f"line {start}: {exc} (an unclosed quote?); close the quote or double the "
                                  f"quotes inside the field (\"\")") from None
    if rows == 0:
        raise DataError(path, "the file has no data rows" + ("" if columns else
                              " (a headerless file? then name its columns in data.columns)"))


def _field_count_fix(path: Path, columns: list[str] | None) -> str:
    if path.suffix == ".csv":
        return "quote fields that contain a comma, or fix the line"
    return "remove tabs inside fields, or fix the line" + ("" if columns else "; a headerless file needs data.columns")


def check_json(path: Path) -> None:
    """Check a JSON-lines file line by line, or a ``.json`` array as a whole.

    Raises:
        DataError: naming the line of the first JSON error, or the first line that is not an object.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {exc.lineno}: not valid JSON ({exc.msg}); fix the line") from None
        if not records:
            raise DataError(path, "the file has no data rows")
        return
    rows = 0
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {line}: not valid JSON ({exc.msg} at column {exc.colno}); fix the line "
                                  f"(each line holds one JSON object)") from None
        if not isinstance(record, dict):
            raise DataError(path, f"line {line} is a JSON {type(record).__name__}, not an object; write one "
                                  f"{{\"column\": value, ...}} object per line")
        rows += 1
    if rows == 0:
        raise DataError(path, "the file has no data rows")


def check_parquet(path: Path) -> None:
    """Check that a file is a readable Parquet table with rows.

    Raises:
        DataError: the file is not Parquet (or truncated), or has no rows.
    """
    try:
        rows = pq.read_metadata(path).num_rows
    except (pyarrow.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file ({exc}); write it again (e.g. "
                              f"pandas.DataFrame.to_parquet)") from None
    if rows == 0:
        raise DataError(path, "the file has no data rows")
