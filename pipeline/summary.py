"""What a run measured and decided, read back from the metadata store and TFMA's stored results.

`run_summary` finds the latest Evaluator and, of its run, the StudyEvaluator and Pusher executions in MLMD, loads
their artifacts and returns the `last_run.json` document: per model (`ensemble`, `member_a`, ..., and `context`,
the study model's refined output) the per-slice figures of pipeline.figures (each label's AUC, the macro AUC over
the defined ones, the undefined labels, the weighted log loss); `study`, the per-study figures of the study head
and of the slice ensemble's maximum; `operating_points`, what the study model's thresholds give per slice and per
study (pipeline.figures.operating_point_figures); `blessed` and `reason` (the StudyEvaluator's), `pushed_to`, and
`drift` (the DataGate's comparison of the span with the training window).
`format_summary` renders it as the closing tables.
`latest_evaluation` gives the same with TFMA's loaded result and the run, for `ich report`; `latest_execution`,
`execution_artifacts` and `output_artifact` find what another node of a run read and wrote (the report, the
benchmarks).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.utils import path_utils

from components.data_gate.executor import DRIFT_FILE, name_spans
from components.dicom_example_gen import DicomExampleGen
from ich_model.constants import ABBREVIATIONS, ANY, LABELS
from ich_model.description import read_description
from ich_model.metrics import WEIGHTED_LOG_LOSS
from ich_model.operating_points import LEVELS
from pipeline.figures import (
    MACRO_AUC,
    TRIAGE,
    class_key,
    defined_auc,
    evaluation_figures,
    operating_point_figures,
    share_with_interval,
    study_figures,
    undefined_note,
)

EVALUATOR = "Evaluator"
STUDY_EVALUATOR = "StudyEvaluator"
TRIAGE_HEADERS = ("any sens@90%spec", "any sens@95%spec", "any spec@95%sens")  # in TRIAGE's order
EXAMPLE_GEN = DicomExampleGen.__name__  # a component's node id is its class name unless set
PUSHER = "Pusher"
DATA_GATE = "DataGate"
CANDIDATE = "candidate"  # TFMA's name for the evaluated model beside a baseline (alone, it stores no name)

INPUT_EVENTS = (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT)
OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)  # an execution that finished


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """The pipeline's SQLite metadata store, read-only."""
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"{metadata_path}: no metadata store (has the pipeline run here?)")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_execution(store: metadata_store.MetadataStore, pipeline_name: str, node_id: str,
                     run: int | None = None) -> metadata_store_pb2.Execution:
    """The newest completed (or cached) execution of `node_id`; with `run` (a pipeline run's context id, see
    run_context_id), the one of that run."""
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if context is None:
        raise LookupError(f"the metadata store has no {node_id} node for pipeline {pipeline_name!r}")
    executions = store.get_executions_by_context(context.id)
    if run is not None:
        in_run = {e.id for e in store.get_executions_by_context(run)}
        executions = [e for e in executions if e.id in in_run]
    finished = [e for e in executions if e.last_known_state in DONE]
    if not finished:
        raise LookupError(f"{node_id} has not completed in pipeline {pipeline_name!r}"
                          + ("" if run is None else " in this run"))
    return max(finished, key=lambda e: (e.create_time_since_epoch, e.id))


def run_context_id(store: metadata_store.MetadataStore, execution: metadata_store_pb2.Execution) -> int:
    """The id of the pipeline run that `execution` belongs to."""
    runs = [c for c in store.get_contexts_by_execution(execution.id) if c.type == "pipeline_run"]
    if not runs:
        raise LookupError(f"execution {execution.id} belongs to no pipeline run")
    return runs[0].id


def execution_artifacts(store: metadata_store.MetadataStore,
                        execution: metadata_store_pb2.Execution) -> tuple[dict[str, list], dict[str, list]]:
    """The input and the output artifacts of `execution`, each by key."""
    events = store.get_events_by_execution_ids([execution.id])
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    inputs: dict[str, list] = {}
    outputs: dict[str, list] = {}
    for event in events:
        by_key = inputs if event.type in INPUT_EVENTS else outputs if event.type in OUTPUT_EVENTS else None
        if by_key is not None:
            by_key.setdefault(event.path.steps[0].key if event.path.steps else "", []).append(
                artifacts[event.artifact_id])
    return inputs, outputs


def output_artifact(store: metadata_store.MetadataStore, pipeline_name: str, node_id: str, key: str,
                    run: int | None = None) -> metadata_store_pb2.Artifact:
    """The (first) `key` artifact that `node_id` output in its latest execution, of pipeline run `run` if given."""
    return execution_artifacts(store, latest_execution(store, pipeline_name, node_id, run))[1][key][0]


def blessing_reason(evaluation_uri: str, had_baseline: bool, slicing_metrics: list | None = None) -> tuple[bool, str]:
    """Whether TFMA's validation passed, and why not: each failed gate with its value and threshold. With the
    evaluation's loaded `slicing_metrics`, an AUC gate on a label that its slice cannot define (no positive or no
    negative of it: figures.defined_auc) is named as undefined instead of with TFMA's 0.0. Such a gate fails like
    any other: a model that the eval data cannot judge on a subtype is not blessed."""
    validation = tfma.load_validation_result(evaluation_uri)
    if validation.validation_ok:
        return True, "every gate passed" + ("" if had_baseline else " (no blessed baseline yet)")
    by_slice = dict(slicing_metrics or [])
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        outputs = by_slice.get(tfma.slicer.slicer_lib.deserialize_slice_key(per_slice.slice_key), {})
        for failure in per_slice.failures:
            key = failure.metric_key
            label = f" {LABELS[key.sub_key.class_id.value]}" if key.sub_key.HasField("class_id") else ""
            change = " change vs baseline" if key.is_diff else ""
            value = f"= {failure.metric_value.double_value.value:.4f}"
            if key.name == "auc" and label:
                metrics = outputs.get(key.output_name, {}).get(class_key(key.sub_key.class_id.value))
                if metrics is not None and defined_auc(metrics) is None:
                    value = "is undefined (the eval split holds no positive or no negative of it)"
            failures.append(f"{key.name}{label}{change} {value} fails {_threshold_text(failure.metric_threshold)}")
    if not failures and validation.validation_details.slicing_details:
        failures.append("a gate could not be computed")
    return False, "; ".join(failures) or "validation failed"


def _threshold_text(threshold) -> str:
    if threshold.HasField("value_threshold"):
        bounds = threshold.value_threshold
        parts = []
        if bounds.HasField("lower_bound"):
            parts.append(f">= {bounds.lower_bound.value:g}")
        if bounds.HasField("upper_bound"):
            parts.append(f"<= {bounds.upper_bound.value:g}")
        return " and ".join(parts)
    change = threshold.change_threshold
    return f"change {change.absolute.value:+g} ({tfma.MetricDirection.Name(change.direction).lower()})"


def latest_evaluation(store: metadata_store.MetadataStore, pipeline_name: str
                      ) -> tuple[dict, tfma.EvalResult, tfma.EvalResult, int]:
    """The run of the newest Evaluator execution: its summary (the `run_summary` document), TFMA's loaded results
    of the ensemble (the Evaluator's) and of the study model (the StudyEvaluator's, `candidate`), and the run's
    context id."""
    evaluator = latest_execution(store, pipeline_name, EVALUATOR)
    run = run_context_id(store, evaluator)
    evaluation = execution_artifacts(store, evaluator)[1]["evaluation"][0]
    result = tfma.load_eval_result(evaluation.uri)
    study_inputs, study_outputs = execution_artifacts(store, latest_execution(store, pipeline_name, STUDY_EVALUATOR,
                                                                              run))
    study_evaluation = study_outputs["evaluation"][0]
    baseline = study_inputs.get("baseline_model", [])
    study_result = tfma.load_eval_result(study_evaluation.uri, model_name=CANDIDATE if baseline else None)
    blessed, reason = blessing_reason(study_evaluation.uri, had_baseline=bool(baseline),
                                      slicing_metrics=study_result.slicing_metrics)
    pushed = output_artifact(store, pipeline_name, PUSHER, "pushed_model", run)
    pushed_to = None
    if pushed.custom_properties["pushed"].int_value == 1:
        pushed_to = pushed.custom_properties["pushed_destination"].string_value
    study_model = path_utils.serving_model_path(study_inputs["model"][0].uri)
    summary = {"metrics": evaluation_figures(result.slicing_metrics, study_result.slicing_metrics),
               "study": study_figures(study_result.slicing_metrics),
               "operating_points": operating_point_figures(study_result.slicing_metrics, read_description(
                   study_model).get("operating_points")), "blessed": blessed, "reason": reason,
               "pushed_to": pushed_to, "evaluation": evaluation.uri, "study_evaluation": study_evaluation.uri,
               "baseline": baseline[0].uri if baseline else None, "drift": span_drift(store, pipeline_name, run)}
    return summary, result, study_result, run


def span_drift(store: metadata_store.MetadataStore, pipeline_name: str, run: int) -> dict | None:
    """The DataGate's drift report of the run (components/data_gate), or None for a root from before the gate
    measured drift."""
    try:
        profile = output_artifact(store, pipeline_name, DATA_GATE, "profile", run)
    except (LookupError, KeyError):
        return None
    with tf.io.gfile.GFile(os.path.join(profile.uri, DRIFT_FILE)) as f:
        return json.load(f)


def drift_line(drift: dict | None) -> str:
    """One line: what the span was compared with and every measure beyond its limit."""
    if not drift or not drift.get("baseline_spans"):
        return "drift: no earlier span passed the data gate; nothing to compare with"
    limits = drift["limits"]
    compared = (f"drift from {name_spans(drift['baseline_spans'])} (limits: L-infinity {limits['categorical']:g}, "
                f"Jensen-Shannon {limits['numeric']:g}, prevalence change {limits['prevalence']:g})")
    if not drift["over"]:
        largest = max(drift["features"].items(), key=lambda item: item[1]["value"] / max(item[1]["limit"], 1e-9),
                      default=None)
        return compared + ": none beyond" + (
            f"; nearest: {largest[0]} {largest[1]['measure']} {largest[1]['value']:.3f}" if largest else "")
    blocked = " (refused)" if limits["block"] else " (reported; drift_blocks_training is off)"
    return compared + blocked + ": " + "; ".join(drift["over"])


def run_summary(metadata_path: str, pipeline_name: str) -> dict:
    return latest_evaluation(open_store(metadata_path), pipeline_name)[0]


def artifact_span(artifact: metadata_store_pb2.Artifact) -> int:
    """The span an Examples artifact was ingested from (TFX stores it as an int or, in places, a string)."""
    span = artifact.custom_properties["span"]
    return int(span.int_value or span.string_value or 0)


def finished_span_summary(metadata_path: str, pipeline_name: str, span: int) -> dict | None:
    """The run_summary of the newest pipeline run if that run finished (its Pusher completed) on `span`, else
    None: what a watcher that stopped between a run's end and its decision line takes the decision from."""
    if not os.path.exists(metadata_path):
        return None
    store = open_store(metadata_path)
    try:
        run = run_context_id(store, latest_execution(store, pipeline_name, PUSHER))
        ingested = output_artifact(store, pipeline_name, EXAMPLE_GEN, "examples", run)
    except (LookupError, KeyError):
        return None
    if artifact_span(ingested) != span:
        return None
    summary, _, _, evaluated_run = latest_evaluation(store, pipeline_name)
    return summary if evaluated_run == run else None


def _row(name: str, values: list, widths: list[int]) -> str:
    cells = [name.ljust(widths[0])]
    for value, width in zip(values, widths[1:], strict=True):
        cells.append(("n/a" if value is None else f"{value:.4f}").rjust(width))
    return "  ".join(cells)


def _header_line(headers: list[str], widths: list[int]) -> str:
    return "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))


def operating_point_line(points: dict, level: str) -> str:
    """One level's operating point for `any` (the triage question) and what it gave on the eval split."""
    point = points[level][ANY]
    threshold = "none (no positive)" if point["threshold"] is None else f"{point['threshold']:.4g}"
    return (f"operating point per {level} for {ANY} (target sensitivity {points['target_sensitivity'][level]:g}, "
            f"chosen on the {points['chosen_on']}): threshold {threshold}, sensitivity "
            f"{share_with_interval(point['sensitivity'], point['sensitivity_interval'])}, specificity "
            f"{share_with_interval(point['specificity'], point['specificity_interval'])}")


def format_summary(summary: dict) -> str:
    """Fixed-width tables: per slice, one row per model, AUC per label, macro AUC and weighted log loss, and the
    labels whose AUC is undefined; per study, the study head and the slice maximum; then the decision."""
    columns = [*LABELS, MACRO_AUC, WEIGHTED_LOG_LOSS]
    headers = ["per slice", *(ABBREVIATIONS[label] for label in LABELS), "macro AUC", "wLogLoss"]
    widths = [max(13, len(h)) for h in headers]
    lines = [_header_line(headers, widths)]
    for model, figures in summary["metrics"].items():
        lines.append(_row(model, [figures.get(column) for column in columns], widths))
    note = undefined_note(summary["metrics"])
    if note:
        lines.append(note)
    if summary.get("study"):
        # Per study: the AUCs, and for `any` (the triage question: does this study bleed?) the operating points.
        studies = next(iter(summary["study"].values())).get("studies")
        study_headers = [f"per study ({studies:.0f})" if studies is not None else "per study",
                         *headers[1:-1], *TRIAGE_HEADERS]
        study_widths = [max(13, len(h)) for h in study_headers]
        lines += ["", _header_line(study_headers, study_widths)]
        for model, figures in summary["study"].items():
            lines.append(_row(model, [*(figures.get(column) for column in columns[:-1]),
                                      *(figures[name][ANY] for name in TRIAGE)], study_widths))
    points = summary.get("operating_points")
    if points:
        lines.append("")
        lines += [operating_point_line(points, level) for level in LEVELS]
    lines.append("")
    lines.append(drift_line(summary.get("drift")))
    lines.append(f"compared with: {summary.get('baseline') or 'no blessed model yet'}")
    lines.append(f"blessed: {'yes' if summary['blessed'] else 'no'} ({summary['reason']})")
    lines.append(f"pushed to: {summary['pushed_to'] or 'nothing pushed'}")
    return os.linesep.join(lines)
