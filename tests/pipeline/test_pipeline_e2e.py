"""The whole pipeline on tiny synthetic spans, driven by `ich watch`'s Watcher with LocalDagRunner and the real
SQLite metadata store.

One watcher runs in a thread while the spans arrive: span 1 (complete) is trained from scratch, its study model
blessed and pushed; span 2 waits while images are missing, then has a broken label CSV (its run fails and is
retried at each poll), then labels shuffled between its images: its members warm-start from span 1's study model,
its study model is compared with span 1's, is not blessed and the serving folder stays byte-for-byte the same. A
watcher restarted after span 2's decision line was lost (a stop between the run's end and the line) takes the
decision from the metadata store and runs nothing. Along the way: every component ran, TFMA holds every subtype
and slice, the pushed study model scores raw Examples study by study, and the summary's figures agree with
sklearn. (Two spans, not more: each run of the pipeline costs minutes of the suite.)
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from sklearn.metrics import roc_auc_score

from components.dicom_example_gen.span_folders import span_folder
from ich_model.constants import LABELS
from ich_model.metrics import weighted_log_loss
from ich_model.serving import PROBABILITIES, SERVING_SIGNATURE
from ich_model.study_serving import REFINED_PROBABILITIES, STUDY_PROBABILITIES
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset
from pipeline.configs import preset, with_overrides
from pipeline.evaluation import MODEL_OUTPUTS, SLICE_FEATURES
from pipeline.local_runner import LAST_RUN
from pipeline.report.data import BASELINE
from pipeline.summary import CANDIDATE, artifact_span
from pipeline.watch import DECISIONS, Watcher, recorded_spans
from pipeline.writer_lock import PipelineRootLocked, pipeline_root_lock
from tests.pipeline_helpers import BEAM_ARGS

pytestmark = pytest.mark.e2e

NODES = ["DicomExampleGen", "span_window_resolver", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
         "latest_span_profile_resolver", "DataGate", "latest_transform_cache_resolver", "Transform",
         "latest_blessed_model_resolver", "trainer_a", "trainer_b", "trainer_c", "Ensemble", "Evaluator",
         "StudySequenceGen", "context_trainer", "StudyEvaluator", "Pusher"]
TRAINERS = ["trainer_a", "trainer_b", "trainer_c"]
RESOLVERS = {"span_window_resolver", "latest_transform_cache_resolver", "latest_blessed_model_resolver",
             "latest_span_profile_resolver"}
# Above chance with room below what a model that learned span 1 scores; against labels that bleeding and clean
# slices traded, a model that learned scores far below 0.5. The eval split's 11 studies (about 60 slices) give an
# AUC a standard error near 0.07: at 0.65, a run whose study model scored 0.614 (members 0.61 to 0.71) failed.
ANY_AUC_FLOOR = 0.6
# A bound for a hung run, not a speed test: span 1 trains three members 100 steps, which ran past 15 minutes
# (trainer_a 414 s, trainer_b 353 s) on a 2-core machine with slower cores that another test run shared.
RUN_TIMEOUT_S = 2700


# What a hospital's files carry and no output may: written into every slice of both spans (the synthetic set has
# none of them), with a hospital-style PatientID per patient.
IDENTIFYING_TAGS = {"PatientName": "Quillfeather^Ottoline^Maud", "PatientBirthDate": "19580314",
                    "AccessionNumber": "ACC2026120377", "InstitutionName": "Saint Aldric Memorial Hospital",
                    "ReferringPhysicianName": "Vandermeulen^Hester", "PerformingPhysicianName": "Okonkwo^Tobias",
                    "NameOfPhysiciansReadingStudy": "Brightwater^Imogen"}
MEDICAL_RECORD_NUMBER = "MRN-{:08d}"


def add_identifying_tags(images: Path, first_number: int) -> dict[str, set[str]]:
    """Writes IDENTIFYING_TAGS into every slice and replaces each patient's ID by a medical record number;
    returns the values that no output may hold: the tags', the record numbers, and the study and series UIDs."""
    numbers: dict[str, str] = {}
    found = {"tags": set(IDENTIFYING_TAGS.values()), "patient_ids": set(), "uids": set()}
    for path in sorted(images.iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientID = numbers.setdefault(ds.PatientID, MEDICAL_RECORD_NUMBER.format(first_number + len(numbers)))
        for keyword, value in IDENTIFYING_TAGS.items():
            setattr(ds, keyword, value)
        found["patient_ids"].add(ds.PatientID)
        found["uids"] |= {ds.StudyInstanceUID, ds.SeriesInstanceUID}
        ds.save_as(path)
    return found


def write_span(base: Path, span: int, patients: int, seed: int, identifiers: dict, missing: int = 0,
               labels=None) -> list[Path]:
    """A span folder as a transfer leaves it: the CSV (its text passed through `labels`), then every image but
    the last `missing` (returned). Every slice carries identifying tags, added to `identifiers`."""
    staging = base.parent / f"staging-{span}"
    generate_dataset(staging, patients=patients, slices_per_study=6, seed=seed, size=96, positive_fraction=0.5,
                     subtype_mix="balanced", progress=False)
    for kind, values in add_identifying_tags(staging / IMAGES_DIR, first_number=40417263 + 1000 * span).items():
        identifiers.setdefault(kind, set()).update(values)
    folder = base / span_folder(span)
    (folder / IMAGES_DIR).mkdir(parents=True)
    (folder / LABELS_CSV).write_text((labels or str)((staging / LABELS_CSV).read_text()))
    images = sorted((staging / IMAGES_DIR).iterdir())
    for image in images[:len(images) - missing]:
        os.replace(image, folder / IMAGES_DIR / image.name)
    return images[len(images) - missing:]


def shuffled_labels(csv_text: str, seed: int) -> str:
    """The same images and rows, with the six-label vectors permuted between images so that bleeding slices
    trade labels with clean ones: a uniform shuffle of a set this small can leave much of the signal by chance,
    this one leaves none."""
    rows = list(csv.reader(csv_text.splitlines()))[1:]
    vectors: dict[str, dict[str, str]] = {}
    for key, value in rows:
        image_id, _, label = key.rpartition("_")
        vectors.setdefault(image_id, {})[label] = value
    rng = np.random.default_rng(seed)
    bleeding = list(rng.permutation(sorted(i for i, v in vectors.items() if v["any"] == "1")))
    clean = list(rng.permutation(sorted(i for i, v in vectors.items() if v["any"] == "0")))
    pairs = min(len(bleeding), len(clean))
    source = {**dict(zip(bleeding[:pairs], clean[:pairs], strict=True)),
              **dict(zip(clean[:pairs], bleeding[:pairs], strict=True)),
              **dict(zip(clean[pairs:], rng.permutation(clean[pairs:]), strict=True)),
              **dict(zip(bleeding[pairs:], rng.permutation(bleeding[pairs:]), strict=True))}
    lines = ["ID,Label"] + [f"{image_id}_{label},{vectors[source[image_id]][label]}"
                            for image_id in sorted(vectors) for label in LABELS]
    return "\n".join(lines) + "\n"


def replace_file(path: Path, text: str) -> None:
    """Atomically, as a careful transfer does, so that a run reads the old file or the new one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Console:
    """The watcher's console lines, for the test to wait on."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *parts, **_):
        self.lines.append(" ".join(str(p) for p in parts))

    def wait_for(self, predicate, what: str, timeout: float = RUN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; console:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.5)


def kill_watcher_during(overrides: dict[str, str], node: str, after_s: float = 5.0, until=None) -> list[str]:
    """`ich watch` in a process of its own, killed with SIGKILL (process group and all) `after_s` seconds after it
    starts `node`, or, with `until`, as soon as `until()` holds (a thread polls it every few milliseconds from the
    start: the console line of a short component can reach this process after the component has finished); its
    console lines."""
    command = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))",
               "watch", "--input-base", overrides["input_base"], "--pipeline-root", overrides["pipeline_root"],
               "--interval", "0.5", *(f"--set={name}={value}" for name, value in overrides.items()
                                      if name not in ("input_base", "pipeline_root"))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    killed = threading.Event()

    def kill():
        if not killed.is_set():
            killed.set()
            os.killpg(process.pid, signal.SIGKILL)

    def kill_when_until_holds():
        deadline = time.monotonic() + 1800
        while not killed.is_set() and process.poll() is None and time.monotonic() < deadline:
            if until():
                kill()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_when_until_holds, daemon=True) if until is not None else None
    if watcher is not None:
        watcher.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip())
            if until is None and line.rstrip().endswith(f"] {node} ..."):
                time.sleep(after_s)
                break
    finally:
        kill()
        process.wait(timeout=60)
        if watcher is not None:
            watcher.join(timeout=60)
    assert process.returncode == -signal.SIGKILL, "\n".join(lines)
    if not any(line.endswith(f"] {node} ...") for line in lines):
        raise AssertionError(f"the watcher process was killed or ended before {node} started:\n" + "\n".join(lines))
    return lines


def execution_running(config, node: str) -> bool:
    """Whether the metadata store holds an execution of `node` as RUNNING (read when no run writes to it)."""
    return any(execution.last_known_state == metadata_store_pb2.Execution.RUNNING
               for execution in _runs(_store(config), config, node))


def complete_versions(serving: Path) -> dict[str, bool]:
    """Each entry of the serving folder and whether it holds a whole SavedModel."""
    return {entry.name: (entry / "saved_model.pb").is_file() for entry in serving.iterdir()} if serving.exists() else {}


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    base = root / "data"
    base.mkdir()
    overrides = {
        "input_base": str(base), "pipeline_root": str(root / "root"), "beam_pipeline_args": json.dumps(BEAM_ARGS),
        # Span 1 learns from scratch; span 2 moves little from it (a few warm steps), so that its candidate still
        # tells bleeding from clean and its shuffled labels show.
        "train_steps": "100", "warm_start_steps": "5", "eval_every_steps": "20", "eval_steps": "4",
        "batch_size": "16",
        # One gate that tells learning from shuffled labels; the demo run checks the real gates' figures.
        "auc_floors": json.dumps({name: ANY_AUC_FLOOR if name == "any" else 0.0 for name in LABELS}),
        "max_weighted_log_loss": "10", "auc_regression_tolerance": "1", "log_loss_regression_tolerance": "10",
        # A span's eval split holds a handful of studies: their AUC is not a gate here.
        "study_auc_floor": "0", "context.train_steps": "60"}
    config = with_overrides(preset("demo"), overrides)
    identifiers: dict[str, set[str]] = {}
    write_span(base, 1, patients=30, seed=31, identifiers=identifiers)
    # A watcher killed (-9) while span 1's first member trains; the one started below runs span 1 again.
    killed = {"console": kill_watcher_during(overrides, "trainer_a"),
              "decided": recorded_spans(config.pipeline_root), "serving": Path(config.serving_path).exists()}
    # Another, killed (-9) as soon as span 1's Pusher has its output folder (TFX makes it once the execution is
    # registered, before the executor starts; the metadata store is not read while a run writes it): the watcher
    # started below runs span 1 a third time.
    pushed = Path(config.pipeline_root) / "Pusher" / "pushed_model"
    killed_push = {"console": kill_watcher_during(overrides, "Pusher",
                                                  until=lambda: pushed.is_dir() and any(pushed.iterdir()))}
    killed_push.update(pusher_left_running=execution_running(config, "Pusher"),
                       decided=recorded_spans(config.pipeline_root),
                       serving=complete_versions(Path(config.serving_path)))
    good_csv = {}

    def keep(text: str) -> str:
        good_csv["text"] = text
        return text

    still_copying = write_span(base, 2, patients=30, seed=32, missing=2, labels=keep, identifiers=identifiers)
    labels_csv = base / span_folder(2) / LABELS_CSV

    console, stop = Console(), threading.Event()
    # Seconds before a failed span's second attempt (its third comes twice as late): time for the test to see the
    # second failure and mend the CSV.
    watcher = Watcher(config, echo=console, retry_after=2.0)
    failures: list[BaseException] = []

    def watch():
        try:
            watcher.watch(interval=0.5, stop=stop)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    state = {"config": config, "console": console, "identifiers": identifiers, "killed": killed,
             "killed_push": killed_push}
    try:
        console.wait_for(lambda: 1 in recorded_spans(config.pipeline_root), "span 1's decision")
        state["after_span_1"] = json.loads((Path(config.pipeline_root) / LAST_RUN).read_text())
        state["versions_after_span_1"] = complete_versions(Path(config.serving_path))
        console.wait_for(lambda: any(line.startswith("span 2: waiting") for line in console.lines),
                         "span 2 to be reported incomplete", timeout=60)
        time.sleep(2)  # a few more polls
        state["decided_while_span_2_was_incomplete"] = recorded_spans(config.pipeline_root)
        with pytest.raises(PipelineRootLocked), pipeline_root_lock(config.pipeline_root, "ich run"):  # the watcher's
            pass
        serving = Path(config.serving_path)
        state["serving_before_span_2"] = folder_digest(serving)
        # A CSV that lists no image is not a reason to wait: the run starts and fails in the ExampleGen.
        replace_file(labels_csv, good_csv["text"].replace("ID,Label", "Image,Value", 1))
        for image in still_copying:
            os.replace(image, base / span_folder(2) / IMAGES_DIR / image.name)
        console.wait_for(lambda: sum("span 2: run failed" in line for line in console.lines) >= 2,
                         "two failed attempts at span 2")
        replace_file(labels_csv, shuffled_labels(good_csv["text"], seed=3))
        console.wait_for(lambda: 2 in recorded_spans(config.pipeline_root), "span 2's decision")
        state["serving_after_span_2"] = folder_digest(serving)
    finally:
        stop.set()
        thread.join(timeout=RUN_TIMEOUT_S)
    assert not failures, failures
    # A watcher that stopped after span 2's run and before its decision line: the restarted one takes the
    # decision from the metadata store and runs nothing.
    decisions_path = Path(config.pipeline_root) / DECISIONS
    *kept, state["span_2_as_written"] = decisions_path.read_text().splitlines()
    decisions_path.write_text("".join(line + "\n" for line in kept))
    state["lines_before_restart"] = len(console.lines)
    state["restart_failures"] = Watcher(config, echo=console).watch(once=True)
    decisions = [json.loads(line) for line in (Path(config.pipeline_root) / DECISIONS).read_text().splitlines()]
    state["decisions"] = {decision["span"]: decision for decision in decisions}
    state["decision_lines"] = len(decisions)
    return state


def _store(config) -> metadata_store.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    return metadata_store.MetadataStore(connection)


def _executions(store, config, node: str) -> list:
    """The node's executions that ran to the end (COMPLETE; not those taken from the cache), oldest first."""
    return [e for e in _runs(store, config, node) if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]


def _runs(store, config, node: str) -> list:
    """Every execution of the node, whatever its state, oldest first."""
    context = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{node}")
    assert context is not None, f"{node} never ran"
    return sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)


def _artifacts(store, execution, key: str, event_type=metadata_store_pb2.Event.INPUT) -> list:
    ids = [event.artifact_id for event in store.get_events_by_execution_ids([execution.id])
           if event.type == event_type and event.path.steps and event.path.steps[0].key == key]
    return store.get_artifacts_by_id(ids)


def test_each_span_ran_once_in_order_and_the_decisions_were_recorded(spans):
    decisions = spans["decisions"]
    assert sorted(decisions) == [1, 2] and spans["decision_lines"] == 2
    for decision in decisions.values():
        assert {"span", "blessed", "reason", "metrics", "pushed_to"} <= set(decision)
    assert spans["decided_while_span_2_was_incomplete"] == {1}
    # Span 1 had nothing to compare with; span 2 was compared with span 1 (the same source: no drift beyond the
    # demo's limits), each label's prevalence as span 2's Examples hold it.
    assert decisions[1]["drift"]["baseline_spans"] == []
    drift = decisions[2]["drift"]
    assert drift["baseline_spans"] == [1] and drift["over"] == [], drift
    assert {"intercept_group", "image_size", "pixel_spacing_mm"} <= set(drift["features"])
    store = _store(spans["config"])
    span_2 = _artifacts(store, _executions(store, spans["config"], "DicomExampleGen")[-1], "examples",
                        metadata_store_pb2.Event.OUTPUT)[0]
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(span_2.uri, "Split-*", "*.gz")), "GZIP")
    labels = np.array([tf.train.Example.FromString(r.numpy()).features.feature["label"].int64_list.value
                       for r in records])
    for index, label in enumerate(LABELS):
        assert drift["prevalence"][label]["span"] == pytest.approx(labels[:, index].mean(), abs=1e-4), label
    # The restarted watcher took span 2's lost decision from the metadata store and ran nothing.
    assert spans["restart_failures"] == 0
    after_restart = spans["console"].lines[spans["lines_before_restart"]:]
    assert not any("running the pipeline" in line for line in after_restart)
    assert any("span 2: its run had finished but its decision was not written" in line for line in after_restart)
    as_written, reconciled = json.loads(spans["span_2_as_written"]), decisions[2]
    assert reconciled["reconciled"] and "reconciled" not in as_written
    for key in ("blessed", "reason", "metrics", "study", "pushed_to", "baseline", "evaluation", "study_evaluation"):
        assert reconciled[key] == as_written[key], key


def test_a_watcher_killed_while_span_1_trained_ran_it_again_from_the_cache_and_pushed_once(spans):
    """kill -9 of `ich watch` during trainer_a: no decision, nothing pushed; the next watcher ran span 1 again,
    its ingestion and statistics taken from the cache (the same artifacts), decided it once and pushed one model."""
    config, killed = spans["config"], spans["killed"]
    assert any(line.endswith("] trainer_a ...") for line in killed["console"])
    assert killed["decided"] == set() and not killed["serving"]
    store = _store(config)

    def runs(node: str) -> list:
        return _runs(store, config, node)

    trainer_a = runs("trainer_a")
    assert trainer_a[0].last_known_state == metadata_store_pb2.Execution.RUNNING  # where the kill left it
    assert trainer_a[1].last_known_state == metadata_store_pb2.Execution.COMPLETE
    for node in ("DicomExampleGen", "StatisticsGen"):
        first, again = runs(node)[:2]
        assert (first.last_known_state, again.last_known_state) == (metadata_store_pb2.Execution.COMPLETE,
                                                                    metadata_store_pb2.Execution.CACHED), node
        outputs = [[a.id for a in _artifacts(store, e, key, metadata_store_pb2.Event.OUTPUT)]
                   for e in (first, again) for key in ("examples" if node == "DicomExampleGen" else "statistics",)]
        assert outputs[0] == outputs[1], node
    assert spans["decisions"][1]["blessed"] and len(spans["versions_after_span_1"]) == 1
    assert spans["decisions"][1]["drift"]["baseline_spans"] == []  # not compared with its own first pass


def test_a_run_killed_during_its_pusher_ran_again_from_the_cache_and_pushed_once(spans):
    """kill -9 of `ich watch` while span 1's Pusher ran: no decision, and the serving folder held only whole
    models; the next watcher took every upstream output from the cache, pushed, and span 1 has one version."""
    config, killed = spans["config"], spans["killed_push"]
    assert any(line.endswith("] Pusher ...") for line in killed["console"])
    assert killed["pusher_left_running"] and killed["decided"] == set()
    assert all(killed["serving"].values()), killed["serving"]  # nothing half-written, whether or not it copied
    store = _store(config)
    pusher = _runs(store, config, "Pusher")
    assert [e.last_known_state for e in pusher[:2]] == [metadata_store_pb2.Execution.RUNNING,
                                                        metadata_store_pb2.Execution.COMPLETE]
    for node in ("Transform", *TRAINERS, "Ensemble", "Evaluator", "StudySequenceGen", "context_trainer",
                 "StudyEvaluator"):
        # Span 1's last run (before span 2's) took them from the cache, the same outputs as the killed run's.
        *earlier, last = [e for e in _runs(store, config, node) if e.id < pusher[1].id]
        assert last.last_known_state == metadata_store_pb2.Execution.CACHED, node
        outputs = [sorted(event.artifact_id for event in store.get_events_by_execution_ids([e.id])
                          if event.type == metadata_store_pb2.Event.OUTPUT) for e in (earlier[-1], last)]
        assert outputs[0] and outputs[0] == outputs[1], node
    versions = spans["versions_after_span_1"]
    assert len(versions) == 1 and all(versions.values()), versions
    assert Path(spans["decisions"][1]["pushed_to"]).name in versions


def test_span_1_was_trained_from_scratch_blessed_and_pushed(spans):
    config = spans["config"]
    span_1 = spans["decisions"][1]
    assert span_1["blessed"] and span_1["pushed_to"]
    assert Path(span_1["pushed_to"]).parent == Path(config.serving_path)
    store = _store(config)
    for trainer in TRAINERS:
        assert _artifacts(store, _executions(store, config, trainer)[0], "base_model") == []
    assert _artifacts(store, _executions(store, config, "Transform")[0], "analyzer_cache") == []


def test_span_2_warm_started_from_span_1_and_was_compared_with_it(spans):
    config = spans["config"]
    store = _store(config)
    first_study, second_study = (_artifacts(store, execution, "model", metadata_store_pb2.Event.OUTPUT)[0]
                                 for execution in _executions(store, config, "context_trainer")[:2])
    second_ensemble = _artifacts(store, _executions(store, config, "Ensemble")[1], "model",
                                 metadata_store_pb2.Event.OUTPUT)[0]
    for trainer in TRAINERS:
        second_run = _executions(store, config, trainer)[1]
        assert [a.id for a in _artifacts(store, second_run, "base_model")] == [first_study.id], trainer
        # Trained on the window of spans 1 and 2, span 1's Examples reused as they were ingested.
        assert sorted(artifact_span(a) for a in _artifacts(store, second_run, "examples")) == [1, 2]
    first_examples = _artifacts(store, _executions(store, config, "DicomExampleGen")[0], "examples",
                                metadata_store_pb2.Event.OUTPUT)[0]
    assert first_examples.id in {a.id for a in _artifacts(store, _executions(store, config, "trainer_a")[1],
                                                           "examples")}
    evaluator = _executions(store, config, "StudyEvaluator")[1]
    assert [a.id for a in _artifacts(store, evaluator, "baseline_model")] == [first_study.id]
    assert [a.id for a in _artifacts(store, evaluator, "model")] == [second_study.id]
    assert [artifact_span(a) for a in _artifacts(store, evaluator, "examples")] == [2]  # the new eval data only
    assert [a.id for a in _artifacts(store, _executions(store, config, "context_trainer")[1], "base_model")] == [
        second_ensemble.id]
    transform = _executions(store, config, "Transform")  # span 2's last, span 1's (run again after the kill) before
    assert [a.id for a in _artifacts(store, transform[-1], "analyzer_cache")] == [
        a.id for a in _artifacts(store, transform[-2], "updated_analyzer_cache", metadata_store_pb2.Event.OUTPUT)]
    for model_name in (CANDIDATE, BASELINE):
        assert tfma.load_eval_result(spans["decisions"][2]["study_evaluation"], model_name=model_name).slicing_metrics
    # Each member loaded its namesake's weights and trained the shorter schedule.
    logs = "".join(path.read_text() for path in Path(config.pipeline_root, "logs").glob("run-*.log"))
    for name in "abc":
        assert f"member {name}: warm start from {first_study.uri}/Format-Serving, 5 steps" in logs, name


def test_span_2_with_shuffled_labels_was_not_blessed_and_the_serving_folder_is_unchanged(spans):
    span_2 = spans["decisions"][2]
    assert not span_2["blessed"] and span_2["pushed_to"] is None
    assert "any" in span_2["reason"]
    assert span_2["metrics"]["context"]["any"] < ANY_AUC_FLOOR
    assert spans["serving_after_span_2"] == spans["serving_before_span_2"]
    assert sum("span 2: run failed" in line for line in spans["console"].lines) >= 2  # retried, not skipped


def test_the_pushed_study_model_scores_raw_examples_by_study_as_the_summary_says(spans):
    config, span_1 = spans["config"], spans["decisions"][1]
    store = _store(config)
    examples = _artifacts(store, _executions(store, config, "DicomExampleGen")[0], "examples",
                          metadata_store_pb2.Event.OUTPUT)[0]
    eval_files = tf.io.gfile.glob(os.path.join(examples.uri, "Split-eval", "*.gz"))
    by_study: dict[bytes, list] = {}
    for record in tf.data.TFRecordDataset(eval_files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        by_study.setdefault(example.features.feature["study_uid"].bytes_list.value[0], []).append(example)
    serve = tf.saved_model.load(span_1["pushed_to"]).signatures[SERVING_SIGNATURE]
    labels, refined, slice_only, study_labels, heads = [], [], [], [], []
    for study in by_study.values():
        outputs = serve(examples=tf.constant([e.SerializeToString() for e in study]))
        study_label = np.array([e.features.feature["label"].int64_list.value for e in study])
        labels.append(study_label)
        refined.append(outputs[REFINED_PROBABILITIES].numpy())
        slice_only.append(outputs[PROBABILITIES].numpy())
        study_labels.append(study_label.max(axis=0))
        heads.append(outputs[STUDY_PROBABILITIES].numpy())
    labels, refined, slice_only = np.concatenate(labels), np.concatenate(refined), np.concatenate(slice_only)
    assert refined.shape == slice_only.shape == (len(labels), len(LABELS))
    assert np.all((refined > 0) & (refined < 1))

    # The summary's figures are TFMA's, and TFMA's are sklearn's on the same slices and studies.
    per_study = np.array(study_labels), np.array(heads)
    for name, (truth, scores) in (("ensemble", (labels, slice_only)), ("context", (labels, refined))):
        figures = span_1["metrics"][name]
        assert figures["weighted_log_loss"] == pytest.approx(weighted_log_loss(truth, scores), rel=1e-4), name
        for index, label in enumerate(LABELS):
            if 0 < truth[:, index].sum() < len(truth):
                assert figures[label] == pytest.approx(roc_auc_score(truth[:, index], scores[:, index]),
                                                       abs=0.02), (name, label)  # a 10,000-bucket approximation
    for index, label in enumerate(LABELS):
        if 0 < per_study[0][:, index].sum() < len(per_study[0]):
            assert span_1["study"]["study head"][label] == pytest.approx(
                roc_auc_score(per_study[0][:, index], per_study[1][:, index]), abs=0.02), label


def test_every_component_ran_and_tfma_holds_every_subtype_of_every_model_on_every_slice(spans):
    config, span_1 = spans["config"], spans["decisions"][1]
    store = _store(config)
    for node in NODES:
        assert _executions(store, config, node) or node in RESOLVERS, node
    result = tfma.load_eval_result(span_1["evaluation"])
    sliced = {slice_key: metrics for slice_key, metrics in result.slicing_metrics}
    assert () in sliced
    for feature in SLICE_FEATURES:
        assert any(key and key[0][0] == feature for key in sliced), feature
    for output in MODEL_OUTPUTS:
        assert {f"classId:{i}" for i in range(len(LABELS))} <= set(sliced[()][output]), output
    assert set(spans["after_span_1"]["metrics"]) == {"ensemble", "member_a", "member_b", "member_c", "context"}
    assert set(spans["after_span_1"]["study"]) == {"study head", "slice maximum"}
    assert spans["after_span_1"]["blessed"] and spans["after_span_1"]["config"]["span"] == 1
    assert set(NODES) - RESOLVERS <= set(spans["after_span_1"]["component_seconds"])


class PageReader(HTMLParser):
    """Sections of a report page by id: their table rows (cell texts), pictures and text."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current = None
        self.row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = self.sections.setdefault(attrs["id"], {"rows": [], "images": [], "text": ""})
        elif self.current is not None and tag == "img":
            self.current["images"].append(attrs["src"])
        elif self.current is not None and tag == "tr":
            self.row = []
        elif self.row is not None and tag in ("td", "th"):
            self.row.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self.row is not None:
            self.current["rows"].append(self.row)
            self.row = None
        elif tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current["text"] += data
        if self.row:
            self.row[-1] += data.strip()


@pytest.fixture(scope="module")
def report(spans, tmp_path_factory) -> Path:
    """`ich report` on the pipeline root, as a user runs it after the watcher's two spans."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("report")
    assert main(["report", spans["config"].pipeline_root, "--out", str(out)]) == 0
    return out


def test_ich_report_on_the_pipeline_root_has_every_section_with_the_run_s_figures(spans, report):
    from PIL import Image

    config, span_2 = spans["config"], spans["decisions"][2]
    out = report
    page = PageReader()
    page.feed((out / "index.html").read_text())
    assert list(page.sections) == ["decision", "models", "studies", "operating", "curves", "calibration",
                                   "confusion", "slices", "ood", "training", "ingestion", "drift"]
    assert "http" not in (out / "index.html").read_text()  # nothing loaded from the network
    for section in ("models", "studies", "operating", "curves", "calibration", "training"):
        assert page.sections[section]["images"], section
    for section in page.sections.values():
        for src in section["images"]:
            with Image.open(out / src) as picture:
                assert picture.format == "PNG" and picture.width >= 800, src
                assert len(set(picture.convert("L").getdata())) > 10, f"{src} is blank"

    # The latest run is span 2's: not blessed, compared with span 1's study model; its members warm-started.
    decision = page.sections["decision"]
    assert "not blessed" in decision["text"] and span_2["baseline"] in decision["text"]
    assert [row[0] for row in decision["rows"][1:]] == [f"AUC {label}" for label in LABELS] + ["weighted log loss"]
    training = page.sections["training"]["rows"][1:]
    assert [row[0] for row in training] == ["member a", "member b", "member c"]
    assert all(row[1].startswith("warm start from") for row in training)
    assert all(float(row[3]) > 0 and 0 <= float(row[4]) <= 1 for row in training)  # the kept checkpoint's figures

    # Counts against span 2's own eval Examples, read here from the ExampleGen's output.
    store = _store(config)
    examples = _artifacts(store, _executions(store, config, "DicomExampleGen")[-1], "examples",
                          metadata_store_pb2.Event.OUTPUT)[0]
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(examples.uri, "Split-eval", "*.gz")),
                                      compression_type="GZIP")
    labels = np.array([tf.train.Example.FromString(r.numpy()).features.feature["label"].int64_list.value
                       for r in records])
    confusion = {row[0]: row for row in page.sections["confusion"]["rows"][1:]}
    for index, label in enumerate(LABELS):
        true_pos, false_neg, false_pos, true_neg = (int(v) for v in confusion[label][1:5])
        assert true_pos + false_neg == labels[:, index].sum(), label
        assert true_pos + false_neg + false_pos + true_neg == len(labels), label
    # The operating points' counts: per slice, of the eval split's positive slices of each label.
    operating = {row[0]: row for row in page.sections["operating"]["rows"][1:]}
    for index, label in enumerate(LABELS):
        found, positives = (int(v) for v in operating[label][2].split(" of "))
        assert positives == labels[:, index].sum() and found <= positives, label
    slices = {row[0]: row for row in page.sections["slices"]["rows"][1:]}
    assert int(slices["overall"][1]) == len(labels)
    for feature in SLICE_FEATURES:
        assert any(name.startswith(f"{feature} = ") for name in slices), feature
    assert "span = 2" in slices
    flagged = {row[0]: float(row[1].rstrip("%")) for row in page.sections["ood"]["rows"][1:]}
    assert page.sections["ood"]["images"] and 0 <= flagged["overall"] <= 100 and "span = 2" in flagged
    ingestion = {row[0]: row[1] for row in page.sections["ingestion"]["rows"][1:] if len(row) == 2}
    span_2_files = [p for p in (Path(config.input_base) / span_folder(2) / IMAGES_DIR).iterdir()]
    assert ingestion["span"] == "2" and int(ingestion["files found"]) == len(span_2_files)
    assert int(ingestion["slices ingested"]) == len(span_2_files)


def _holds(data: bytes, value: str) -> bool:
    """`value` in `data`; a value of digits only where no digit or point touches it (a float's digits are not a
    birth date)."""
    if value.isdigit():
        return re.search(rb"(?<![0-9.])" + value.encode() + rb"(?![0-9])", data) is not None
    return value.encode() in data


def test_no_identifier_or_salt_is_in_anything_a_run_leaves(spans, report, tmp_path):
    """Everything under the pipeline root (artifacts, statistics, schema, the metadata store, logs, last_run.json,
    decisions), the report with its pictures, and `ich predict --explain`'s outputs on the slices themselves."""
    from pipeline.cli import main

    config, identifiers = spans["config"], spans["identifiers"]
    images = sorted((Path(config.input_base) / span_folder(1) / IMAGES_DIR).iterdir())[:2]
    assert pydicom.dcmread(images[0]).PatientName == IDENTIFYING_TAGS["PatientName"]  # what the test relies on
    predicted = tmp_path / "predicted"
    assert main(["predict", *map(str, images), "--model", config.serving_path, "--format", "wide",
                 "--out", str(predicted / "slices.csv"), "--explain", str(predicted / "explained"),
                 "--explain-threshold", "1e-9"]) == 0
    assert len(list((predicted / "explained").glob("*.png"))) == 2 * 5  # every subtype of both slices
    salt_file = Path(config.id_salt_path)
    salt = salt_file.read_text().strip()
    searched = 0
    # The predictions name each slice's study, as the files do: the user joins them back by it.
    for folder, values in ((Path(config.pipeline_root), identifiers["tags"] | identifiers["patient_ids"]
                            | identifiers["uids"] | {salt}),
                           (report, identifiers["tags"] | identifiers["patient_ids"] | identifiers["uids"] | {salt}),
                           (predicted, identifiers["tags"] | identifiers["patient_ids"] | {salt})):
        for path in folder.rglob("*"):
            if not path.is_file() or path == salt_file:
                continue
            data = path.read_bytes()
            if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            searched += 1
            leaked = sorted(value for value in values if _holds(data, value))
            assert not leaked, (path, leaked)
    assert searched > 150  # 183 files in one run
