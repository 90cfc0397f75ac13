"""`ich watch`: run the pipeline once for each new span folder of labelled scans, when the folder is complete.

A span folder is `<input base>/span-<N>/`. It is complete when a `_READY` file is in it, or when it holds at least
one label CSV and a file for every image that its CSVs list (named `<image id>` or `<image id>.dcm`, at any
depth, as in the RSNA download). Files named otherwise need the `_READY` marker, written after the copy.

Spans run in span order, each once: a span that has a line in `<pipeline root>/decisions.jsonl` is done. A span
whose run fails has no line and runs again at the next poll; later spans wait for it, and for an incomplete
earlier span, so that each run's span window and baseline are those of the spans before it. One watcher per
pipeline root: `<pipeline root>/watch.lock` is held (flock) while it lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from components.dicom_example_gen.span_folders import parse_span
from ich_model.dicom import READY_MARKER
from ich_model.labels import LabelFileError, LabelRow, parse_label_rows
from pipeline.configs import PipelineConfig
from pipeline.local_runner import run_local

DECISIONS = "decisions.jsonl"
LOCK = "watch.lock"
# What a decision line takes from the run's summary (pipeline.summary.run_summary), beside its span and times.
SUMMARY_FIELDS = ("blessed", "reason", "metrics", "study", "pushed_to", "baseline", "evaluation", "study_evaluation")


class WatcherLocked(RuntimeError):
    """Another watcher holds the pipeline root."""


def span_folders(input_base: str | os.PathLike) -> dict[int, Path]:
    """span number -> folder, for every `span-<N>` folder directly under the input base."""
    base = Path(input_base)
    if not base.is_dir():
        raise FileNotFoundError(f"input base {base} is not a folder")
    spans = {}
    for entry in base.iterdir():
        span = parse_span(entry.name)
        if span is not None and entry.is_dir():
            spans[span] = entry
    return spans


def _listed_image_ids(csv_path: Path) -> set[str]:
    """The image IDs of a long-format RSNA CSV; a file or rows that are not RSNA labels list nothing (they are
    the ExampleGen's to report, not a reason to wait)."""
    with open(csv_path, newline="") as f:
        try:
            return {row.image_id for row in parse_label_rows(f, source=str(csv_path)) if isinstance(row, LabelRow)}
        except LabelFileError:
            return set()


def span_status(folder: Path) -> str | None:
    """None when the span folder is complete, else why not (for the console)."""
    if (folder / READY_MARKER).exists():
        return None
    csvs, names = [], set()
    for path in folder.rglob("*"):
        if path.is_file():
            if path.suffix.lower() == ".csv":
                csvs.append(path)
            else:
                names.add(path.name.removesuffix(".dcm"))
    if not csvs:
        return f"no label CSV yet (or write {READY_MARKER} when the copy is done)"
    listed = set().union(*(_listed_image_ids(path) for path in csvs))
    missing = listed - names
    if missing:
        return f"{len(missing)} of the {len(listed)} images that its CSV lists are not there yet"
    return None


def recorded_spans(pipeline_root: str | os.PathLike) -> set[int]:
    path = Path(pipeline_root) / DECISIONS
    if not path.exists():
        return set()
    return {json.loads(line)["span"] for line in path.read_text().splitlines() if line.strip()}


def record_decision(pipeline_root: str | os.PathLike, decision: dict) -> None:
    """Append one JSON line; flushed to disk before the span counts as done."""
    with open(Path(pipeline_root) / DECISIONS, "a") as f:
        f.write(json.dumps(decision, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def watch_lock(pipeline_root: str | os.PathLike) -> Iterator[Path]:
    """Exclusive for the life of the watcher; the system releases it if the process dies."""
    root = Path(pipeline_root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise WatcherLocked(f"another watcher (pid {holder}) is running on {root} ({path} is locked)") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Watcher:
    """Polls `config.input_base` for complete span folders and runs the pipeline here (local_runner.run_local)
    for each one that has no decision yet."""

    def __init__(self, config: PipelineConfig, echo=print):
        self.config, self.echo = config, echo
        self._waiting: dict[int, str] = {}  # the last reason printed for each incomplete span
        self.failures: dict[int, int] = {}  # failed attempts per span
        self.running: int | None = None  # the span whose run is under way

    def poll(self) -> list[dict]:
        """Run every pending complete span, in order; returns the decisions made. Stops at the first
        incomplete span or failed run (both are tried again at the next poll)."""
        decided = recorded_spans(self.config.pipeline_root)
        decisions = []
        for span, folder in sorted(span_folders(self.config.input_base).items()):
            if span in decided:
                continue
            why_not = span_status(folder)
            if why_not:
                if self._waiting.get(span) != why_not:
                    self.echo(f"span {span}: waiting, {why_not}", flush=True)
                    self._waiting[span] = why_not
                break
            self._waiting.pop(span, None)
            decision = self._run_span(span)
            if decision is None:
                break
            decisions.append(decision)
        return decisions

    def _run_span(self, span: int) -> dict | None:
        self.echo(f"span {span}: complete; running the pipeline", flush=True)
        started = time.monotonic()
        self.running = span
        try:
            summary = run_local(dataclasses.replace(self.config, span=span), echo=self.echo)
        except Exception as error:  # noqa: BLE001 - any failure of a run is retried, never fatal to the watcher
            self.failures[span] = self.failures.get(span, 0) + 1
            self.echo(f"span {span}: run failed ({type(error).__name__}: {error}); attempt "
                      f"{self.failures[span]}, retried at the next poll", flush=True)
            return None
        finally:
            self.running = None
        decision = {"span": span, **{key: summary.get(key) for key in SUMMARY_FIELDS},
                    "wall_time_s": round(time.monotonic() - started, 1),
                    "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record_decision(self.config.pipeline_root, decision)
        self.failures.pop(span, None)
        verdict = f"blessed, pushed to {decision['pushed_to']}" if decision["blessed"] else "not blessed, not pushed"
        self.echo(f"span {span}: {verdict} ({decision['reason']}); recorded in "
                  f"{Path(self.config.pipeline_root) / DECISIONS}", flush=True)
        return decision

    def watch(self, interval: float = 60.0, once: bool = False, stop: threading.Event | None = None) -> int:
        """Poll until `stop` is set (or Ctrl-C); with `once`, poll one time. Returns the number of failed
        runs at the last poll (0: everything pending was decided or is waiting)."""
        stop = stop or threading.Event()
        span_folders(self.config.input_base)  # a wrong input base fails before anything is written
        with watch_lock(self.config.pipeline_root):
            if not once:
                self.echo(f"watching {self.config.input_base} for complete span-N folders every {interval:g} s "
                          f"(Ctrl-C to stop); decisions in {Path(self.config.pipeline_root) / DECISIONS}",
                          flush=True)
            while True:
                decisions = self.poll()
                if once and not decisions and not self.failures and not self._waiting:
                    decided = sorted(recorded_spans(self.config.pipeline_root))
                    self.echo(f"no pending span under {self.config.input_base} (spans with a decision: "
                              f"{', '.join(map(str, decided)) or 'none'})", flush=True)
                if once or stop.wait(interval):
                    return len(self.failures)
