"""The TFMA configurations: the slice ensemble's report (TFX's Evaluator) and the study model's evaluation and
blessing gates (components/study_evaluator).

`eval_config`: per-subtype metrics for the ensemble and each member on the slices a reviewer reads. The ensemble
SavedModel returns the ensemble's `probabilities` and each member's (`member_a`, ...), so one evaluation scores all
of them on the same Examples. Its `out_of_distribution` flag has no label: its share per slice
(ich_model.metrics.FlaggedShare) is reported, so that a new span from a new scanner shows in the slice of its span.
Nothing here gates: the published model is the study model.

`study_eval_config`: the same metrics for the study model's `refined` output beside the slice ensemble's
`slice_only`, per slice (rows of `level` "slice") and per study (`level` "study", where `refined` is the study
head and `slice_only` the slices' maximum), with the study figures a triage user reads (sensitivity at 90% and 95%
specificity, specificity at 95% sensitivity) and, on `flagged`, the sensitivity, specificity and counts at the
model's own operating points (chosen on the eval split: ich_model/operating_points.py). The gates (floors, a
ceiling and no regression against the last blessed model) are on `refined` at the slice level, and a floor on the
study head's `any` AUC.
"""

from __future__ import annotations

import json

import tensorflow_model_analysis as tfma

from components.study_evaluator.executor import (
    BASELINE_PREFIX,
    CANDIDATE_PREFIX,
    FLAGGED,
    LEVEL,
    REFINED,
    ROW_OUTPUTS,
    SLICE_LEVEL,
    STUDY_LEVEL,
    prediction_key,
)
from components.study_evaluator.executor import OUTPUTS as STUDY_OUTPUTS
from ich_model.constants import ANY, LABELS
from ich_model.examples import IMAGE_SIZE, INTERCEPT_GROUP, LABEL, SPAN
from ich_model.members import MEMBERS
from ich_model.preprocessing import POSITION_BAND
from ich_model.serving import OUT_OF_DISTRIBUTION, PROBABILITIES, member_output
from pipeline.configs import PipelineConfig

EVAL_SPLIT = "eval"
MODEL_OUTPUTS = (PROBABILITIES, *(member_output(name) for name in MEMBERS))
SLICE_FEATURES = (INTERCEPT_GROUP, IMAGE_SIZE, POSITION_BAND, SPAN)
SLICE_ROWS = tfma.SlicingSpec(feature_values={LEVEL: SLICE_LEVEL})
STUDY_ROWS = tfma.SlicingSpec(feature_values={LEVEL: STUDY_LEVEL})
SENSITIVITY_AT_SPECIFICITY = "sensitivity_at_{}_specificity"
SPECIFICITY_AT_SENSITIVITY = "specificity_at_{}_sensitivity"


def _class_ids(indices) -> tfma.BinarizationOptions:
    return tfma.BinarizationOptions(class_ids={"values": list(indices)})


def _ranking_metrics() -> list[tfma.MetricConfig]:
    """Per-label figures that also have a macro average over the labels."""
    return [tfma.MetricConfig(class_name=name) for name in ("AUC", "AUCPrecisionRecall", "BinaryCrossEntropy")]


def _operating_point_metrics(threshold: float) -> list[tfma.MetricConfig]:
    """Per-label counts, calibration, the ROC and PR curves (ConfusionMatrixPlot) and the confusion figures at
    the operating threshold (no macro average: plots and counts do not average)."""
    at_threshold = f'{{"thresholds": [{threshold}]}}'
    return [
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="Calibration"),
        tfma.MetricConfig(class_name="CalibrationPlot"),
        tfma.MetricConfig(class_name="ConfusionMatrixPlot"),
        *(tfma.MetricConfig(class_name=name, config=at_threshold) for name in (
            "Precision", "Recall", "Specificity", "TruePositives", "FalsePositives", "TrueNegatives",
            "FalseNegatives")),
    ]


def _gate(threshold: tfma.MetricThreshold) -> tfma.PerSliceMetricThreshold:
    """A gate on the rows of slices (a plain `threshold` would gate every slice, small ones and studies
    included)."""
    return tfma.PerSliceMetricThreshold(slicing_specs=[SLICE_ROWS], threshold=threshold)


def _higher_is_better(floor: float | None, tolerance: float | None) -> tfma.MetricThreshold:
    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}) if floor is not None else None,
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -tolerance})
        if tolerance is not None else None)


def blessing_specs(config: PipelineConfig) -> list[tfma.MetricsSpec]:
    """The gates, on the study model's `refined` output: on the rows of slices, an AUC floor per label (each its
    own binarized spec, since one spec's threshold applies to all of its classes) that must also not fall more
    than the tolerance below the baseline's, and the weighted log loss under its ceiling and not above the
    baseline's beyond its tolerance; on the rows of studies, a floor on the study head's AUC of `any`."""
    specs = [
        tfma.MetricsSpec(
            output_names=[REFINED], binarize=_class_ids([index]),
            metrics=[tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[_gate(_higher_is_better(
                config.auc_floors[name], config.auc_regression_tolerance))])])
        for index, name in enumerate(LABELS)
    ]
    specs.append(tfma.MetricsSpec(
        output_names=[REFINED],
        metrics=[tfma.MetricConfig(
            class_name="WeightedLogLoss", module="ich_model.metrics", per_slice_thresholds=[_gate(
                tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(upper_bound={"value": config.max_weighted_log_loss}),
                    change_threshold=tfma.GenericChangeThreshold(
                        direction=tfma.MetricDirection.LOWER_IS_BETTER,
                        absolute={"value": config.log_loss_regression_tolerance})))])]))
    specs.append(tfma.MetricsSpec(
        output_names=[REFINED], binarize=_class_ids([LABELS.index(ANY)]),
        metrics=[tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[tfma.PerSliceMetricThreshold(
            slicing_specs=[STUDY_ROWS], threshold=_higher_is_better(config.study_auc_floor, None))])]))
    return specs


def _report_specs(outputs: list[str], threshold: float) -> list[tfma.MetricsSpec]:
    """Every label of every output, on every slice: ranking figures with their macro average over the six labels,
    the operating point figures, the weighted log loss and the multi-label confusion matrix."""
    every_label = _class_ids(range(len(LABELS)))
    return [
        tfma.MetricsSpec(output_names=outputs, binarize=every_label,
                         aggregate=tfma.AggregationOptions(
                             macro_average=True, class_weights={i: 1.0 for i in range(len(LABELS))}),
                         metrics=_ranking_metrics()),
        tfma.MetricsSpec(output_names=outputs, binarize=every_label, metrics=_operating_point_metrics(threshold)),
        tfma.MetricsSpec(output_names=outputs, metrics=[
            tfma.MetricConfig(class_name="WeightedLogLoss", module="ich_model.metrics"),
            tfma.MetricConfig(class_name="MultiLabelConfusionMatrixPlot", config=f'{{"thresholds": [{threshold}]}}'),
        ]),
    ]


def _triage_metrics() -> list[tfma.MetricConfig]:
    """Sensitivity at 90% and 95% specificity, specificity at 95% sensitivity (named apart, since TFMA names
    every instance of one class alike)."""
    def named(class_name: str, target_name: str, target: float, name: str) -> tfma.MetricConfig:
        return tfma.MetricConfig(class_name=class_name, config=json.dumps({target_name: target, "name": name}))

    return [
        *(named("SensitivityAtSpecificity", "specificity", target,
                SENSITIVITY_AT_SPECIFICITY.format(round(target * 100))) for target in (0.90, 0.95)),
        named("SpecificityAtSensitivity", "sensitivity", 0.95, SPECIFICITY_AT_SENSITIVITY.format(95)),
    ]


def _flagged_metrics() -> list[tfma.MetricConfig]:
    """What the model's own operating points give: its flags (0 or 1) counted against the labels."""
    flagged = '{"thresholds": [0.5]}'  # a flag is 1.0 or 0.0
    return [tfma.MetricConfig(class_name=name, config=flagged) for name in (
        "Recall", "Specificity", "TruePositives", "FalsePositives", "TrueNegatives", "FalseNegatives")]


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    # Only the scored outputs have a label; FlaggedShare reads no label, so OUT_OF_DISTRIBUTION needs no entry.
    label_keys = {output: LABEL for output in MODEL_OUTPUTS}
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_keys=label_keys,
                                    preprocessing_function_names=["transform_features"])],
        slicing_specs=[tfma.SlicingSpec(), *(tfma.SlicingSpec(feature_keys=[name]) for name in SLICE_FEATURES)],
        metrics_specs=[
            *_report_specs(list(MODEL_OUTPUTS), config.operating_threshold),
            tfma.MetricsSpec(output_names=[OUT_OF_DISTRIBUTION], metrics=[
                tfma.MetricConfig(class_name="FlaggedShare", module="ich_model.metrics")]),
        ],
    )


def study_eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """Model-agnostic: the candidate's outputs and the baseline's are columns of the StudyEvaluator's rows. No
    overall slice, which would mix slices with studies."""
    def spec(name: str, prefix: str, is_baseline: bool = False) -> tfma.ModelSpec:
        return tfma.ModelSpec(name=name, is_baseline=is_baseline,
                              prediction_keys={output: prediction_key(prefix, output) for output in ROW_OUTPUTS},
                              label_keys={output: LABEL for output in ROW_OUTPUTS})

    every_label = _class_ids(range(len(LABELS)))
    return tfma.EvalConfig(
        model_specs=[spec(tfma.CANDIDATE_KEY, CANDIDATE_PREFIX), spec(tfma.BASELINE_KEY, BASELINE_PREFIX, True)],
        slicing_specs=[tfma.SlicingSpec(feature_keys=[LEVEL]),
                       *(tfma.SlicingSpec(feature_keys=[LEVEL, name]) for name in SLICE_FEATURES)],
        metrics_specs=[
            *_report_specs(list(STUDY_OUTPUTS), config.operating_threshold),
            tfma.MetricsSpec(output_names=list(STUDY_OUTPUTS), binarize=every_label, metrics=_triage_metrics()),
            tfma.MetricsSpec(output_names=[FLAGGED], binarize=every_label, metrics=_flagged_metrics()),
            *blessing_specs(config),
        ],
    )
