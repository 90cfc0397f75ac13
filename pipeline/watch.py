"""`ich watch`: run the pipeline once for each new span folder of labelled scans, when the folder is complete.

A span folder is `<input base>/span-<N>/`. It is complete when a `_READY` file is in it, or when it holds at least
one label CSV and a file for every image that its CSVs list (named `<image id>` or `<image id>.dcm`, at any
depth, as in the RSNA download). Files named otherwise need the `_READY` marker, written after the copy.

Spans run in span order, each once: a span that has a line in `<pipeline root>/decisions.jsonl` is done. A span
whose run fails has no line yet and is tried again after a wait that doubles with each attempt (attempts are
kept in `<pipeline root>/attempts.json`, so a restart or `--once` under cron counts on); after `max_attempts`
failed runs it is recorded as failed with its last error, and later spans go on. Until then later spans wait for
it, and for an incomplete earlier span, so that each run's span window and baseline are those of the spans before
it. The watcher holds the pipeline root's writer lock (pipeline/writer_lock.py) while it lives, so that no second
watcher and no `ich run` writes beside it.

A decision line that a crash tore (cut short, or not JSON) is not a decision: when the watcher starts, such lines
are moved to `decisions.jsonl.torn` with a warning. A span without a decision whose run had finished (the newest
run in the metadata store, on that span, with its Pusher completed: the watcher stopped before it wrote the line)
takes its decision from the store instead of running again against the model it had just pushed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from components.dicom_example_gen.span_folders import parse_span
from ich_model.dicom import READY_MARKER
from ich_model.json_lines import TORN_SUFFIX, append_record, read_records, set_aside_torn, write_atomically
from ich_model.labels import LabelFileError, LabelRow, parse_label_rows
from pipeline.configs import PipelineConfig
from pipeline.local_runner import SpanRefused, run_local
from pipeline.summary import finished_span_summary
from pipeline.writer_lock import pipeline_root_lock

DECISIONS = "decisions.jsonl"
TORN_DECISIONS = DECISIONS + TORN_SUFFIX
ATTEMPTS = "attempts.json"  # failed runs of the spans that have no decision yet
# What a decision line takes from the run's summary (pipeline.summary.run_summary), beside its span and times.
SUMMARY_FIELDS = ("blessed", "reason", "metrics", "study", "pushed_to", "baseline", "evaluation", "study_evaluation",
                  "drift")


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


def _is_decision(record: dict) -> bool:
    return isinstance(record.get("span"), int)


def read_decisions(pipeline_root: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """The log's decisions, and its lines that are not one (torn by a crash, or edited by hand)."""
    return read_records(Path(pipeline_root) / DECISIONS, _is_decision)


def recorded_spans(pipeline_root: str | os.PathLike) -> set[int]:
    return {decision["span"] for decision in read_decisions(pipeline_root)[0]}


def repair_decisions(pipeline_root: str | os.PathLike, echo=print) -> list[str]:
    """Move the log's torn lines to decisions.jsonl.torn and keep its whole decisions; returns the torn lines.
    Their spans have no decision: they are decided again (Watcher._run_span). Only the writer that holds the
    pipeline root's lock calls this."""
    path = Path(pipeline_root) / DECISIONS
    torn = set_aside_torn(path, _is_decision)
    if torn:
        echo(f"warning: {len(torn)} line(s) of {path} were not whole decisions (a crash while one was written?); "
             f"moved to {Path(pipeline_root) / TORN_DECISIONS}; their spans are decided again", flush=True)
    return torn


def record_decision(pipeline_root: str | os.PathLike, decision: dict) -> None:
    """Append one JSON line; flushed to disk before the span counts as done."""
    append_record(Path(pipeline_root) / DECISIONS, decision)


def read_attempts(pipeline_root: str | os.PathLike) -> dict[int, dict]:
    """span -> {"attempts", "last_error", "next_try_at" (seconds since the epoch)} for spans whose runs failed."""
    path = Path(pipeline_root) / ATTEMPTS
    if not path.exists():
        return {}
    return {int(span): entry for span, entry in json.loads(path.read_text()).items()}


def _write_attempts(pipeline_root: str | os.PathLike, attempts: dict[int, dict]) -> None:
    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(pipeline_root) / ATTEMPTS,
                      json.dumps({str(span): entry for span, entry in sorted(attempts.items())}, indent=1) + "\n")


class Watcher:
    """Polls `config.input_base` for complete span folders and runs the pipeline here (local_runner.run_local)
    for each one that has no decision yet. A failed run is tried again `retry_after` seconds later, then twice
    that, and so on; the `max_attempts`-th failure is the span's decision."""

    def __init__(self, config: PipelineConfig, echo=print, max_attempts: int = 3, retry_after: float = 60.0):
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts} is not at least 1")
        self.config, self.echo = config, echo
        self.max_attempts, self.retry_after = max_attempts, retry_after
        self._waiting: dict[int, str] = {}  # the last reason printed for each incomplete or backed-off span
        self.failures: set[int] = set()  # the spans whose run failed at this poll
        self.running: int | None = None  # the span whose run is under way

    def poll(self) -> list[dict]:
        """Run every pending complete span, in order; returns the decisions made. Stops at the first
        incomplete span or failed run (both are tried again at the next poll)."""
        decided = recorded_spans(self.config.pipeline_root)
        decisions, self.failures = [], set()
        for span, folder in sorted(span_folders(self.config.input_base).items()):
            if span in decided:
                continue
            why_not = span_status(folder) or self._backing_off(span)
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
        summary = finished_span_summary(self.config.metadata_path, self.config.pipeline_name, span)
        if summary is not None:
            self.echo(f"span {span}: its run had finished but its decision was not written; taken from the "
                      f"metadata store, not run again", flush=True)
            return self._decide(span, summary, wall_time_s=None, reconciled=True)
        self.echo(f"span {span}: complete; running the pipeline", flush=True)
        started = time.monotonic()
        self.running = span
        try:
            summary = run_local(dataclasses.replace(self.config, span=span), echo=self.echo)
        except SpanRefused as refusal:  # a decision: the same data would be refused again
            summary = {"blessed": False, "pushed_to": None, "reason": f"data refused: {refusal}",
                       "anomalies": refusal.anomalies, "drift": refusal.drift}
        except Exception as error:  # noqa: BLE001 - any failure of a run is retried, never fatal to the watcher
            summary = self._failed(span, f"{type(error).__name__}: {error}")
            if summary is None:
                return None
        finally:
            self.running = None
        return self._decide(span, summary, wall_time_s=round(time.monotonic() - started, 1))

    def _failed(self, span: int, error: str) -> dict | None:
        """Counts a failed run of `span`; the summary of its decision once it has failed `max_attempts` times."""
        self.failures.add(span)
        attempts = read_attempts(self.config.pipeline_root)
        count = attempts.get(span, {}).get("attempts", 0) + 1
        if count >= self.max_attempts:
            return {"blessed": False, "pushed_to": None, "failed": True,
                    "reason": f"run failed {count} time{'s' * (count != 1)}, last: {error}"}
        wait = self.retry_after * 2 ** (count - 1)
        attempts[span] = {"attempts": count, "last_error": error, "next_try_at": round(time.time() + wait, 1)}
        _write_attempts(self.config.pipeline_root, attempts)
        self.echo(f"span {span}: run failed ({error}); attempt {count} of {self.max_attempts}, tried again in "
                  f"{wait:g} s", flush=True)
        return None

    def _backing_off(self, span: int) -> str | None:
        entry = read_attempts(self.config.pipeline_root).get(span)
        if entry is None or entry["next_try_at"] <= time.time():
            return None
        return (f"attempt {entry['attempts']} of {self.max_attempts} failed ({entry['last_error']}); tried again "
                f"at {time.strftime('%H:%M:%S', time.localtime(entry['next_try_at']))}")

    def _decide(self, span: int, summary: dict, wall_time_s: float | None, reconciled: bool = False) -> dict:
        decision = {"span": span, **{key: summary.get(key) for key in SUMMARY_FIELDS}, "wall_time_s": wall_time_s,
                    "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"reconciled": True} if reconciled else {}),
                    **{key: summary[key] for key in ("anomalies", "failed") if key in summary}}
        record_decision(self.config.pipeline_root, decision)
        attempts = read_attempts(self.config.pipeline_root)
        if attempts.pop(span, None) is not None:
            _write_attempts(self.config.pipeline_root, attempts)
        verdict = (f"blessed, pushed to {decision['pushed_to']}" if decision["blessed"] else
                   "recorded as failed, not pushed" if decision.get("failed") else "not blessed, not pushed")
        self.echo(f"span {span}: {verdict} ({decision['reason']}); recorded in "
                  f"{Path(self.config.pipeline_root) / DECISIONS}", flush=True)
        return decision

    def watch(self, interval: float = 60.0, once: bool = False, stop: threading.Event | None = None) -> int:
        """Poll until `stop` is set (or Ctrl-C); with `once`, poll one time. Returns the number of spans whose run
        failed at the last poll (0: everything pending was decided or is waiting)."""
        stop = stop or threading.Event()
        span_folders(self.config.input_base)  # a wrong input base fails before anything is written
        with pipeline_root_lock(self.config.pipeline_root, "ich watch"):
            repair_decisions(self.config.pipeline_root, self.echo)
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
