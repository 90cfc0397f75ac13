"""The RSNA label CSV: long format, `ID,Label`, one row per (image, subtype), e.g. `ID_12cadc6af_epidural,0`."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ich_model.constants import LABELS, NUM_LABELS

HEADER = ["ID", "Label"]
BYTE_ORDER_MARK = "\ufeff"  # what a UTF-8 BOM reads as; spreadsheet programs write one
_LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}


class LabelFileError(ValueError):
    """The file is not an RSNA-format label CSV at all (wrong header, unreadable)."""


@dataclass(frozen=True)
class LabelRow:
    image_id: str
    label: str
    value: int
    line: int


@dataclass(frozen=True)
class LabelProblem:
    """A row or an image whose labels cannot be used: `kind` is malformed, conflict or incomplete."""

    kind: str
    image_id: str | None
    line: int | None
    message: str


def parse_label_rows(lines: Iterable[str], source: str = "labels") -> Iterator[LabelRow | LabelProblem]:
    """Parse CSV lines (header first) into rows, and a problem for each malformed row, naming its line (a row
    the csv module cannot read, e.g. a field over its size limit, included: the rows after it still count). A
    UTF-8 byte-order mark before the header is ignored. A file without a label row after its header is a
    LabelFileError once its lines are read."""
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise LabelFileError(f"{source}: unreadable header ({error})") from None
    if header:
        header[0] = header[0].removeprefix(BYTE_ORDER_MARK)
    if header is None or [h.strip() for h in header] != HEADER:
        raise LabelFileError(f"{source}: expected the RSNA header 'ID,Label', found {header!r}")
    rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            rows += 1
            yield LabelProblem("malformed", None, reader.line_num, f"{source}:{reader.line_num}: {error}")
            continue
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        rows += 1
        if len(row) != 2:
            yield LabelProblem("malformed", None, line, f"{source}:{line}: expected 2 columns, found {len(row)}")
            continue
        key, raw_value = row[0].strip(), row[1].strip()
        image_id, _, label = key.rpartition("_")
        if not image_id or label not in _LABEL_INDEX:
            yield LabelProblem("malformed", None, line,
                               f"{source}:{line}: ID {key!r} is not <image id>_<one of {', '.join(LABELS)}>")
            continue
        if raw_value not in ("0", "1"):
            yield LabelProblem("malformed", image_id, line, f"{source}:{line}: label {raw_value!r} is not 0 or 1")
            continue
        yield LabelRow(image_id, label, int(raw_value), line)
    if not rows:
        raise LabelFileError(f"{source}: the header 'ID,Label' and no label row after it")


def merge_image_rows(image_id: str, rows: Iterable[LabelRow]) -> tuple[np.ndarray | None, list[LabelProblem]]:
    """One multi-hot vector (project label order) from an image's rows. Duplicates that agree merge; rows that
    disagree are a conflict, and an image missing some of the six labels is incomplete: both give no vector."""
    values: dict[str, dict[int, list[int]]] = {}
    for row in rows:
        values.setdefault(row.label, {}).setdefault(row.value, []).append(row.line)
    problems = []
    for label, by_value in sorted(values.items()):
        if len(by_value) > 1:
            lines = sorted(line for found in by_value.values() for line in found)
            problems.append(LabelProblem("conflict", image_id, lines[0],
                                         f"{image_id}: {label} is both 0 and 1 (lines {lines})"))
    missing = [name for name in LABELS if name not in values]
    if missing:
        problems.append(LabelProblem("incomplete", image_id, None, f"{image_id}: no row for {', '.join(missing)}"))
    if problems:
        return None, problems
    vector = np.zeros(NUM_LABELS, dtype=np.int64)
    for label, by_value in values.items():
        vector[_LABEL_INDEX[label]] = next(iter(by_value))
    return vector, []


@dataclass
class LabelTable:
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[LabelProblem] = field(default_factory=list)
    duplicate_rows: int = 0


def read_rsna_labels(csv_path: str | os.PathLike) -> LabelTable:
    """Read an RSNA-format label CSV into one multi-hot vector of six per image ID."""
    rows: dict[str, list[LabelRow]] = {}
    table = LabelTable()
    with open(csv_path, newline="") as f:
        for item in parse_label_rows(f, source=os.fspath(csv_path)):
            if isinstance(item, LabelProblem):
                table.problems.append(item)
            else:
                rows.setdefault(item.image_id, []).append(item)
    for image_id, image_rows in rows.items():
        table.duplicate_rows += len(image_rows) - len({r.label for r in image_rows})
        vector, problems = merge_image_rows(image_id, image_rows)
        if vector is not None:
            table.labels[image_id] = vector
        table.problems.extend(problems)
    return table
