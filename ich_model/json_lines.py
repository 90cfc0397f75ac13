"""Append-only logs of JSON lines that a crash cannot break: each record is one line, flushed to disk before its
event counts as done; a reader sets aside the lines that are not whole records (a line cut short by a crash while
it was written, or edited by hand) instead of failing on them. `ich watch`'s decision log and `ich serve`'s
results log are written this way."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

TORN_SUFFIX = ".torn"  # where a log's torn lines are set aside: <log>.torn


def read_records(path: str | os.PathLike, is_record: Callable[[dict], bool]) -> tuple[list[dict], list[str]]:
    """The log's records (JSON objects that `is_record` accepts), and its lines that are not one. A last line
    without its newline was cut short while it was written, whatever it holds."""
    path = Path(path)
    if not path.exists():
        return [], []
    body, _, tail = path.read_text(errors="replace").rpartition("\n")
    records, torn = [], []
    for line in body.split("\n") if body else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and is_record(record):
            records.append(record)
        elif line.strip():
            torn.append(line)
    return records, torn + ([tail] if tail else [])


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line, on disk (fsync) when this returns."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def set_aside_torn(path: str | os.PathLike, is_record: Callable[[dict], bool]) -> list[str]:
    """Move the log's torn lines to `<log>.torn` (appended) and rewrite the log atomically with its whole records
    only; returns the torn lines. Only the log's one writer calls this."""
    records, torn = read_records(path, is_record)
    if torn:
        path = Path(path)
        with open(path.with_name(path.name + TORN_SUFFIX), "a") as f:
            f.writelines(line + "\n" for line in torn)
        write_atomically(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in records))
    return torn


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """A crash leaves the old file or the new one, never a part of either."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
