"""Datasets through `datasets.load_dataset`, read in chunks into examples with row accounting.

    open_dataset(spec)          local json/jsonl/parquet/csv/txt file or folder, or a hub id
    prepare(spec, ...)          every row -> examples (map-style: done once, up front)
    stream_examples(ds, ...)    the same lazily, for streaming datasets

A bad row raises a DataError naming the file and row (1-based, as JSONL lines), unless
skip_bad_rows is set: then it is skipped and counted, with one DataWarning per source.
CSV cells are all read as text, a blank cell as a missing value, and list fields (history,
messages, tools) as JSON text, so a CSV file gives the rows its JSONL twin gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtune.data.config import SourceSpec
from jaxtune.data.errors import BadRow, DataError, DropRow, RowStats, where
from jaxtune.data.examples import Example, MaskOptions, apply_cutoff, build_examples, split_text
from jaxtune.data.formats import Pair, Text, detect_format, read_row, to_kind
from jaxtune.data.templates import ChatTemplate
from jaxtune.data.tokenize import tokenize_records

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
CHUNK = 256


def open_dataset(spec: SourceSpec, streaming: bool = False) -> Any:
    """A datasets.Dataset (or IterableDataset when streaming) for one source."""
    import datasets

    path = Path(spec.path).expanduser()
    kwargs: dict[str, Any] = {"split": spec.split, "streaming": streaming}
    if path.exists():
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in BUILDERS) if path.is_dir() else [path]
        )
        builders = {BUILDERS.get(p.suffix) for p in files}
        if not files or None in builders or len(builders) > 1:
            raise DataError(
                f"{spec.path}: expected .json, .jsonl, .parquet, .csv or .txt files of one kind, "
                f"found {[p.name for p in files][:5] or 'none'}"
            )
        builder = builders.pop()
        if builder == "csv":
            kwargs.update(csv_options(files[0]))
        load = lambda: datasets.load_dataset(builder, data_files=[str(p) for p in files], **kwargs)
    elif Path(spec.path).suffix in BUILDERS or spec.path.startswith((".", "/", "~")):
        raise DataError(f"{spec.path}: no such file or folder")
    else:
        load = lambda: datasets.load_dataset(spec.path, spec.name, **kwargs)
    try:
        return load()
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; all mean "cannot read this source"
        raise DataError(
            f"{spec.path}: could not load the dataset ({type(e).__name__}: {e})"
        ) from None


def csv_options(first_file: Path) -> dict[str, Any]:
    """Every CSV cell read as text ("007", "True", "NA" stay what they say); blank cells as
    missing values. Lists (history, messages, tools) are JSON text in their cells."""
    import csv

    import datasets

    with open(first_file, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if not header:
        raise DataError(f"{first_file}: the CSV file has no header row naming its columns")
    text = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": text, "keep_default_na": False, "na_values": [""]}


@dataclass(frozen=True)
class Preparation:
    """How rows become examples for one stage."""

    kind: str  # "lm" | "pair" | "unpaired" | "prompt"
    tokenizer: Any
    template: ChatTemplate | None
    options: MaskOptions
    cutoff: int
    truncation: str
    skip_bad_rows: bool


def _rows(batch: Mapping[str, list]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [
        dict(zip(keys, values, strict=True))
        for values in zip(*(batch[k] for k in keys), strict=True)
    ]


def source_format(spec: SourceSpec, column_names: Iterable[str] | None) -> str:
    if spec.format != "auto":
        return spec.format
    try:
        return detect_format(tuple(column_names or ()))
    except BadRow as e:
        raise DataError(f"{spec.path}: {e.reason}") from None


def process_chunk(
    rows: list[dict[str, Any]],
    first_row: int,
    spec: SourceSpec,
    fmt: str,
    prep: Preparation,
    stats: RowStats,
) -> list[list[Example]]:
    """Rows first_row, first_row+1, ... -> their examples ([] for a skipped row)."""
    records: list[Any] = []
    owners: list[int] = []
    outcome: list[list[Example] | BadRow] = [[] for _ in rows]
    for i, row in enumerate(rows):
        try:
            read = read_row(row, fmt, spec.columns)
            if isinstance(read, Pair) and read.chosen == read.rejected:
                raise DropRow("chosen and rejected are identical", "identical pair")
            for record in to_kind(read, prep.kind):
                records.append(record)
                owners.append(i)
        except BadRow as e:
            outcome[i] = e
    labels = [where(spec.path, first_row + i) for i in owners]
    tokenized = tokenize_records(records, prep.tokenizer, prep.template, labels)
    for record, owner, tokens in zip(records, owners, tokenized, strict=True):
        if isinstance(outcome[owner], BadRow):
            continue
        if isinstance(tokens, BadRow):
            outcome[owner] = tokens
            continue
        try:
            outcome[owner].extend(
                _cut(build_examples(record, tokens, prep.options), record, prep, stats)
            )
        except BadRow as e:
            outcome[owner] = e
    result = []
    for i, out in enumerate(outcome):
        stats.rows += 1
        if isinstance(out, BadRow):
            message = f"{where(spec.path, first_row + i)}: {out.reason}"
            if not (prep.skip_bad_rows or isinstance(out, DropRow)):
                raise DataError(message + " (set data.skip_bad_rows=True to skip such rows)")
            stats.skip(out.kind, message)
            out = []
        elif not out:
            stats.skip("dropped", f"{where(spec.path, first_row + i)}: nothing left to learn")
        stats.kept += bool(out)
        result.append(out)
    return result


def _cut(example: Example, record: Any, prep: Preparation, stats: RowStats) -> list[Example]:
    if isinstance(record, Text):
        return split_text(example, prep.cutoff)
    cut, truncated = apply_cutoff(example, prep.cutoff, prep.truncation, prep.kind)
    stats.truncated += truncated
    if cut is None:
        return []
    return [cut]


def iter_chunks(dataset: Any, start: int = 0) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(first row number, rows) chunks of a Dataset or IterableDataset."""
    row = start
    for batch in dataset.iter(batch_size=CHUNK):
        rows = _rows(batch)
        yield row, rows
        row += len(rows)


def prepare(spec: SourceSpec, prep: Preparation) -> tuple[list[Example], RowStats]:
    """Every example of a map-style source, in row order."""
    dataset = open_dataset(spec)
    if spec.max_rows is not None:
        dataset = dataset.select(range(min(spec.max_rows, len(dataset))))
    fmt = source_format(spec, dataset.column_names)
    stats = RowStats(spec.path)
    examples: list[Example] = []
    for first, rows in iter_chunks(dataset):
        for out in process_chunk(rows, first, spec, fmt, prep, stats):
            examples.extend(out)
    stats.warn()
    if not examples:
        raise DataError(f"{spec.path}: no usable rows ({stats.rows} read); see the warnings above")
    return examples, stats
