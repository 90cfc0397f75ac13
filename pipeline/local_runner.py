"""`ich run`: the pipeline on this machine with LocalDagRunner and the SQLite metadata store.

The console shows one line per component (started, finished, seconds); TFX's full log goes to
`<pipeline_root>/logs/run-<time>.log`. The run ends with the summary table and `<pipeline_root>/last_run.json`
(with each component's wall time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

import absl.logging
from tfx import v1 as tfx

from components.data_gate.executor import DataRefused
from ich_model.pseudonyms import root_salt
from ich_model.synth import LABELS_CSV, generate_dataset
from pipeline.configs import PipelineConfig
from pipeline.pipeline import create_pipeline
from pipeline.summary import format_summary, run_summary

LAST_RUN = "last_run.json"
INPUT_RESOLUTION_ERROR = "[%s] Input resolution error: %s"


class RunFailed(RuntimeError):
    """The pipeline started and a component failed (the message names it and the log)."""


class SpanRefused(RunFailed):
    """The DataGate stopped the run: the span's Examples break the schema (`anomalies`: split -> feature -> what)
    or drifted beyond the limits that block (`drift`, the DataGate's report); nothing was trained or pushed."""

    def __init__(self, refusal: DataRefused, log_path: Path):
        self.anomalies, self.drift = refusal.anomalies, refusal.drift
        super().__init__(f"{refusal}; the full log is {log_path}")


def _data_refusal(error: BaseException) -> DataRefused | None:
    """The DataRefused that `error` is or was raised from, if any."""
    while error is not None:
        if isinstance(error, DataRefused):
            return error
        error = error.__cause__ or error.__context__
    return None


class ComponentProgress(logging.Handler):
    """Turns LocalDagRunner's "Component X is running/finished" log records into numbered console lines, and
    keeps its input resolution errors: LocalDagRunner logs them, skips the component and goes on. A resolver
    whose strategy "returned None" found nothing yet (no analyzer cache before the first Transform): its
    consumers take that input as optional, so that is not an error."""

    def __init__(self, total: int, echo=print):
        super().__init__(level=logging.INFO)
        self.total, self.echo = total, echo
        self.done = 0
        self.started: dict[str, float] = {}
        self.unresolved: dict[str, str] = {}  # node -> the first line of its input resolution error
        self.empty: set[str] = set()  # resolvers that found nothing
        self.seconds: dict[str, float] = {}  # wall time of each component that finished

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == INPUT_RESOLUTION_ERROR:
            error = str(record.args[1]).splitlines()[0]
            if error.endswith("returned None."):
                self.empty.add(record.args[0])
            else:
                self.unresolved[record.args[0]] = error
            return
        if record.msg not in ("Component %s is running.", "Component %s is finished."):
            return
        node_id = record.args[0]
        if record.msg.endswith("running."):
            self.started[node_id] = time.monotonic()
            self.echo(f"[{self.done + 1:2d}/{self.total}] {node_id} ...", flush=True)
        else:
            self.done += 1
            seconds = time.monotonic() - self.started.pop(node_id, time.monotonic())
            self.seconds[node_id] = round(seconds, 1)
            outcome = ("skipped: its inputs could not be resolved" if node_id in self.unresolved else
                       "found nothing yet" if node_id in self.empty else f"finished in {seconds:.0f} s")
            self.echo(f"[{self.done:2d}/{self.total}] {node_id} {outcome}", flush=True)


def ensure_demo_data(config: PipelineConfig, echo=print) -> None:
    """With no data at the input base, write the synthetic demo set there (what `ich synth` writes)."""
    base = Path(config.input_base)
    if base.exists() and any(base.iterdir()):
        return
    settings = config.synth
    echo(f"no data in {base}: generating the synthetic demo set ({settings.patients} patients, "
         f"{settings.slices_per_study} slices per study, seed {settings.seed}, {settings.subtype_mix} subtypes)",
         flush=True)
    summary = generate_dataset(base, patients=settings.patients, slices_per_study=settings.slices_per_study,
                               seed=settings.seed, positive_fraction=settings.positive_fraction,
                               subtype_mix=settings.subtype_mix)
    echo(f"wrote {summary.slices} slices of {summary.studies} studies and {base / LABELS_CSV}", flush=True)


class _RunLog(logging.FileHandler):
    """The run's log file. A record it cannot write (a full disk) is dropped without logging's traceback on the
    console: the write that fails next in the run ends it with the error named."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass


@contextlib.contextmanager
def _logs_to_file(pipeline_root: str, progress: ComponentProgress):
    """During the run the root logger writes to a log file and feeds the progress lines, nothing else: absl's
    and Beam's console handlers would print every INFO record of every component."""
    log_dir = Path(pipeline_root) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / time.strftime("run-%Y%m%d-%H%M%S.log")
    file_handler = _RunLog(path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [file_handler, progress]
    root.setLevel(logging.INFO)
    tf_logger = logging.getLogger("tensorflow")  # TensorFlow's logger prints through its own handler
    saved_tf_handlers = tf_logger.handlers[:]
    tf_logger.handlers = [file_handler]
    # LocalDagRunner logs through absl. Set absl's own verbosity flag, not just its logger's level: saving a
    # SavedModel silences absl and then restores the flag's value (WARNING unless set), which would drop the
    # "Component ... is finished" records.
    saved_verbosity = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.INFO)
    try:
        yield path
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        tf_logger.handlers = saved_tf_handlers
        absl.logging.set_verbosity(saved_verbosity)
        file_handler.close()


def run_local(config: PipelineConfig, echo=print) -> dict:
    """Runs the pipeline to the end and returns the summary that it also writes to last_run.json. A component that fails
    stops the run with RunFailed, a span that the DataGate refuses with SpanRefused. The caller holds the pipeline
    root's lock (pipeline.writer_lock)."""
    ensure_demo_data(config, echo)
    Path(config.pipeline_root).mkdir(parents=True, exist_ok=True)
    root_salt(config.id_salt_path, config.id_salt)  # an explicit salt reaches the ExampleGen in its file only
    pipeline = create_pipeline(
        config, tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))
    progress = ComponentProgress(len(pipeline.components), echo)
    started = time.monotonic()
    with _logs_to_file(config.pipeline_root, progress) as log_path:
        echo(f"running pipeline {config.pipeline_name!r} ({config.preset} preset) from {config.input_base}; "
             f"artifacts under {config.pipeline_root}; full log in {log_path}", flush=True)
        try:
            tfx.orchestration.LocalDagRunner().run(pipeline)
        except Exception as error:
            refusal = _data_refusal(error)
            if refusal is not None:
                raise SpanRefused(refusal, log_path) from error
            failed = ", ".join(progress.started) or "the pipeline"
            raise RunFailed(f"{failed} failed ({type(error).__name__}: {error}); the full log is {log_path}") from error
    if progress.unresolved:
        node, error = next(iter(progress.unresolved.items()))
        raise RuntimeError(f"the pipeline did not finish: {node} was skipped ({error}); the full log is {log_path}")
    summary = run_summary(config.metadata_path, config.pipeline_name)
    summary["config"] = {**dataclasses.asdict(config), "id_salt": "(set)" if config.id_salt else ""}
    summary["wall_time_s"] = round(time.monotonic() - started, 1)
    summary["component_seconds"] = progress.seconds  # in the order the components finished
    out = Path(config.pipeline_root) / LAST_RUN
    out.write_text(json.dumps(summary, indent=2) + "\n")
    echo("", flush=True)
    echo(format_summary(summary), flush=True)
    echo(f"pipeline ran in {summary['wall_time_s'] / 60:.1f} min; summary written to {out}", flush=True)
    return summary
