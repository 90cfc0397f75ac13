"""The watcher's parts on real files: when a span folder counts as complete, the decisions file (torn lines
included), the pipeline root's lock between two processes and between `ich run` and `ich watch`, `ich run`'s exit
status when a component fails, a span that breaks the schema, a span that keeps failing, which Examples the span
window resolves to, and which runs' outputs the baseline and analyzer-cache resolvers may take."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.types import standard_artifacts

from components.data_gate.component import PASSED_EXAMPLES, SpanProfile
from components.data_gate.executor import DRIFT_FILE
from components.dicom_example_gen.span_folders import span_folder
from ich_model.dicom import READY_MARKER
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset
from pipeline.data_checks import IDENTIFIERS
from pipeline.retraining import (
    PASSED,
    WINDOW,
    FinishedRunLatestArtifactStrategy,
    SpanWindowStrategy,
    finished_runs,
    from_finished_runs,
)
from pipeline.watch import (
    ATTEMPTS,
    DECISIONS,
    TORN_DECISIONS,
    read_decisions,
    record_decision,
    recorded_spans,
    span_folders,
    span_status,
)
from pipeline.writer_lock import PipelineRootLocked, pipeline_root_lock
from tests.pipeline_helpers import BEAM_ARGS, read_split


@pytest.fixture(scope="module")
def span_source(tmp_path_factory):
    """A small RSNA-format set to copy into span folders."""
    root = tmp_path_factory.mktemp("span-source")
    generate_dataset(root, patients=3, slices_per_study=2, seed=21, size=64, progress=False)
    return root


def copy_span(source, folder, skip: int = 0, with_csv: bool = True):
    """Copy the set's images into `folder` (all but the last `skip`), then its CSV, as a transfer would."""
    images = sorted((source / IMAGES_DIR).iterdir())
    (folder / IMAGES_DIR).mkdir(parents=True)
    for image in images[:len(images) - skip]:
        (folder / IMAGES_DIR / image.name).write_bytes(image.read_bytes())
    if with_csv:
        (folder / LABELS_CSV).write_text((source / LABELS_CSV).read_text())
    return images


def test_a_span_is_complete_once_its_csv_and_every_listed_image_are_there(span_source, tmp_path):
    folder = tmp_path / span_folder(1)
    images = copy_span(span_source, folder, skip=2)
    assert span_status(folder) == f"2 of the {len(images)} images that its CSV lists are not there yet"
    for image in images[-2:]:  # the rest of the transfer, without the .dcm suffix (the reader does not need it)
        (folder / IMAGES_DIR / image.stem).write_bytes(image.read_bytes())
    assert span_status(folder) is None


def test_a_span_without_a_csv_waits_unless_it_is_marked_ready(span_source, tmp_path):
    unmarked, unreadable = tmp_path / span_folder(2), tmp_path / span_folder(3)
    copy_span(span_source, unmarked, with_csv=False)
    assert "no label CSV yet" in span_status(unmarked)
    (unmarked / READY_MARKER).touch()
    assert span_status(unmarked) is None
    # A CSV that is not an RSNA label file lists nothing to wait for: the run reports it.
    unreadable.mkdir()
    (unreadable / "labels.csv").write_text("Image,Value\nID_1_any,1\n")
    assert span_status(unreadable) is None


def test_span_folders_are_numbered_and_other_entries_ignored(tmp_path):
    for name in ("span-1", "span-10", "span-2", "span-x", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "span-3").write_text("a file, not a folder")
    assert {span: path.name for span, path in span_folders(tmp_path).items()} == {
        1: "span-1", 2: "span-2", 10: "span-10"}
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        span_folders(tmp_path / "missing")


def test_decisions_are_json_lines_read_back_by_span(tmp_path):
    assert recorded_spans(tmp_path) == set()
    record_decision(tmp_path, {"span": 1, "blessed": True, "reason": "ok", "metrics": {}, "pushed_to": "/x"})
    record_decision(tmp_path, {"span": 3, "blessed": False, "reason": "auc", "metrics": {}, "pushed_to": None})
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["blessed"] for line in lines] == [True, False]
    assert recorded_spans(tmp_path) == {1, 3}


def test_a_torn_last_line_is_no_decision_and_the_watcher_sets_it_aside(tmp_path, capsys):
    from pipeline.cli import main

    root = tmp_path / "root"
    record_decision(root.mkdir() or root, {"span": 1, "blessed": True, "reason": "ok", "metrics": {}})
    record_decision(root, {"span": 2, "blessed": False, "reason": "auc", "metrics": {}})
    whole = (root / DECISIONS).read_text()
    # A hand-edited line in the middle, and span 3's line cut short by a crash (no newline).
    (root / DECISIONS).write_text(whole + "not json\n" + '{"span": 3, "blessed": tr')
    decisions, torn = read_decisions(root)
    assert [d["span"] for d in decisions] == [1, 2] and torn == ["not json", '{"span": 3, "blessed": tr']
    assert recorded_spans(root) == {1, 2}

    (tmp_path / "spans").mkdir()
    assert main(["watch", "--input-base", str(tmp_path / "spans"), "--pipeline-root", str(root), "--once"]) == 0
    assert "2 line(s)" in capsys.readouterr().out
    assert (root / DECISIONS).read_text() == whole  # the whole decisions, byte for byte
    assert (root / TORN_DECISIONS).read_text() == 'not json\n{"span": 3, "blessed": tr\n'
    record_decision(root, {"span": 3, "blessed": True, "reason": "ok", "metrics": {}})
    assert recorded_spans(root) == {1, 2, 3} and read_decisions(root)[1] == []


def test_a_second_writer_process_cannot_take_the_lock_until_the_first_is_gone(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pipeline.writer_lock import pipeline_root_lock
            with pipeline_root_lock({str(tmp_path)!r}, "ich watch"):
                print("locked", flush=True)
                sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineRootLocked, match=rf"ich watch \(pid {holder.pid}\) is writing to"), \
                pipeline_root_lock(tmp_path, "ich run"):
            pass
    finally:
        holder.communicate("\n", timeout=60)
    with pipeline_root_lock(tmp_path, "ich run"):  # released when the holder exits
        pass


def examples(artifact_id: int, span: int, live: bool = True):
    artifact = standard_artifacts.Examples()
    artifact.id = artifact_id
    artifact.uri = f"/root/DicomExampleGen/examples/{artifact_id}"
    artifact.set_int_custom_property("span", span)
    artifact.mlmd_artifact.state = metadata_store_pb2.Artifact.LIVE if live else metadata_store_pb2.Artifact.ABANDONED
    return artifact


def passed(*ingested):
    """The DataGate's profiles of Examples that passed it."""
    profiles = []
    for artifact in ingested:
        profile = SpanProfile()
        profile.set_string_custom_property(PASSED_EXAMPLES, artifact.uri)
        profiles.append(profile)
    return profiles


def test_the_span_window_takes_the_newest_ingestion_that_passed_of_each_span_in_range():
    ingested = [examples(1, 1), examples(2, 2), examples(3, 3), examples(4, 2), examples(5, 4, live=False),
                examples(6, 5), examples(7, 6), examples(8, 7)]

    def window(profiles, **kwargs):
        resolved = SpanWindowStrategy(**kwargs).resolve_artifacts(None, {WINDOW: ingested, PASSED: profiles})
        assert resolved[PASSED] == profiles  # TFX takes a resolver's outputs by its inputs' keys
        return [artifact.id for artifact in resolved[WINDOW]]

    every_one = passed(*ingested)
    assert window(every_one) == [1, 4, 3, 6, 7, 8]  # every span; span 2's newer ingestion; span 4's failed one out
    assert window(every_one, num_spans=2) == [7, 8]
    assert window(every_one, num_spans=2, end_span=3) == [4, 3]
    assert window(every_one, num_spans=1, end_span=1) == [1]
    # Span 6 was refused by the DataGate, and span 2's newer ingestion too: neither trains in a later run. The
    # run's own span (the last) always comes: its DataGate runs before anything trains.
    refused = passed(*(artifact for artifact in ingested if artifact.id not in (4, 7, 8)))
    assert window(refused) == [1, 2, 3, 6, 8]
    assert window(refused, num_spans=3) == [6, 8]
    assert window(refused, num_spans=2, end_span=6) == [6, 7]
    assert window([]) == [8]  # a first run, or a root whose earlier spans were all refused


def test_a_profile_written_before_it_named_its_examples_names_them_in_its_drift_report(tmp_path):
    ingested = [examples(1, 1), examples(2, 2)]
    profile = SpanProfile()
    profile.uri = str(tmp_path)
    (tmp_path / DRIFT_FILE).write_text(json.dumps({"span": 1, "examples": ingested[0].uri}))
    resolved = SpanWindowStrategy().resolve_artifacts(None, {WINDOW: ingested, PASSED: [profile]})
    assert [artifact.id for artifact in resolved[WINDOW]] == [1, 2]
    (tmp_path / DRIFT_FILE).unlink()
    resolved = SpanWindowStrategy().resolve_artifacts(None, {WINDOW: ingested, PASSED: [profile]})
    assert [artifact.id for artifact in resolved[WINDOW]] == [2]
    assert SpanWindowStrategy().resolve_artifacts(None, {WINDOW: []}) is None
    with pytest.raises(ValueError, match="span_window"):
        SpanWindowStrategy(num_spans=-1)


def test_ich_watch_once_reports_what_it_found_and_refuses_a_locked_root(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "spans" / span_folder(1)).mkdir(parents=True)  # no CSV yet: waits, runs nothing
    args = ["watch", "--input-base", str(tmp_path / "spans"), "--pipeline-root", str(tmp_path / "root"), "--once"]
    assert main(args) == 0
    assert "span 1: waiting, no label CSV yet" in capsys.readouterr().out
    assert recorded_spans(tmp_path / "root") == set()

    (tmp_path / "spans" / span_folder(1)).rmdir()
    assert main(args) == 0
    assert "no pending span under" in capsys.readouterr().out

    with pipeline_root_lock(tmp_path / "root", "ich run"), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "ich run (pid" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["watch", "--input-base", str(tmp_path / "nowhere"), "--pipeline-root", str(tmp_path / "other"), "--once"])
    assert exit_info.value.code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_ich_run_refuses_a_root_that_a_watcher_holds_and_exits_3_when_a_component_fails(span_source, tmp_path,
                                                                                      capsys):
    from pipeline.cli import main

    data = tmp_path / "data"
    copy_span(span_source, data)
    (data / LABELS_CSV).write_text("Image,Value\nID_1_any,1\n")  # no RSNA label file: the ExampleGen refuses it
    args = ["run", "--data", str(data), "--pipeline-root", str(tmp_path / "root"),
            *(f"--beam-arg={arg}" for arg in BEAM_ARGS)]
    with pipeline_root_lock(tmp_path / "root", "ich watch"), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "ich watch (pid" in capsys.readouterr().err
    assert not (tmp_path / "root" / "logs").exists()  # refused before any work

    assert main(args) == 3
    error = capsys.readouterr().err
    assert "the run failed: DicomExampleGen failed" in error and "the full log is" in error


def store_as_a_new_scanner(folder, intercept: int = -2048) -> int:
    """Rewrite every image of `folder` as a scanner would that stores signed 16-bit values with another
    intercept: the same Hounsfield units (as pydicom's modality LUT gives them), another intercept group."""
    import numpy as np
    import pydicom

    from ich_model.dicom import read_slice

    count = 0
    for path in sorted((folder / IMAGES_DIR).iterdir()):
        ct = read_slice(path)  # after the RSNA wrapped-pixel repair
        hu = ct.pixels.astype(np.float64) * ct.rescale_slope + ct.rescale_intercept
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = np.round(hu - intercept).astype("<i2").tobytes()
        ds.save_as(path)
        assert np.array_equal(pydicom.pixels.apply_modality_lut(pydicom.dcmread(path).pixel_array, ds), hu)
        count += 1
    return count


def test_a_span_that_breaks_the_schema_trains_nothing_and_is_recorded_with_its_anomalies(span_source, tmp_path,
                                                                                          capsys):
    from pipeline.cli import DATA_REFUSED, main

    spans, root = tmp_path / "spans", tmp_path / "root"
    copy_span(span_source, spans / span_folder(1))
    assert store_as_a_new_scanner(spans / span_folder(1)) > 0
    beam = [f"--beam-arg={arg}" for arg in BEAM_ARGS]
    common = ["--pipeline-root", str(root), *beam]

    assert main(["run", "--data", str(spans), *common]) == DATA_REFUSED
    error = capsys.readouterr().err
    assert "the span was refused: the span's Examples break the schema" in error
    assert "intercept_group" in error and "-2048" in error and "nothing was trained" in error
    # Stopped at the gate: no component after it ran, nothing was published.
    assert (root / "DataGate").is_dir() and not (root / "Transform").exists()
    assert not (root / "serving").exists()
    # No identifier of any Example reaches the statistics or the schema that the validator used.
    [examples_dir] = (root / "DicomExampleGen" / "examples").iterdir()
    identifiers = {example.features.feature[name].bytes_list.value[0] for split in ("train", "eval")
                   for example in read_split(examples_dir, split) for name in IDENTIFIERS}
    checked = [*(root / "StatisticsGen").rglob("FeatureStats.pb"), *(root / "ImportSchemaGen").rglob("schema.pbtxt")]
    assert len(identifiers) > 6 and len(checked) == 3
    assert not [(path.name, value) for path in checked for value in identifiers if value in path.read_bytes()]

    assert main(["watch", "--input-base", str(spans), *common, "--once"]) == 0
    out = capsys.readouterr().out
    assert "span 1: not blessed, not pushed (data refused: the span's Examples break the schema" in out
    [decision] = read_decisions(root)[0]
    assert decision["span"] == 1 and decision["blessed"] is False and decision["pushed_to"] is None
    assert decision["reason"].startswith("data refused: ")
    assert set(decision["anomalies"]) == {"train", "eval"}
    assert all("-2048" in split["intercept_group"] for split in decision["anomalies"].values())
    assert not (root / "Transform").exists() and not (root / "serving").exists()
    # Decided: the next poll runs nothing.
    assert main(["watch", "--input-base", str(spans), *common, "--once"]) == 0
    assert "no pending span under" in capsys.readouterr().out


def test_a_span_that_keeps_failing_is_retried_later_then_recorded_as_failed_and_later_spans_go_on(
        span_source, tmp_path, capsys):
    from pipeline.cli import RUN_FAILED, main

    spans, root = tmp_path / "spans", tmp_path / "root"
    copy_span(span_source, spans / span_folder(1))
    (spans / span_folder(1) / LABELS_CSV).write_text("Image,Value\nID_1_any,1\n")  # the ExampleGen refuses it
    copy_span(span_source, spans / span_folder(2))
    store_as_a_new_scanner(spans / span_folder(2))  # the DataGate refuses it
    watch = ["watch", "--input-base", str(spans), "--pipeline-root", str(root), "--once", "--max-attempts", "2",
             *(f"--beam-arg={arg}" for arg in BEAM_ARGS)]

    assert main([*watch, "--retry-after", "3600"]) == RUN_FAILED
    assert "span 1: run failed (RunFailed: DicomExampleGen failed" in capsys.readouterr().out
    attempts = json.loads((root / ATTEMPTS).read_text())
    assert list(attempts) == ["1"] and attempts["1"]["attempts"] == 1
    assert attempts["1"]["next_try_at"] > time.time() + 3500
    logs = sorted((root / "logs").iterdir())
    # Within the hour the span waits, and span 2 waits behind it: nothing runs.
    assert main([*watch, "--retry-after", "3600"]) == 0
    assert "span 1: waiting, attempt 1 of 2 failed (RunFailed: DicomExampleGen failed" in capsys.readouterr().out
    assert sorted((root / "logs").iterdir()) == logs and recorded_spans(root) == set()

    attempts["1"]["next_try_at"] = time.time() - 1  # the hour has passed
    (root / ATTEMPTS).write_text(json.dumps(attempts))
    assert main(watch) == RUN_FAILED
    out = capsys.readouterr().out
    assert "span 1: recorded as failed, not pushed (run failed 2 times, last: RunFailed: DicomExampleGen" in out
    decisions = {decision["span"]: decision for decision in read_decisions(root)[0]}
    assert decisions[1]["failed"] is True and decisions[1]["blessed"] is False and decisions[1]["pushed_to"] is None
    assert decisions[2]["reason"].startswith("data refused: ") and "failed" not in decisions[2]
    assert json.loads((root / ATTEMPTS).read_text()) == {}


def test_an_unwritable_pipeline_root_is_refused_and_a_full_disk_ends_the_run_with_its_error(span_source, tmp_path,
                                                                                             capsys):
    from pipeline.cli import REFUSED, RUN_FAILED, main

    data = tmp_path / "data"
    copy_span(span_source, data)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--data", str(data), "--pipeline-root", str(tmp_path / "a-file" / "root")])
    assert exit_info.value.code == REFUSED
    assert "cannot write to the pipeline root" in capsys.readouterr().err

    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mount failed here: {mounted.stderr.strip()}")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "--data", str(data), "--pipeline-root", str(full / "root"),
             *(f"--beam-arg={arg}" for arg in BEAM_ARGS)], capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert done.returncode == RUN_FAILED, done.stderr
    error = done.stderr.lower()
    assert "ich run: the run failed:" in done.stderr and ("disk is full" in error or "no space left" in error)
    assert "Traceback" not in done.stderr, done.stderr


def test_resolvers_take_history_only_from_runs_whose_pusher_finished(tmp_path):
    """A real metadata store: run 1 made an analyzer cache and a blessed model, then was killed in its Pusher;
    run 2 took both from the cache and finished; run 3 made new ones and stopped before its Pusher. Only what
    run 2 output counts, and a store where no run finished gives nothing."""
    from ml_metadata import metadata_store

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(connection)
    types = {name: store.put_context_type(metadata_store_pb2.ContextType(name=name))
             for name in ("node", "pipeline_run")}
    execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="component"))
    artifact_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="TransformCache"))
    contexts = {}

    def context(kind: str, name: str) -> metadata_store_pb2.Context:
        if name not in contexts:
            [contexts[name]] = store.get_contexts_by_id(store.put_contexts(
                [metadata_store_pb2.Context(type_id=types[kind], name=name)]))
        return contexts[name]

    def execute(run: str, node: str, state, outputs=(), new: int = 0) -> list[int]:
        made = [metadata_store_pb2.Artifact(type_id=artifact_type, uri=f"/{run}/{node}/{k}") for k in range(new)]
        made_ids = store.put_artifacts(made) if made else []
        execution = metadata_store_pb2.Execution(type_id=execution_type, last_known_state=state)
        events = [(artifact, metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT))
                  for artifact in store.get_artifacts_by_id([*outputs, *made_ids])]
        store.put_execution(execution, events, [context("node", f"ich.{node}"), context("pipeline_run", run)])
        return list(made_ids)

    running, complete, cached = (metadata_store_pb2.Execution.RUNNING, metadata_store_pb2.Execution.COMPLETE,
                                 metadata_store_pb2.Execution.CACHED)
    [first] = execute("run-1", "Transform", complete, new=1)
    assert finished_runs(store, "ich") == set()
    execute("run-1", "Pusher", running)
    execute("run-2", "Transform", cached, outputs=[first])
    assert finished_runs(store, "ich") == set()
    execute("run-2", "Pusher", complete)
    [third] = execute("run-3", "Transform", complete, new=1)
    assert finished_runs(store, "ich") == {contexts["run-2"].id}

    caches = []
    for artifact_id in (first, third):
        cache = standard_artifacts.TransformCache()
        cache.id = artifact_id
        caches.append(cache)
    assert [a.id for a in from_finished_runs(store, "ich", caches)] == [first]
    resolved = FinishedRunLatestArtifactStrategy("ich").resolve_artifacts(store, {"cache": caches})
    assert [a.id for a in resolved["cache"]] == [first]  # not the newer cache of the run that did not finish
    assert FinishedRunLatestArtifactStrategy("other").resolve_artifacts(store, {"cache": caches}) is None
