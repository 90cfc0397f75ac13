"""The latest run as plain data for the report: what the metadata store, TFMA's results, the evaluated ensemble's
description, the Trainers' TensorBoard logs and the ExampleGen's ingestion report hold, read once into a
`RunRecord`; and TFMA's plots turned into arrays (ROC and precision-recall points, calibration bins)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
from tfx.utils import path_utils

from components.dicom_example_gen.executor import REPORT_FILE
from components.study_evaluator.executor import SLICE_LEVEL
from ich_model.constants import ANY, LABELS
from ich_model.description import DescriptionError, read_description
from ich_model.members import CHECKPOINT_METRIC, CHECKPOINT_METRIC_SE, MEMBERS, kept_evaluation
from ich_model.metrics import FLAGGED_SHARE
from ich_model.serving import OUT_OF_DISTRIBUTION
from pipeline.configs import metadata_path
from pipeline.figures import level_slice, metric_value
from pipeline.summary import (
    EVALUATOR,
    EXAMPLE_GEN,
    STUDY_EVALUATOR,
    execution_artifacts,
    latest_evaluation,
    latest_execution,
    open_store,
    output_artifact,
)
from pipeline.training import trainer_id

BASELINE = "baseline"  # TFMA's name for the baseline model in an evaluation with one
ANY_INDEX = LABELS.index(ANY)
CALIBRATION_BINS = 10
Series = dict[str, list[tuple[int, float]]]  # TensorBoard scalars: tag -> [(step, value)], in step order


@dataclass
class TrainerRecord:
    """One member's Trainer in the run: where it started from and its TensorBoard scalars."""

    warm_start: str | None  # the base model's uri, or None when trained from scratch
    train: Series
    validation: Series

    def kept(self) -> tuple[int, float | None, float | None]:
        """The number of evaluations, and the validation CHECKPOINT_METRIC and macro AUC of the one whose weights
        the Trainer kept (by kept_evaluation, the Trainer's own rule): None where it kept none."""
        losses = self.validation.get(f"epoch_{CHECKPOINT_METRIC}", [])
        errors = dict(self.validation.get(f"epoch_{CHECKPOINT_METRIC_SE}", []))
        aucs = dict(self.validation.get("epoch_macro_auc", []))
        kept = kept_evaluation([loss for _, loss in losses], [errors.get(step, np.nan) for step, _ in losses])
        if kept is None:
            return len(losses), None, None
        step, loss = losses[kept]
        return len(losses), loss, aucs.get(step)


@dataclass
class RunRecord:
    """What the latest run stored, gathered from the metadata store."""

    pipeline_name: str
    run_id: str
    summary: dict  # pipeline.summary.run_summary; its "metrics" are pipeline.figures.evaluation_figures
    metrics: list  # TFMA slicing metrics of the evaluated model: [(slice key, {output: {sub key: metrics}})]
    plots: list  # TFMA plots of the evaluated model, same shape
    baseline_metrics: dict | None  # the baseline's outputs on the eval slices (StudyEvaluator), or None without one
    study_metrics: list  # TFMA slicing metrics of the study model (StudyEvaluator: rows of slices and studies)
    trainers: dict[str, TrainerRecord]  # by member name
    ingestion: dict  # the ExampleGen's ingestion report
    threshold: float | None
    ood: dict | None  # the evaluated ensemble's description["ood"], or None for a model without the score
    study_plots: list = field(default_factory=list)  # TFMA plots of the study model, as study_metrics
    example_studies: list[ExampleStudy] = field(default_factory=list)  # a few eval studies, slice by slice


@dataclass
class ExampleStudy:
    """One eval study's first series along the slice normal: per slice the study model's refined `any` probability,
    the slice ensemble's and the label; and the study head's `any` probability."""

    refined: np.ndarray
    slice_only: np.ndarray
    label: np.ndarray
    study: float

    @property
    def positive(self) -> bool:
        return bool(self.label.any())


def example_studies(examples_uri: str, model_dir: str, per_kind: int = 2) -> list[ExampleStudy]:
    """The first `per_kind` eval studies (in pseudonym order) with a bleed and as many without, scored by the study
    model. Two passes over the split, so that only the chosen studies' slices are held."""
    import tensorflow as tf

    from ich_model.examples import LABEL, STUDY_UID
    from ich_model.serving import PROBABILITIES, SERVING_SIGNATURE
    from ich_model.study_serving import REFINED_PROBABILITIES, SERIES_INDEX, SLICE_ORDER, STUDY_PROBABILITIES

    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))

    def examples():
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            if LABEL in feature:
                yield feature[STUDY_UID].bytes_list.value[0], feature[LABEL].int64_list.value[ANY_INDEX], record

    bleeds: dict[bytes, bool] = {}
    for study, label, _ in examples():
        bleeds[study] = bleeds.get(study, False) or bool(label)
    chosen = {study for kind in (True, False) for study in sorted(s for s, b in bleeds.items() if b == kind)[
        :per_kind]}
    records: dict[bytes, list] = {study: [] for study in sorted(chosen)}  # (record, its `any` label)
    for study, label, record in examples():
        if study in chosen:
            records[study].append((record, label))
    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    found = []
    for study_records in records.values():
        outputs = {name: value.numpy() for name, value in serve(
            examples=tf.stack([record for record, _ in study_records])).items()}
        labels = np.array([label for _, label in study_records])
        first = np.flatnonzero(outputs[SERIES_INDEX] == 0)
        along = first[np.argsort(outputs[SLICE_ORDER][first])]
        found.append(ExampleStudy(outputs[REFINED_PROBABILITIES][along, ANY_INDEX],
                                  outputs[PROBABILITIES][along, ANY_INDEX], labels[along],
                                  float(outputs[STUDY_PROBABILITIES][ANY_INDEX])))
    return sorted(found, key=lambda s: not s.positive)


def collect(pipeline_root: str, pipeline_name: str) -> RunRecord:
    """Read the latest run (the newest Evaluator execution's run) from the pipeline root."""
    import tensorflow_model_analysis as tfma

    store = open_store(metadata_path(pipeline_root))
    summary, result, study_result, run = latest_evaluation(store, pipeline_name)
    run_id = next(c.name for c in store.get_contexts_by_id([run]))
    evaluated = execution_artifacts(store, latest_execution(store, pipeline_name, EVALUATOR, run))[0]["model"][0]
    try:
        ood = read_description(path_utils.serving_model_path(evaluated.uri)).get("ood")
    except DescriptionError:  # exported before models described themselves: no score either
        ood = None
    baseline_metrics = None
    if summary["baseline"]:
        baseline = tfma.load_eval_result(summary["study_evaluation"], model_name=BASELINE)
        baseline_metrics = level_slice(baseline.slicing_metrics, SLICE_LEVEL)
    trainers = {}
    for name in MEMBERS:
        inputs, outputs = execution_artifacts(store, latest_execution(store, pipeline_name, trainer_id(name), run))
        base = inputs.get("base_model", [])
        logs = os.path.join(outputs["model_run"][0].uri, "logs")
        trainers[name] = TrainerRecord(base[0].uri if base else None, scalar_series(os.path.join(logs, "train")),
                                       scalar_series(os.path.join(logs, "validation")))
    examples = output_artifact(store, pipeline_name, EXAMPLE_GEN, "examples", run)
    with open(os.path.join(examples.uri, REPORT_FILE)) as f:
        ingestion = json.load(f)
    study_inputs = execution_artifacts(store, latest_execution(store, pipeline_name, STUDY_EVALUATOR, run))[0]
    studies = example_studies(study_inputs["examples"][0].uri,
                              path_utils.serving_model_path(study_inputs["model"][0].uri))
    return RunRecord(pipeline_name, run_id, summary, result.slicing_metrics, result.plots, baseline_metrics,
                     study_result.slicing_metrics, trainers, ingestion, _operating_threshold(result.config), ood,
                     study_result.plots, studies)


def flagged_shares(slicing_metrics: list) -> list[tuple[tuple, float | None]]:
    """[(slice key, FLAGGED_SHARE of the OUT_OF_DISTRIBUTION output)] for the slices of TFMA's loaded metrics that
    hold it, in their order; empty for an evaluation without the metric."""
    return [(key, metric_value(outputs[OUT_OF_DISTRIBUTION].get("", {}), FLAGGED_SHARE))
            for key, outputs in slicing_metrics
            if FLAGGED_SHARE in outputs.get(OUT_OF_DISTRIBUTION, {}).get("", {})]


def _operating_threshold(eval_config) -> float | None:
    """The threshold of the Evaluator's confusion counts, from the EvalConfig stored with the results."""
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name == "TruePositives" and metric.config:
                thresholds = json.loads(metric.config).get("thresholds") or [None]
                return thresholds[0]
    return None


def scalar_series(log_dir: str) -> Series:
    """The scalars of a TensorBoard event folder."""
    import tensorflow as tf

    series: Series = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tf.make_ndarray(value.tensor))
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                series.setdefault(value.tag, []).append((int(event.step), number))
    return {tag: sorted(points) for tag, points in series.items()}


def curve_points(plot: dict) -> dict[str, np.ndarray]:
    """TFMA's ConfusionMatrixPlot -> false-positive rate, recall and precision per threshold."""
    matrices = plot.get("confusionMatrixAtThresholds", {}).get("matrices", [])
    counts = {key: np.array([float(m.get(key, 0.0)) for m in matrices]) for key in (
        "truePositives", "falsePositives", "trueNegatives", "falseNegatives")}
    tp, fp, tn, fn = (counts[k] for k in ("truePositives", "falsePositives", "trueNegatives", "falseNegatives"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"fpr": np.nan_to_num(fp / (fp + tn)), "recall": np.nan_to_num(tp / (tp + fn)),
                "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)}


def calibration_bins(plot: dict, bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TFMA's CalibrationPlot buckets regrouped into `bins` equal-width bins of predicted probability: the mean
    prediction, the observed positive share and the example count per non-empty bin."""
    buckets = plot.get("calibrationHistogramBuckets", {}).get("buckets", [])
    count, label, prediction = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for bucket in buckets:
        n = float(bucket.get("numWeightedExamples", 0.0))
        if not n:
            continue
        lower = float(bucket.get("lowerThresholdInclusive", 0.0))
        index = int(np.clip(np.floor(max(lower, 0.0) * bins), 0, bins - 1))
        count[index] += n
        label[index] += float(bucket.get("totalWeightedLabel", 0.0))
        prediction[index] += float(bucket.get("totalWeightedRefinedPrediction", 0.0))
    kept = count > 0
    return prediction[kept] / count[kept], label[kept] / count[kept], count[kept]

