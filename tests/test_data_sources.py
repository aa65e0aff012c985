"""Parquet and CSV sources give the same batches as the shipped JSONL they were written from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtune.data import make_lm_batches, set_path
from jaxtune.data.config import SourceSpec
from jaxtune.data.errors import BadRow
from jaxtune.data.formats import read_row
from jaxtune.data.sources import open_dataset
from tests.test_data_tokenizers import read_set, smollm2

ONE_HOST = dict(host_index=0, host_count=1)


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def write_parquet(rows: list[dict], path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: [row.get(k) for row in rows] for k in columns(rows)})  # absent: null
    pq.write_table(table, path)


def write_csv(rows: list[dict], path) -> None:
    """As a spreadsheet would hold it: one cell per column, lists as JSON text, blanks empty."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns(rows))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )


def epoch_batches(path, rows: int) -> list[dict]:
    """The first batches, enough of them to hold every row once (an epoch and a bit)."""
    config = {"train": str(path), "seed": 5, "packing": True}
    batches = make_lm_batches(config, smollm2(), batch_size=8, seq_len=256, **ONE_HOST)
    out = [next(batches), next(batches)]
    assert batches.state()["position"] > rows  # examples consumed: every row was in a batch
    return out


@pytest.mark.parametrize("writer", [write_parquet, write_csv], ids=["parquet", "csv"])
def test_parquet_and_csv_batches_equal_jsonl(tmp_path, writer):
    rows = read_set("instruct")
    assert any("history" in r for r in rows) and any("system" in r for r in rows)
    path = tmp_path / ("instruct.parquet" if writer is write_parquet else "instruct.csv")
    writer(rows, path)
    expected = epoch_batches(set_path("instruct"), len(rows))
    for got, want in zip(epoch_batches(path, len(rows)), expected, strict=True):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_csv_cells_are_text_blanks_are_missing_lists_are_json(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text(
        "instruction,input,output,history,label\n"
        'Pad the number,NA,007,"[[""Hi"", ""Hello""]]",True\n'
        "Name a colour,,None,,0\n"
    )
    rows = list(open_dataset(SourceSpec(str(path))))
    assert rows[0] == {
        "instruction": "Pad the number",
        "input": "NA",
        "output": "007",
        "history": '[["Hi", "Hello"]]',
        "label": "True",
    }
    assert rows[1]["input"] is None and rows[1]["output"] == "None" and rows[1]["history"] is None
    first = read_row(rows[0], "alpaca", {})
    assert [m["content"] for m in first.messages] == ["Hi", "Hello", "Pad the number\nNA", "007"]
    assert read_row(rows[1], "alpaca", {}).messages[0]["content"] == "Name a colour"
    kto = {"prompt": "Q", "completion": "A"}
    assert read_row({**kto, "label": "True"}, "kto", {}).label is True
    assert read_row({**kto, "label": "0"}, "kto", {}).label is False
    with pytest.raises(BadRow, match="not valid JSON"):
        read_row({**rows[0], "history": "[[oops"}, "alpaca", {})
